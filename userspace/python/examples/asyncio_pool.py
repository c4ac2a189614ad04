#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""An asyncio front end over a shared-memory pool, the way an async web
service feeds a model: many coroutines per process, each awaiting a free
pool block, filling it, awaiting its inference, giving the block back.
An attached service (a process the broker did not fork, as a web server
would be) does the same next to the forked clients.

    PYTHONPATH=build/python python3 userspace/python/examples/asyncio_pool.py [--cpu]
"""
import argparse
import asyncio
import os
import subprocess
import sys
import tempfile

import numpy as np

import ferry

OP_FILL, OP_SCORE = 1, 2
N = 64 * 1024	# floats per block: 256 KiB


def handler(req):
    """OP_FILL: block = the request's values; OP_SCORE: out = block.sum()."""
    if req.op == OP_FILL:
        src, blk = req.tensors()
        _write(req.helper, blk, src)
        return 0
    if req.op == OP_SCORE:
        blk, out = req.tensors()
        out[0] = _sum(req.helper, blk)
        return 0
    return -22


def _write(h, blk, src):
    if isinstance(blk, ferry.DeviceTensor):	# a GPU pool: the block is device memory
        import torch
        blk.torch().copy_(torch.from_numpy(src))
    else:
        blk[...] = src


def _sum(h, blk):
    if isinstance(blk, ferry.DeviceTensor):
        return float(blk.torch().double().sum())
    return float(blk.sum(dtype=np.float64))


async def one(c, k):
    block = await c.apool_alloc(N * 4, timeout=60)	# waits while the pool is full
    try:
        vals = c.empty(N, np.float32)
        vals[...] = k
        await c.acall(OP_FILL, tensors=[vals, block.tensor((N,), np.float32)])
        out = c.empty(1, np.float64)
        await c.acall(OP_SCORE, tensors=[block.tensor((N,), np.float32), out])
        return out[0] == k * N
    finally:
        await block.afree()


async def serve_many(c, n):
    ok = await asyncio.gather(*(one(c, k) for k in range(n)))
    return all(ok)


def client(c):
    return 0 if asyncio.run(serve_many(c, 32)) else 1


SERVICE = """
import asyncio, sys
sys.path[:0] = [sys.argv[2]]
import ferry, asyncio_pool
with ferry.attach(sys.argv[1]) as c:
    sys.exit(0 if asyncio.run(asyncio_pool.serve_many(c, 16)) else 1)
"""


def main(args):
    with tempfile.TemporaryDirectory() as d:
        sock = os.path.join(d, "ferry.sock")
        # 16 blocks for 4 clients x 32 coroutines and a service: most wait for one
        with ferry.Broker(children=4, helpers=2, child=client, handler=handler,
                          pool_size=16 * N * 4 + (1 << 20), window=16, attach_path=sock,
                          gpu=None if args.cpu else "auto") as b:
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(
                [os.path.dirname(os.path.dirname(ferry.__file__)),
                 os.environ.get("PYTHONPATH", "")]))
            svc = subprocess.run([sys.executable, "-c", SERVICE, sock,
                                  os.path.dirname(os.path.abspath(__file__))], env=env)
            failed = b.wait() + (svc.returncode != 0)
            st = b.stats()
    print(f"{st['replies']} replies, {st['pool_allocs']} pool blocks ({st['pool_waits']} "
          f"waited for room), {failed} clients failed")
    return 1 if failed else 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", action="store_true", help="CPU helpers and a CPU pool")
    sys.exit(main(ap.parse_args()))
