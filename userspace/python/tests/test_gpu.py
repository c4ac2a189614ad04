# SPDX-License-Identifier: GPL-2.0
"""torch on GPU helpers: pool blocks as DLPack tensors (round trips checked
element by element, zero-copy), pinned region views whose
.cuda(non_blocking=True) copies at pinned speed, the helper's stream as a
torch.cuda.ExternalStream and a deferred reply.  Skips without torch or a
GPU.  This process never initialises CUDA (its forks could not use it):
GPUs are counted the way the broker's helpers will see them."""
import errno
import os
import traceback

import sys

import numpy as np

import ferry

try:
    import pytest
except ImportError:	# run as a script on a host without pytest: see the end
    pytest = None

if pytest is not None:
    torch = pytest.importorskip("torch")
    if ferry.gpu_count() == 0:
        pytest.skip("no GPU for the broker's helpers", allow_module_level=True)
else:
    import torch

OP_DLPACK, OP_INPLACE, OP_BW, OP_STREAM = 1, 2, 3, 4


def init(h):
    torch.cuda.set_device(h.gpu)
    return {}


def serve(req):
    h = req.helper
    if req.op == OP_DLPACK:	# pool block (GPU) -> x * 2 + 1 -> region array
        blk, out = req.tensors()
        assert isinstance(blk, ferry.DeviceTensor)
        t = blk.torch()
        assert t.is_cuda and t.data_ptr() == blk.ptr	# no copy
        o = torch.from_numpy(out)
        o.copy_(t * 2 + 1)
        req.reply.arg[0] = int(req.pinned)
        return 0
    if req.op == OP_INPLACE:	# the block, times 3, in place
        (blk,) = req.tensors()
        blk.torch().mul_(3)
        torch.cuda.synchronize()
        return 0
    if req.op == OP_BW:	# MB/s of region.cuda(non_blocking) and of pinned torch memory
        (x,) = req.tensors()
        src = torch.from_numpy(x)
        ref = torch.empty_like(src).pin_memory()
        rates = []
        for host in (src, ref):
            host.cuda(non_blocking=True)
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(10):
                host.cuda(non_blocking=True)
            end.record()
            end.synchronize()
            rates.append(int(10 * host.numel() * 4 / (start.elapsed_time(end) / 1e3) / 1e6))
        req.reply.arg[0], req.reply.arg[1] = rates
        req.reply.arg[2] = int(src.is_pinned())
        return 0
    if req.op == OP_STREAM:	# on the helper's stream, replied when it is done
        x, out = req.tensors()
        s = h.torch_stream()
        with torch.cuda.stream(s):
            g = torch.from_numpy(x).cuda(non_blocking=True)
            torch.from_numpy(out).copy_(g.square(), non_blocking=True)
        return req.defer(s)
    return -errno.EOPNOTSUPP


def loud(fn):
    def wrapped(c):
        try:
            return fn(c)
        except BaseException:
            os.write(2, traceback.format_exc().encode())
            raise
    return wrapped


def run(child, **kw):
    with ferry.Broker(children=kw.pop("children", 2), helpers=kw.pop("helpers", 2),
                      child=loud(child), handler=serve, helper_init=init, gpu="auto",
                      **kw) as b:
        failed = b.wait(300)
    assert failed == 0, "a child failed (its traceback is above)"


def test_dlpack_round_trips_through_pool_blocks():
    def child(c):
        rng = np.random.default_rng(c.index)
        for n in (1, 1000, 1 << 20):
            x = rng.standard_normal(n).astype(np.float32)
            blk = c.pool_put(x)
            out = c.empty(n, np.float32)
            rep = c.call(OP_DLPACK, tensors=[blk.tensor(), out])
            assert rep.arg[0] == 1, "the child's region is pinned at its helper"
            want = x * 2 + 1
            for i in range(0, n, max(1, n // 4096)):
                assert out[i] == want[i], i
            assert np.array_equal(out, want)
            c.call(OP_INPLACE, tensors=[blk.tensor()])
            assert np.array_equal(c.pool_get(blk), x * 3)
            blk.free()
    run(child, pool_size=64 << 20, region_size=32 << 20)


def test_pinned_region_cuda_copies_at_pinned_speed():
    def child(c):
        x = c.empty(64 << 20 >> 2, np.float32)	# 64 MiB
        x[...] = 1
        rep = c.call(OP_BW, tensors=[x])
        region, pinned = rep.arg[0], rep.arg[1]
        # fd 2 itself: pytest's capture files are not open in a forked child
        os.write(2, f"# region .cuda(non_blocking): {region} MB/s, "
                 f"pinned torch memory: {pinned} MB/s\n".encode())
        assert rep.arg[2] == 1, "torch sees the region as pinned"
        assert region >= 0.9 * pinned, (region, pinned)
    run(child, children=1, helpers=1, region_size=96 << 20)


def test_external_stream_and_deferred_reply():
    def child(c):
        for k in range(50):
            x = c.empty(4096, np.float32)
            out = c.empty(4096, np.float32)
            x[...] = np.arange(4096) + k
            c.call(OP_STREAM, tensors=[x, out])
            assert np.array_equal(out, (np.arange(4096, dtype=np.float32) + k) ** 2)
    run(child)


def execute(reqs):
    """A batch handler with torch: the batch's inputs gathered to the GPU in
    one call, squared at once on the helper's stream, scattered back."""
    h = reqs[0].helper
    s = h.torch_stream()
    buf = h.state.get("buf")
    if buf is None:
        buf = h.state["buf"] = torch.empty(1 << 20, dtype=torch.float32, device="cuda")
    got = h.gather(reqs, 0, buf) // 4
    with torch.cuda.stream(s):
        v = buf[:got]
        v.mul_(v)
    h.scatter(reqs, 1, v)
    return h.defer_all(reqs, s)


def test_batch_gathered_to_the_gpu_and_scattered_back():
    def child(c):
        xs = [c.empty(n, np.float32) for n in (1, 1000, 4096, 65536)]
        ys = [c.empty(n, np.float32) for n in (1, 1000, 4096, 65536)]
        for r in range(30):
            for k in range(4):
                xs[k][...] = np.arange(xs[k].size) % 100 + r
                ys[k][...] = -1
                c.submit(1, tensors=[xs[k], ys[k]], tag=k)
            for _ in range(4):
                k = c.complete().tag
                assert np.array_equal(ys[k], xs[k] * xs[k]), k
    with ferry.Broker(children=4, helpers=1, child=loud(child), batch_handler=execute,
                      helper_init=init, helper_depth=16, gpu="auto") as b:
        assert b.wait(300) == 0


if __name__ == "__main__":
    # python3 test_gpu.py: the same cases without pytest
    if ferry.gpu_count() == 0:
        print("SKIP: no GPU for the broker's helpers")
        sys.exit(0)
    bad = 0
    for name, fn in list(globals().items()):
        if name.startswith("test_") and callable(fn):
            try:
                fn()
                print(f"ok {name}", flush=True)
            except BaseException:
                traceback.print_exc()
                print(f"not ok {name}", flush=True)
                bad += 1
    sys.exit(1 if bad else 0)
