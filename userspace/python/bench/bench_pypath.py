#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""What ferry's Python layer costs per request, on the CPU (no GPU needed).

One child, one helper.  Round trips (p50 of the best round and the
median round), the child's CPU per call and the helper's CPU per request for:
  c_nop    ferry_call_timeout through ctypes, no ferry Python layer
  c_table  the same with a 2-tensor table (built once), handler returns 0
  nop      c.call(op)                          handler returns 0
  tensors  c.call(op, tensors=[x, y])          handler: req.tensors(), returns 0
  job      c.call(op, tensors=[x, y])          handler: x, y = req.tensors(); np.add(x, 1, out=y)
and, timed in loops inside one process (no transport):
  child    c._build() + c._release() of a 2-tensor table (what c.call adds to
           ferry_call_timeout on the child's side)
  helper   Request(h, req, rep); req.op; req.tensors() of 2 tensors; a
           2-tensor request's whole Python handler path (the callback's body)

    PYTHONPATH=build/python python3 userspace/python/bench/bench_pypath.py \\
        [-n 20000] [--elems 1024] [--spin-ns NS] [--pin] [--json out.json]

The C transport alone is `build/ferry-bench msg` (its "ferry_call via the
broker" line); what the Python rows add to it is the Python layer.
"""
import argparse
import ctypes
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..",
                                "build", "python"))
from ferry import _lib  # noqa: E402

OP_NOP, OP_TENSORS, OP_JOB, OP_MICRO, OP_CPU = 1, 2, 3, 4, 5
ARGS = None


def handler(req):
    op = req.op
    if op == OP_NOP:
        return 0
    if op == OP_TENSORS:
        req.tensors()
        return 0
    if op == OP_JOB:
        x, y = req.tensors()
        np.add(x, 1, out=y)
        return 0
    if op == OP_CPU:
        req.reply.arg[0] = time.process_time_ns()
        return 0
    if op == OP_MICRO:
        return micro_helper(req)
    return -22


def _loop(fn, n):
    best = None
    for _ in range(5):
        t = time.perf_counter_ns()
        for _ in range(n):
            fn()
        d = (time.perf_counter_ns() - t) / n
        best = d if best is None or d < best else best
    return best


def micro_helper(req):
    """The helper's Python path, timed in loops on this request (which names
    two tensors x, y and a third, r: int64 results)."""
    import ferry._broker as br
    from ferry._helper import Request
    h = req.helper
    rq, rp = req._req, req._rep
    n = ARGS.micro
    ts = req.tensors()
    res = ts[2]
    conf = br._conf
    key = next(iter(conf))
    # the request with its first two tensors only (the table is the first
    # entries: a descriptor of len 2 * 128 is the same table cut short)
    res[0] = _loop(lambda: Request(h, rq, rp), n)
    res[1] = _loop(lambda: req.op, n)
    res[2] = _loop(req.tensors, n)
    def path():
        r = Request(h, rq, rp)
        if r.op == OP_NOP:
            return 0
        a, b, c = r.tensors()
        return 0
    res[3] = _loop(path, n)
    # the callback entry itself, called as C calls it (a ctypes call in,
    # a ctypes callback out: counts the call-out too)
    ent = ctypes.cast(br._handler_entry, ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p,
                      ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p))
    saved = conf[key]["handler"]
    try:
        conf[key]["handler"] = lambda r: 0
        res[4] = _loop(lambda: ent(h._h, rq, rp, key), n)
        conf[key]["handler"] = lambda r: r.tensors() and 0
        res[5] = _loop(lambda: ent(h._h, rq, rp, key), n)
    finally:
        conf[key]["handler"] = saved
    # a bare ctypes call-out of the same signature (to subtract)
    nop = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                           ctypes.c_void_p)(lambda a, b, c, d: 0)
    res[6] = _loop(lambda: nop(h._h, rq, rp, key), n)
    return 0


def pct(lat, q):
    return float(np.percentile(lat, q)) / 1000


def helper_init(h):
    if ARGS.pin:
        os.sched_setaffinity(0, {1})


def child(c):
    if ARGS.pin:
        os.sched_setaffinity(0, {0})
    n = ARGS.n
    out = {}
    x = c.empty(ARGS.elems, np.float32)
    y = c.empty(ARGS.elems, np.float32)
    r = c.empty(8, np.int64)
    x[...] = np.arange(ARGS.elems, dtype=np.float32)
    for _ in range(200):
        c.call(OP_NOP)
        c.call(OP_JOB, tensors=[x, y])
    assert np.array_equal(y, x + 1)
    y[...] = 0
    # Rounds of each kind in turn: on a small machine the transport
    # switches between spinning and sleeping, and a round trip is 6 or 35
    # us for that alone; the best round is the one the Python layer decides.
    L, D, br = _lib.lib.ferry_call_timeout, _lib.Desc, ctypes.byref
    # a 2-tensor table built once, sent as it is (the handler ignores it)
    dt, _keep = c._build(OP_NOP, [x, y], None, 0, 0, (), 0)
    kinds = (("c_nop", lambda: L(c._c, br(D(op=OP_NOP)), br(D()), -1)),
             ("c_table", lambda: L(c._c, br(dt), br(D()), -1)),
             ("nop", lambda: c.call(OP_NOP)),
             ("tensors", lambda: c.call(OP_TENSORS, tensors=[x, y])),
             ("job", lambda: c.call(OP_JOB, tensors=[x, y])))
    per = max(n // ARGS.rounds, 100)
    lat = {k: [] for k, _ in kinds}
    cpu = {k: [0, 0] for k, _ in kinds}
    buf = np.empty(per, np.int64)
    for _ in range(ARGS.rounds):
        for name, fn in kinds:
            h0 = c.call(OP_CPU).arg[0]
            c0 = time.thread_time_ns()
            for i in range(per):
                t = time.perf_counter_ns()
                fn()
                buf[i] = time.perf_counter_ns() - t
            c1 = time.thread_time_ns()
            h1 = c.call(OP_CPU).arg[0]
            lat[name].append(pct(buf, 50))
            cpu[name][0] += c1 - c0
            cpu[name][1] += h1 - h0
    for name, _ in kinds:
        rr = lat[name]
        out[name] = {"p50_us_best": min(rr), "p50_us_median": float(np.median(rr)),
                     "child_cpu_us": cpu[name][0] / (per * ARGS.rounds) / 1000,
                     "helper_cpu_us": cpu[name][1] / (per * ARGS.rounds) / 1000}
    assert np.array_equal(y, x + 1)
    # the child's Python side of a 2-tensor call, without the transport
    m = ARGS.micro

    def build():
        d, keep = c._build(OP_JOB, [x, y], None, 0, 0, (), 0)
        c._release(keep)
    out["child_build_release_2t_ns"] = _loop(build, m)
    t = [x, y]
    out["child_call_2t_minus_transport_note"] = "see ferry-bench msg for the C round trip"
    r[...] = 0
    c.call(OP_MICRO, tensors=[x, y, r])
    names = ["Request()", "req.op", "req.tensors() (3 tensors)",
             "Request()+op+tensors() (3)", "callback entry, handler returns 0 (incl. call-out)",
             "callback entry, handler r.tensors() (3) (incl. call-out)",
             "bare ctypes call-out+callback (to subtract)"]
    out["helper_ns"] = {k: int(v) for k, v in zip(names, r[:7])}
    del t
    with open(os.path.join(ARGS.tmp, "out.json"), "w") as f:
        json.dump(out, f)
    return 0


def main():
    global ARGS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=10, help="rounds the round trips are cut in")
    ap.add_argument("--micro", type=int, default=20000, help="iterations of the timed loops")
    ap.add_argument("--elems", type=int, default=1024, help="float32 elements per tensor")
    ap.add_argument("--spin-ns", type=int, default=None)
    ap.add_argument("--pin", action="store_true",
                    help="child on CPU 0, helper on CPU 1 (the broker's dispatch where it is)")
    ap.add_argument("--json")
    ARGS = ap.parse_args()
    import ferry
    with tempfile.TemporaryDirectory() as tmp:
        ARGS.tmp = tmp
        with ferry.Broker(children=1, helpers=1, child=child, handler=handler, gpu=None,
                          helper_init=helper_init,
                          spin_ns=ARGS.spin_ns) as b:
            failed = b.wait()
        if failed:
            raise SystemExit("the child failed")
        out = json.load(open(os.path.join(tmp, "out.json")))
    for k in ("c_nop", "c_table", "nop", "tensors", "job"):
        v = out[k]
        print(f"{k:8s} round trip p50 best round {v['p50_us_best']:7.1f} us  median round "
              f"{v['p50_us_median']:7.1f} us  child CPU {v['child_cpu_us']:6.2f} us  "
              f"helper CPU {v['helper_cpu_us']:6.2f} us")
    print(f"child  c._build()+c._release(), 2 tensors: {out['child_build_release_2t_ns'] / 1000:6.2f} us")
    for k, v in out["helper_ns"].items():
        print(f"helper {k}: {v / 1000:6.2f} us")
    if ARGS.json:
        with open(ARGS.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
