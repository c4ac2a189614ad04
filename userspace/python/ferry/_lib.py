# SPDX-License-Identifier: LGPL-2.1-or-later
"""libferry through ctypes: where the library is, its structs, its prototypes.

ctypes and not a CPython extension: an extension is built for one
interpreter's ABI (3.11 on CI, 3.12 on the GPU machine) and needs that
Python's headers, which the GPU machine does not have.  ctypes reaches the
same C functions from any Python 3, and every ctypes call lets the GIL go,
so a thread that waits in libferry never stops the others.
"""
import ctypes
import errno as _errno
import os

__all__ = ["lib", "q", "FerryError", "check", "Desc", "Tensor", "BrokerOpts", "BrokerStats"]


class FerryError(OSError):
    """A libferry call, or a reply, that failed: .errno is the error (EPIPE...)."""

    def __init__(self, err, what=None):
        err = abs(int(err))
        msg = os.strerror(err)
        if what:
            msg = f"{what}: {msg}"
        super().__init__(err, msg)


def check(r, what=None):
    """r if it is >= 0, else FerryError(-r)."""
    if r < 0:
        raise FerryError(-r, what)
    return r


_here = os.path.dirname(os.path.abspath(__file__))


def _load():
    tried = []
    env = os.environ.get("FERRY_LIB")
    cands = [env] if env else []
    # build/python/ferry/ carries its own copy; installed, the system's.
    cands += [os.path.join(_here, "libferry.so.0"), "libferry.so.0"]
    for c in cands:
        try:
            return ctypes.CDLL(c)
        except OSError as e:
            tried.append(f"{c}: {e}")
            # A host without libnuma (the build's copy rides along).
            numa = os.path.join(_here, "_vendor", "libnuma.so.1")
            if "libnuma" in str(e) and os.path.exists(numa):
                ctypes.CDLL(numa, mode=ctypes.RTLD_GLOBAL)
                try:
                    return ctypes.CDLL(c)
                except OSError as e2:
                    tried.append(f"{c} (with {numa}): {e2}")
    raise ImportError("ferry: cannot load libferry.so.0 (make lib, or set FERRY_LIB):\n  " +
                      "\n  ".join(tried))


lib = _load()

u8, u16, u32, u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64
i32, i64 = ctypes.c_int32, ctypes.c_int64
vp, sz = ctypes.c_void_p, ctypes.c_size_t

DESC_POOL = 1
DESC_TENSORS = 2
TENSORS_MAX = 16
TENSOR_NDIM = 6
DEFERRED = 1


class Desc(ctypes.Structure):
    """struct ferry_desc: 64 bytes; a request, or its reply."""
    _fields_ = [("op", u32), ("flags", u32), ("tag", u64), ("region", u32),
                ("status", i32), ("offset", u64), ("len", u64), ("arg", u64 * 3)]

    def __repr__(self):
        return (f"Desc(op={self.op}, flags={self.flags}, tag={self.tag}, region={self.region}, "
                f"status={self.status}, offset={self.offset}, len={self.len}, "
                f"arg={list(self.arg)})")


class Tensor(ctypes.Structure):
    """struct ferry_tensor: one entry of a FERRY_DESC_TENSORS table."""
    _fields_ = [("where", u8), ("dtype", u8), ("ndim", u8), ("flags", u8), ("reserved", u32),
                ("offset", u64), ("nbytes", u64), ("shape", i64 * TENSOR_NDIM),
                ("strides", i64 * TENSOR_NDIM), ("reserved2", u64)]


assert ctypes.sizeof(Desc) == 64 and ctypes.sizeof(Tensor) == 128

CHILD_FN = ctypes.CFUNCTYPE(ctypes.c_int, vp, vp)
HANDLER_FN = ctypes.CFUNCTYPE(ctypes.c_int, vp, vp, vp, vp)
INIT_FN = ctypes.CFUNCTYPE(ctypes.c_int, vp, vp)
BATCH_FN = ctypes.CFUNCTYPE(None, vp, vp, vp, ctypes.c_uint, vp)


class BrokerOpts(ctypes.Structure):
    _fields_ = [("children", ctypes.c_uint), ("helpers", ctypes.c_uint), ("region_size", sz),
                ("window", ctypes.c_uint), ("helper_depth", ctypes.c_uint),
                ("backend", ctypes.c_int), ("spin_ns", u64), ("child_fn", vp),
                ("child_arg", vp), ("handler", vp), ("helper_init", vp), ("helper_arg", vp),
                ("attach_path", ctypes.c_char_p), ("stats_path", ctypes.c_char_p),
                ("max_attached", ctypes.c_uint), ("numa_node", ctypes.c_int),
                ("dispatch_cpu", ctypes.c_int), ("gpu", ctypes.c_int),
                ("streams", ctypes.c_uint), ("pool_size", sz), ("helper_timeout_ns", u64),
                ("flags", ctypes.c_uint), ("reserved", ctypes.c_uint),
                ("helper_pool_bytes", u64), ("batch_handler", vp),
                ("helper_batch", ctypes.c_uint), ("reserved2", ctypes.c_uint)]


_STATS = ["requests", "replies", "failed_back", "bad_desc", "bad_reply", "dropped",
          "child_exits", "child_deaths", "helper_deaths", "helper_restarts", "helper_backoffs",
          "helper_timeouts", "attached", "attach_refused", "queued", "in_flight", "wakeups",
          "bells", "pool_allocs", "pool_frees", "pool_oom", "dispatch_cpu_ns", "pool_waits"]


class BrokerStats(ctypes.Structure):
    _fields_ = [(n, u64) for n in _STATS]


HELPERS_EXACT = 1
CHILDREN_MAP_POOL = 2
DISPATCH_POLL = 4
DISPATCH_SLEEP = 8
CPU_AUTO, CPU_NONE = -1, -2
GPU_AUTO, GPU_NONE = -1, -2


def _proto(name, res, *args):
    f = getattr(lib, name)
    f.restype = res
    f.argtypes = list(args)
    return f


P = ctypes.POINTER
_proto("ferry_version", u32)
_proto("ferry_backend_name", ctypes.c_char_p, ctypes.c_int)
_proto("ferry_backend_parse", ctypes.c_int, ctypes.c_char_p)
_proto("ferry_broker_opts_init_sized", ctypes.c_int, P(BrokerOpts), sz)
_proto("ferry_broker_start_sized", ctypes.c_int, P(BrokerOpts), sz, P(vp))
_proto("ferry_broker_backend", ctypes.c_int, vp)
_proto("ferry_broker_wait", ctypes.c_int, vp, i64)
_proto("ferry_broker_stop", None, vp)
_proto("ferry_broker_child_pid", ctypes.c_int, vp, ctypes.c_uint)
_proto("ferry_broker_helper_pid", ctypes.c_int, vp, ctypes.c_uint)
_proto("ferry_broker_helper_served", u64, vp, ctypes.c_uint)
_proto("ferry_broker_dispatch_cpu", ctypes.c_int, vp)
_proto("ferry_broker_stats_sized", ctypes.c_int, vp, P(BrokerStats), sz)
_proto("ferry_gpu_count_forked", ctypes.c_int)
_proto("ferry_dtype_size", sz, ctypes.c_uint)

_proto("ferry_child_index", ctypes.c_uint, vp)
_proto("ferry_malloc_timeout", vp, vp, sz, i64)
_proto("ferry_free", None, vp, vp)
_proto("ferry_offset", u64, vp, vp)
_proto("ferry_ptr", vp, vp, u64)
_proto("ferry_call_timeout", ctypes.c_int, vp, P(Desc), P(Desc), i64)
_proto("ferry_submit", ctypes.c_int, vp, P(Desc))
_proto("ferry_complete", ctypes.c_int, vp, P(Desc), i64)
_proto("ferry_outstanding", ctypes.c_uint, vp)
_proto("ferry_window", ctypes.c_uint, vp)
_proto("ferry_child_fd", ctypes.c_int, vp)
_proto("ferry_child_fd_arm", ctypes.c_int, vp)
_proto("ferry_child_pool_alloc_timeout", ctypes.c_int, vp, sz, i64, P(u64))
_proto("ferry_child_pool_free", ctypes.c_int, vp, u64)
_proto("ferry_child_pool_put", ctypes.c_int, vp, vp, sz, P(u64))
_proto("ferry_child_pool_get", ctypes.c_int, vp, u64, vp, sz)
_proto("ferry_attach_timeout", ctypes.c_int, ctypes.c_char_p, i64, P(vp))
_proto("ferry_detach", None, vp)

_proto("ferry_helper_index", ctypes.c_uint, vp)
_proto("ferry_helper_waiting", ctypes.c_uint, vp)
_proto("ferry_helper_defer_all", ctypes.c_int, vp, vp, ctypes.c_uint, vp)
_proto("ferry_helper_gather", ctypes.c_int64, vp, vp, ctypes.c_uint, ctypes.c_uint, u64, sz, vp)
_proto("ferry_helper_scatter", ctypes.c_int64, vp, vp, ctypes.c_uint, ctypes.c_uint, u64, sz, vp)
_proto("ferry_helper_data", vp, vp, vp, u64, u64)
_proto("ferry_helper_pool_addr", u64, vp, u64, u64)
_proto("ferry_helper_req_pool_addr", u64, vp, vp, u64, u64)
_proto("ferry_helper_tensors", ctypes.c_int, vp, vp, P(vp))
_proto("ferry_helper_tensor_addr", u64, vp, vp, vp)
_proto("ferry_helper_gpu", ctypes.c_int, vp)
_proto("ferry_helper_stream", vp, vp)
_proto("ferry_helper_defer", ctypes.c_int, vp, vp, vp)
_proto("ferry_helper_pinned", ctypes.c_bool, vp, vp)
_proto("ferry_helper_pinned_count", ctypes.c_uint, vp)
_proto("ferry_helper_pool_alloc", ctypes.c_int, vp, vp, sz, vp, P(u64))

# The same functions again through a PyDLL handle, for the quick ones that
# never block: a CDLL call lets the GIL go and takes it back (where another
# Python thread waits for it, the caller then waits up to a switch
# interval); these return at once, so they keep it.  Range checks,
# lookups: q.ferry_helper_tensor_addr(...), with the prototypes above.
q = ctypes.PyDLL(lib._name, handle=lib._handle)
for _n in ("ferry_helper_data", "ferry_helper_pool_addr", "ferry_helper_req_pool_addr", "ferry_helper_tensors",
           "ferry_helper_tensor_addr", "ferry_helper_pinned", "ferry_offset", "ferry_ptr",
           "ferry_dtype_size"):
    _f, _g = getattr(lib, _n), getattr(q, _n)
    _g.restype, _g.argtypes = _f.restype, _f.argtypes
del _n, _f, _g

NO_OFFSET = 2**64 - 1
EAGAIN, ETIMEDOUT, ENOENT = _errno.EAGAIN, _errno.ETIMEDOUT, _errno.ENOENT


def ns(timeout):
    """Seconds (None: forever) as libferry's nanoseconds (< 0: forever)."""
    if timeout is None:
        return -1
    if timeout < 0:
        raise ValueError("timeout must be >= 0 seconds or None")
    return int(timeout * 1e9)


def version():
    v = lib.ferry_version()
    return f"{v >> 16}.{(v >> 8) & 0xff}.{v & 0xff}"
