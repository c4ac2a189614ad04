# SPDX-License-Identifier: LGPL-2.1-or-later
"""The broker from Python: Python callables in the forked children and helpers.

The C library forks (helpers, then children through its spawner, and a
restarted helper later from its dispatch thread); _forksafe.so's hooks
make each of those forks safe for the interpreter, and the callbacks
below run the user's functions in the forked processes.
"""
import atexit
import ctypes
import errno
import itertools
import os
import sys
import threading
import traceback
import weakref

from . import _fork, _lib
from ._child import Child
from ._helper import Helper, Request
from ._lib import BrokerOpts, BrokerStats, Desc, FerryError, check, lib

# Brokers' configurations by the number their C callbacks get as arg: the
# forked processes find theirs in their copy of this table.
_conf = {}
_keys = itertools.count(1)
_helper = None	# this process's Helper, in a helper
_live = weakref.WeakSet()


def _report():
    """The current exception's traceback on stderr, come what may: a
    callback that raises returns garbage to C."""
    try:
        traceback.print_exc()
        sys.stderr.flush()
    except BaseException:
        try:
            os.write(2, traceback.format_exc().encode(errors="replace"))
        except BaseException:
            pass


def _flush():
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except Exception:
            pass


@_lib.CHILD_FN
def _child_entry(cptr, arg):
    conf = _conf[arg]
    c = Child(cptr)
    try:
        r = conf["child"](c)
        code = 0 if r is None else int(r)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        _report()
        code = 1
    finally:
        c._closed()	# libferry unmaps the region next
        _flush()
    return code & 0xff


def _helper_for(hptr):
    global _helper
    if _helper is None or _helper._h != hptr:
        _helper = Helper(hptr)
    return _helper


@_lib.INIT_FN
def _init_entry(hptr, arg):
    h = _helper_for(hptr)
    init = _conf[arg]["helper_init"]
    try:
        if init is not None:
            h.state = init(h)
        return 0
    except FerryError as e:
        return -e.errno
    except BaseException:
        _report()
        return -errno.EIO


@_lib.HANDLER_FN
def _handler_entry(hptr, req, rep, arg):
    h = _helper if _helper is not None and _helper._h == hptr else _helper_for(hptr)
    try:
        st = _conf[arg]["handler"](Request(h, req, rep))
        return 0 if st is None else int(st)
    except FerryError as e:
        return -e.errno
    except BaseException:
        _report()
        return -errno.EIO


@_lib.BATCH_FN
def _batch_entry(hptr, req, rep, n, arg):
    """Every request of the batch as a Request; the handler's list of
    statuses (None: all 0) goes into the replies.  An exception fails the
    whole batch (a FerryError with its errno, anything else -EIO)."""
    try:
        h = _helper if _helper is not None and _helper._h == hptr else _helper_for(hptr)
        reqs = [Request(h, req + 64 * k, rep + 64 * k) for k in range(n)]
        st = _conf[arg]["batch_handler"](reqs)
        if st is None:
            st = (0,) * n
        elif len(st) != n:
            raise ValueError(f"ferry: batch_handler returned {len(st)} statuses for {n} requests")
        for r, v in zip(reqs, st):
            r.reply.status = 0 if v is None else int(v)
        return
    except FerryError as e:
        code = -e.errno
    except BaseException:
        _report()
        code = -errno.EIO
    # Straight into the C replies: the Request objects may be what failed.
    for k in range(n):
        Desc.from_address(rep + 64 * k).status = code


def _enum(v, auto, none, what):
    if v is None or v == "none":
        return none
    if v == "auto":
        return auto
    if isinstance(v, int) and v >= 0:
        return v
    raise ValueError(f"ferry: {what} is 'auto', None or an index >= 0, not {v!r}")


class Broker:
    """A running broker: children=N forked processes that run child(c),
    helpers=M forked processes that run handler(req) for each request.

        with ferry.Broker(children=4, helpers=2, child=work, handler=serve) as b:
            failed = b.wait()

    Options as struct ferry_broker_opts: region_size (bytes of heap per
    child), window (requests in flight per child), helper_depth, backend
    ("auto", "kmod", "memfd"), gpu ("auto", None, or a GPU index), streams,
    pool_size, attach_path (socket for ferry.attach()), max_attached,
    stats_path, helper_timeout (seconds), spin_ns, numa_node, dispatch_cpu
    ("auto", None or a CPU), exact_helpers, children_map_pool,
    helper_pool_bytes (each helper's arena for req.pool_alloc; 0: a quarter
    of the pool shared by the helpers), dispatch_poll (None: poll where the
    dispatch thread has a CPU of its own; True: always; False: never).
    batch_handler=fn(reqs) instead of handler: the requests waiting at a
    helper come in one call (a list of Requests, at most helper_batch, 0:
    helper_depth), as Triton's execute(requests); it returns a list of
    statuses (or None: all 0), each 0, -errno or req.defer(stream).
    helper_init(h) runs once in each (re)started helper; what it returns is
    h.state.  child() returns the child's exit status (None: 0).
    """

    def __init__(self, children=1, helpers=1, child=None, handler=None, helper_init=None, *,
                 batch_handler=None, helper_batch=0,
                 region_size=16 << 20, window=8, helper_depth=8, backend="auto", gpu="auto",
                 streams=4, pool_size=0, attach_path=None, max_attached=4, stats_path=None,
                 helper_timeout=None, spin_ns=None, numa_node=-1, dispatch_cpu="auto",
                 exact_helpers=False, children_map_pool=False, helper_pool_bytes=0,
                 dispatch_poll=None):
        self._b = None
        if (handler is None) == (batch_handler is None) or \
                not callable(handler if batch_handler is None else batch_handler):
            raise TypeError("ferry: Broker needs handler=callable(req) or "
                            "batch_handler=callable(reqs), one of the two")
        if children and (child is None or not callable(child)):
            raise TypeError("ferry: Broker with children needs child=callable(c)")
        if helper_init is not None and not callable(helper_init):
            raise TypeError("ferry: helper_init must be callable(h)")
        _fork.install()
        o = BrokerOpts()
        check(lib.ferry_broker_opts_init_sized(ctypes.byref(o), ctypes.sizeof(o)), "options")
        o.children = children
        o.helpers = helpers
        o.region_size = region_size
        o.window = window
        o.helper_depth = helper_depth
        b = lib.ferry_backend_parse(str(backend).encode())
        o.backend = check(b, f"backend {backend!r}")
        if spin_ns is not None:
            o.spin_ns = spin_ns
        self._key = next(_keys)
        _conf[self._key] = {"child": child, "handler": handler, "helper_init": helper_init,
                            "batch_handler": batch_handler}
        o.child_fn = ctypes.cast(_child_entry, ctypes.c_void_p).value
        o.child_arg = self._key
        if batch_handler is None:
            o.handler = ctypes.cast(_handler_entry, ctypes.c_void_p).value
        else:
            o.batch_handler = ctypes.cast(_batch_entry, ctypes.c_void_p).value
            o.helper_batch = helper_batch
        o.helper_init = ctypes.cast(_init_entry, ctypes.c_void_p).value
        o.helper_arg = self._key
        self._paths = []	# the char* must live as long as the broker
        if attach_path is not None:
            self._paths.append(os.fsencode(attach_path))
            o.attach_path = self._paths[-1]
        o.max_attached = max_attached
        if stats_path is not None:
            self._paths.append(os.fsencode(stats_path))
            o.stats_path = self._paths[-1]
        o.numa_node = numa_node
        o.dispatch_cpu = _enum(dispatch_cpu, _lib.CPU_AUTO, _lib.CPU_NONE, "dispatch_cpu")
        o.gpu = _enum(gpu, _lib.GPU_AUTO, _lib.GPU_NONE, "gpu")
        o.streams = streams
        o.pool_size = pool_size
        if helper_timeout is not None:
            o.helper_timeout_ns = _lib.ns(helper_timeout)
        o.flags = (_lib.HELPERS_EXACT if exact_helpers else 0) | \
            (_lib.CHILDREN_MAP_POOL if children_map_pool else 0)
        if dispatch_poll is not None:
            o.flags |= _lib.DISPATCH_POLL if dispatch_poll else _lib.DISPATCH_SLEEP
        o.helper_pool_bytes = helper_pool_bytes
        self.children = children
        self.helpers = helpers
        p = _lib.vp()
        r = lib.ferry_broker_start_sized(ctypes.byref(o), ctypes.sizeof(o), ctypes.byref(p))
        if r < 0:
            del _conf[self._key]
            raise FerryError(-r, "ferry_broker_start")
        self._b = p.value
        self._lock = threading.Lock()
        _live.add(self)

    @property
    def backend(self):
        return lib.ferry_backend_name(lib.ferry_broker_backend(self._ptr())).decode()

    def _ptr(self):
        if not self._b:
            raise FerryError(errno.EBADF, "the broker is stopped")
        return self._b

    def wait(self, timeout=None):
        """Wait until every forked child has exited (@timeout seconds, None:
        forever); the number that failed.  FerryError(ETIMEDOUT) otherwise."""
        return check(lib.ferry_broker_wait(self._ptr(), _lib.ns(timeout)), "ferry_broker_wait")

    def stats(self):
        """The broker's counters (struct ferry_broker_stats) as a dict."""
        s = BrokerStats()
        check(lib.ferry_broker_stats_sized(self._ptr(), ctypes.byref(s), ctypes.sizeof(s)),
              "ferry_broker_stats")
        return {n: getattr(s, n) for n, _ in BrokerStats._fields_}

    def child_pid(self, i):
        return lib.ferry_broker_child_pid(self._ptr(), i)

    def helper_pid(self, i):
        return lib.ferry_broker_helper_pid(self._ptr(), i)

    def helper_served(self, i):
        return lib.ferry_broker_helper_served(self._ptr(), i)

    @property
    def dispatch_cpu(self):
        c = lib.ferry_broker_dispatch_cpu(self._ptr())
        return None if c < 0 else c

    def stop(self):
        """Kill whatever still runs and free every region (idempotent)."""
        with self._lock:
            b, self._b = self._b, None
        if b:
            lib.ferry_broker_stop(b)
            _conf.pop(self._key, None)
            _live.discard(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def __del__(self):
        if getattr(self, "_b", None):
            self.stop()


def gpu_count():
    """GPUs a broker's helpers will see (without loading CUDA here)."""
    n = lib.ferry_gpu_count_forked()
    return max(n, 0)


@atexit.register
def _stop_all():
    for b in list(_live):
        b.stop()
