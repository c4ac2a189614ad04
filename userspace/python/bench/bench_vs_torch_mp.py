#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""The same job through ferry and through torch.multiprocessing queues.

The job: a client process has a float32 tensor of SIZE bytes in host
memory; a GPU worker process copies it to its GPU, computes x * 2 + 1, and
writes the result into the client's output tensor in host memory; the
client waits for that.  torch.multiprocessing: shared-memory CPU tensors
sent through a request queue to worker processes, an acknowledgement back
through the client's queue (the way PyTorch users do this job today).
ferry: the tensors live in the client's region, a 64-byte descriptor with a
tensor table goes to a helper, the helper's view of the region is pinned
(.cuda(non_blocking=True) at DMA speed) and the reply is deferred to the
helper's CUDA stream.

Measured, each in one run: latency (p50, p99) at every size with one
client; requests/s with --children clients and --helpers workers; and
ferry's Python overhead: a 64-byte round trip with a handler that does
nothing.

    PYTHONPATH=build/python python3 userspace/python/bench/bench_vs_torch_mp.py \\
        [--sizes 4096,1048576] [--children 32] [--helpers 2] [--seconds 3] \\
        [--cpu] [--only ferry|mp] [--batch] [--json results.json]

--batch adds a run of ferry with a batch handler (the Triton way: the
requests waiting at a helper in one call, their inputs gathered into one
buffer by one library call, one x * 2 + 1 over all of them, the outputs
scattered back by another).
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

OP_NOP, OP_JOB = 1, 2
ARGS = None
_gpu = None	# in a ferry helper: its stream, when on a GPU
_gpu_ptr = None	# the same stream as a CUstream
_torch = None	# the torch module, in a GPU helper


# ------------------------------------------------------------------ ferry

def ferry_init(h):
    global _gpu, _gpu_ptr, _torch
    if h.gpu is not None and not ARGS.cpu:
        import torch
        _torch = torch
        torch.cuda.set_device(h.gpu)
        _gpu = h.torch_stream()
        _gpu_ptr = h.stream
        # The handler's work goes to the helper's stream: made current
        # once for this thread (the one every handler runs on), which is
        # what entering torch.cuda.stream(_gpu) in each request did.
        torch.cuda.set_stream(_gpu)
        torch.ones(1, device="cuda").sum().item()	# context and kernels ready
    return None


def ferry_handler(req):
    if req.op == OP_NOP:
        return 0
    x, y = req.tensors()
    if _gpu is None:
        np.multiply(x, 2, out=y)
        y += 1
        return 0
    from_numpy = _torch.from_numpy
    g = from_numpy(x).cuda(non_blocking=True)
    from_numpy(y).copy_(g * 2 + 1, non_blocking=True)
    return req.defer(_gpu_ptr)


_bufs = {}	# in a helper: the batch buffer, by float count


def ferry_batch(reqs):
    """The job as a batch handler (--batch), the way a batched model runs:
    entry 0 of every waiting request gathered into one buffer by one call
    (h.gather: on a GPU, copies from the pinned regions queued on the
    helper's stream), one x * 2 + 1 over all of it, entry 1 of each
    scattered back the same way; every reply deferred on the stream."""
    jobs = [r for r in reqs if r.op == OP_JOB]
    if not jobs:
        return None
    h = jobs[0].helper
    floats = len(jobs) * _plan_size() // 4
    buf = _bufs.get(floats)
    if buf is None:
        buf = _bufs[floats] = np.empty(floats, np.float32) if _gpu is None else \
            _torch.empty(floats, dtype=_torch.float32, device="cuda")
    got = h.gather(jobs, 0, buf) // 4
    v = buf[:got]
    if _gpu is None:
        np.multiply(v, 2, out=v)
        v += 1
    else:
        v.mul_(2).add_(1)
    h.scatter(jobs, 1, v)
    if _gpu is None:
        return None
    if len(jobs) == len(reqs):
        return h.defer_all(jobs, _gpu_ptr)	# one wake-up for the batch
    return [r.defer(_gpu_ptr) if r.op == OP_JOB else 0 for r in reqs]


_plan = None


def _plan_size():
    global _plan
    if _plan is None:
        _plan = json.load(open(os.path.join(ARGS.tmp, "plan.json")))
    return _plan["size"]


def ferry_client(c):
    """Per the plan in the file ARGS names: latencies or a count, to a .npy."""
    plan = json.load(open(os.path.join(ARGS.tmp, "plan.json")))
    size, n, seconds = plan["size"], plan["n"], plan["seconds"]
    if size == 0:
        for _ in range(200):
            c.call(OP_NOP)
        lat = np.empty(n, np.int64)
        for i in range(n):
            t = time.perf_counter_ns()
            c.call(OP_NOP)
            lat[i] = time.perf_counter_ns() - t
        np.save(os.path.join(ARGS.tmp, f"ferry-{c.index}.npy"), lat)
        return 0
    x = c.empty(size // 4, np.float32)
    y = c.empty(size // 4, np.float32)
    x[...] = np.arange(size // 4, dtype=np.float32) % 1000
    for _ in range(20):
        c.call(OP_JOB, tensors=[x, y])
    if not np.array_equal(y, x * 2 + 1):
        print("ferry: wrong result", file=sys.stderr)
        return 1
    if seconds:
        end = time.monotonic() + seconds
        done = 0
        while time.monotonic() < end:
            c.call(OP_JOB, tensors=[x, y])
            done += 1
        np.save(os.path.join(ARGS.tmp, f"ferry-{c.index}.npy"), np.array([done]))
        return 0
    lat = np.empty(n, np.int64)
    for i in range(n):
        t = time.perf_counter_ns()
        c.call(OP_JOB, tensors=[x, y])
        lat[i] = time.perf_counter_ns() - t
    np.save(os.path.join(ARGS.tmp, f"ferry-{c.index}.npy"), lat)
    return 0


def ferry_run(children, helpers, size, n=0, seconds=0, batch=False):
    import ferry
    with open(os.path.join(ARGS.tmp, "plan.json"), "w") as f:
        json.dump({"size": size, "n": n, "seconds": seconds}, f)
    region = max(4 << 20, 2 * size + (2 << 20))
    # Batches: every client's request may wait at its helper at once.
    how = {"batch_handler": ferry_batch,
           "helper_depth": max(8, -(-children // helpers))} if batch else \
        {"handler": ferry_handler}
    with ferry.Broker(children=children, helpers=helpers, child=ferry_client,
                      helper_init=ferry_init, region_size=region,
                      gpu=None if ARGS.cpu else "auto", **how) as b:
        t = time.monotonic()
        failed = b.wait()
        wall = time.monotonic() - t
    if failed:
        raise SystemExit(f"ferry: {failed} clients failed")
    res = [np.load(os.path.join(ARGS.tmp, f"ferry-{i}.npy")) for i in range(children)]
    return res, wall


# ------------------------------------------------------- torch.multiprocessing

def mp_worker(req_q, resp_qs, device):
    import torch
    if device >= 0:
        torch.cuda.set_device(device)
    while True:
        item = req_q.get()
        if item is None:
            return
        cid, seq, x, y = item
        if device >= 0:
            g = x.cuda(non_blocking=True)
            y.copy_(g * 2 + 1)	# to pageable shared memory: synchronous
        else:
            torch.add(x * 2, 1, out=y)
        resp_qs[cid].put(seq)


def mp_client(cid, size, n, seconds, req_q, resp_q, out_q):
    import torch
    x = (torch.arange(size // 4, dtype=torch.float32) % 1000).share_memory_()
    y = torch.empty_like(x).share_memory_()
    for i in range(20):
        req_q.put((cid, i, x, y))
        resp_q.get()
    ok = bool(torch.equal(y, x * 2 + 1))
    if seconds:
        end = time.monotonic() + seconds
        done = 0
        while time.monotonic() < end:
            req_q.put((cid, done, x, y))
            resp_q.get()
            done += 1
        out_q.put((cid, ok, [done]))
        return
    lat = []
    for i in range(n):
        t = time.perf_counter_ns()
        req_q.put((cid, i, x, y))
        resp_q.get()
        lat.append(time.perf_counter_ns() - t)
    out_q.put((cid, ok, lat))


def mp_run(children, helpers, size, n=0, seconds=0):
    import torch.multiprocessing as mp
    ctx = mp.get_context("spawn")	# CUDA in the workers
    req_q = ctx.Queue()
    resp_qs = [ctx.Queue() for _ in range(children)]
    out_q = ctx.Queue()
    gpus = 0 if ARGS.cpu else ARGS.gpus
    workers = [ctx.Process(target=mp_worker, args=(req_q, resp_qs, h % gpus if gpus else -1))
               for h in range(helpers)]
    for w in workers:
        w.start()
    t = time.monotonic()
    clients = [ctx.Process(target=mp_client,
                           args=(i, size, n, seconds, req_q, resp_qs[i], out_q))
               for i in range(children)]
    for p in clients:
        p.start()
    res = [None] * children
    for _ in range(children):
        cid, ok, vals = out_q.get()
        if not ok:
            raise SystemExit("torch.multiprocessing: wrong result")
        res[cid] = np.array(vals, np.int64)
    wall = time.monotonic() - t
    for p in clients:
        p.join()
    for _ in workers:
        req_q.put(None)
    for w in workers:
        w.join()
    return res, wall


# ------------------------------------------------------------------ main

def pct(lat, q):
    return float(np.percentile(lat, q)) / 1000	# µs


def main():
    global ARGS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="4096,1048576")
    ap.add_argument("--children", type=int, default=32)
    ap.add_argument("--helpers", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--requests", type=int, default=0, help="per latency run (default by size)")
    ap.add_argument("--cpu", action="store_true", help="the job on the CPU (no CUDA)")
    ap.add_argument("--only", choices=["ferry", "mp"])
    ap.add_argument("--batch", action="store_true",
                    help="also ferry with a batch handler (one torch call per batch)")
    ap.add_argument("--json", help="write the results here too")
    ARGS = ap.parse_args()
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..",
                                    "build", "python"))
    import ferry
    ARGS.gpus = ferry.gpu_count()
    if not ARGS.cpu and ARGS.gpus == 0:
        print("# no GPU: the job runs on the CPU (--cpu)")
        ARGS.cpu = True
    import importlib.util
    have_torch = importlib.util.find_spec("torch") is not None	# CUDA is the workers
    if not have_torch and not ARGS.cpu:
        raise SystemExit("the GPU job needs torch")
    sides = [s for s in ("ferry", "mp") if ARGS.only in (None, s)]
    if "mp" in sides and not have_torch:
        print("# no torch: torch.multiprocessing not measured")
        sides.remove("mp")
    sizes = [int(s) for s in ARGS.sizes.split(",")]
    out = {"gpus": ARGS.gpus, "cpu": ARGS.cpu, "children": ARGS.children,
           "helpers": ARGS.helpers, "results": []}
    summary = {}
    with tempfile.TemporaryDirectory() as tmp:
        ARGS.tmp = tmp
        if "ferry" in sides:
            res, _ = ferry_run(1, 1, 0, n=20000)
            r = {"side": "ferry", "what": "64 B round trip, empty handler",
                 "p50_us": pct(res[0], 50), "p99_us": pct(res[0], 99)}
            out["results"].append(r)
            print(f"ferry python call, 64 B round trip: p50 {r['p50_us']:.1f} us, "
                  f"p99 {r['p99_us']:.1f} us", flush=True)
        for size in sizes:
            n = ARGS.requests or (5000 if size <= 65536 else 1000)
            row = {}
            for side in sides:
                run = ferry_run if side == "ferry" else mp_run
                lat, _ = run(1, ARGS.helpers, size, n=n)
                cnt, wall = run(ARGS.children, ARGS.helpers, size, seconds=ARGS.seconds)
                rps = sum(int(c[0]) for c in cnt) / ARGS.seconds
                row[side] = {"p50_us": pct(lat[0], 50), "p99_us": pct(lat[0], 99),
                             "req_per_s": rps}
                out["results"].append({"side": side, "size": size, **row[side]})
                print(f"{side:5s} {size:>8d} B: p50 {row[side]['p50_us']:9.1f} us  "
                      f"p99 {row[side]['p99_us']:9.1f} us  {rps:10.0f} req/s "
                      f"({ARGS.children} clients x {ARGS.helpers} workers)", flush=True)
            if ARGS.batch and "ferry" in sides:
                cnt, _ = ferry_run(ARGS.children, ARGS.helpers, size, seconds=ARGS.seconds,
                                   batch=True)
                rps = sum(int(c[0]) for c in cnt) / ARGS.seconds
                row["batch"] = {"req_per_s": rps}
                out["results"].append({"side": "ferry-batch", "size": size, "req_per_s": rps})
                print(f"ferry {size:>8d} B, batch handler: {rps:10.0f} req/s "
                      f"({ARGS.children} clients x {ARGS.helpers} workers)", flush=True)
            if "ferry" in row and "mp" in row:
                r = {"p50_x": row['mp']['p50_us'] / row['ferry']['p50_us'],
                     "rps_x": row['ferry']['req_per_s'] / row['mp']['req_per_s']}
                if "batch" in row:
                    r["batch_rps_x"] = row['batch']['req_per_s'] / row['mp']['req_per_s']
                summary[size] = r
                print(f"      {size:>8d} B: ferry p50 {r['p50_x']:.1f}x lower, "
                      f"{r['rps_x']:.1f}x the req/s" +
                      (f", {r['batch_rps_x']:.1f}x batched" if "batch_rps_x" in r else ""),
                      flush=True)
    if ARGS.json:
        with open(ARGS.json, "w") as f:
            json.dump(out, f, indent=1)
    # The last line: key=value, one group per size measured both ways.
    kv = ["bench=python", f"cpu={int(ARGS.cpu)}", f"children={ARGS.children}",
          f"helpers={ARGS.helpers}"]
    for size, r in summary.items():
        kv += [f"{k}_{size}={v:.2f}" for k, v in r.items()]
    print(" ".join(kv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
