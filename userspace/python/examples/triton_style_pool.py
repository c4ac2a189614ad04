#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""A worker pool in the shape of a Triton python backend model.

Each helper process loads a TritonPythonModel once (initialize) and runs
its execute() for every request; the tensors come in place from the
client process's shared region (no pickling, no copy into a queue), and
the outputs are written back in place.  With torch and a GPU the model
runs on the helper's GPU, on the helper's own CUDA stream; with --cpu (or
without them) it runs in numpy, which is how CI runs this file.

    PYTHONPATH=build/python python3 userspace/python/examples/triton_style_pool.py [--cpu]
"""
import argparse
import sys

import numpy as np

import ferry

OP_INFER = 1
IN_FEATURES, OUT_FEATURES = 256, 64


class TritonPythonModel:
    """What a Triton model.py holds: one instance per worker process."""

    def initialize(self, args):
        rng = np.random.default_rng(0)	# every worker loads the same weights
        self.w = rng.standard_normal((IN_FEATURES, OUT_FEATURES)).astype(np.float32) / 16
        self.b = np.linspace(-1, 1, OUT_FEATURES, dtype=np.float32)
        self.device = args["device"]
        if self.device != "cpu":
            import torch
            torch.cuda.set_device(args["gpu"])
            self.torch = torch
            self.tw = torch.from_numpy(self.w).cuda()
            self.tb = torch.from_numpy(self.b).cuda()

    def execute(self, requests):
        """One response per request: OUTPUT0 = relu(INPUT0 @ W + b)."""
        responses = []
        for r in requests:
            x, y = r.inputs["INPUT0"], r.outputs["OUTPUT0"]
            if self.device == "cpu":
                np.maximum(x @ self.w + self.b, 0, out=y)
            else:
                t = self.torch
                with t.cuda.stream(r.helper.torch_stream()):
                    g = t.from_numpy(x).cuda(non_blocking=True)	# pinned: DMA speed
                    out = t.relu(g @ self.tw + self.tb)
                    t.from_numpy(y).copy_(out, non_blocking=True)
                    t.cuda.current_stream().synchronize()
            responses.append(0)
        return responses


class Request:
    """The handler's request as the model wants it: named tensors."""

    def __init__(self, req):
        x, y = req.tensors()	# views of the client's own memory
        self.inputs = {"INPUT0": x}
        self.outputs = {"OUTPUT0": y}
        self.helper = req.helper


def helper_init(h):
    model = TritonPythonModel()
    use_gpu = h.gpu is not None and not ARGS.cpu
    model.initialize({"device": "cuda" if use_gpu else "cpu", "gpu": h.gpu})
    return model


def handler(req):
    if req.op != OP_INFER:
        return -22
    (status,) = req.helper.state.execute([Request(req)])
    return status


def client(c):
    """A client process: batches into its region, one call per batch."""
    rng = np.random.default_rng(100 + c.index)
    ref = TritonPythonModel()
    ref.initialize({"device": "cpu", "gpu": None})
    x = c.empty((ARGS.batch, IN_FEATURES), np.float32)
    y = c.empty((ARGS.batch, OUT_FEATURES), np.float32)
    for _ in range(ARGS.requests):
        x[...] = rng.standard_normal(x.shape)
        c.call(OP_INFER, tensors=[x, y])
        want = np.maximum(x @ ref.w + ref.b, 0)
        if not np.allclose(y, want, rtol=1e-3, atol=1e-3):
            print(f"client {c.index}: wrong output", file=sys.stderr)
            return 1
    return 0


def main():
    with ferry.Broker(children=ARGS.clients, helpers=ARGS.workers, child=client,
                      handler=handler, helper_init=helper_init,
                      gpu=None if ARGS.cpu else "auto") as b:
        failed = b.wait()
        st, backend = b.stats(), b.backend
    print(f"{st['replies']} inferences by {ARGS.workers} workers for {ARGS.clients} clients "
          f"({backend} regions), {failed} clients failed")
    return 1 if failed else 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", action="store_true", help="numpy models, no GPU")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--batch", type=int, default=16)
    ARGS = ap.parse_args()
    sys.exit(main())
