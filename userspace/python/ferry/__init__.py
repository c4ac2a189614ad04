# SPDX-License-Identifier: LGPL-2.1-or-later
"""ferry: zero-copy transport between the processes of one inference host.

    import ferry, numpy as np

    def serve(req):                       # runs in each forked helper
        x, y = req.tensors()              # numpy views of the child's bytes
        y[...] = x * 2
        return 0                          # the reply's status

    def work(c):                          # runs in each forked child
        x = c.empty((1024,), np.float32)  # inside the child's own region
        y = c.empty((1024,), np.float32)
        x[:] = np.arange(1024)
        c.call(1, tensors=[x, y])         # y now holds x * 2

    with ferry.Broker(children=4, helpers=2, child=work, handler=serve) as b:
        assert b.wait() == 0

See README.md ("Python") for asyncio, pools, GPUs and attached services.
"""
from ._lib import DEFERRED, Desc, FerryError, version
from ._tensors import DeviceTensor, dlpack_capsule, ferry_dtype
from ._child import Child, PoolBlock, PoolTensor, Service, attach
from ._helper import Helper, Request
from ._broker import Broker, gpu_count

__all__ = ["Broker", "Child", "Service", "Helper", "Request", "Desc", "PoolBlock",
           "PoolTensor", "DeviceTensor", "FerryError", "DEFERRED", "attach", "gpu_count",
           "version", "ferry_dtype", "dlpack_capsule"]
