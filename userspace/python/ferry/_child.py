# SPDX-License-Identifier: LGPL-2.1-or-later
"""A child's end (a forked child, or a service from ferry.attach()).

Requests name memory of the child's own region: arrays from c.empty()
(numpy views of its heap), or pool blocks.  c.call() sends one and waits;
c.submit()/c.complete() keep a window of them in flight; await c.acall()
does the same from asyncio, woken by the child's pollable fd
(ferry_child_fd).  A request's tensor table and the arrays it names are
kept alive until its reply has come.
"""
import asyncio
import collections
import concurrent.futures
import ctypes
import errno
import itertools
import math
import threading
import time

import numpy as np

from . import _lib
from ._lib import Desc, FerryError, check, lib, ns, q
from ._tensors import _DT, _ENTRY, _ZEROS, array_strides, ferry_dtype, fill_entry, view

_byref = ctypes.byref
_ndarray = np.ndarray
_addressof = ctypes.addressof
_c_char = ctypes.c_char
_offset = q.ferry_offset
_NO_OFFSET = _lib.NO_OFFSET
_DESC_TENSORS = _lib.DESC_TENSORS
_TENSORS_MAX = _lib.TENSORS_MAX
_NDIM = _lib.TENSOR_NDIM
_pack = _ENTRY.pack
ENTRIES_MAX = 256	# C-order table entries a child remembers
_call_timeout = lib.ferry_call_timeout
_ASYNC_TAG = 1 << 61	# acall()'s tags; submit() takes tags below it


def _array_addr(a):
    """The address of C-contiguous array @a's first byte."""
    try:
        # a c_char over the array's buffer (a third of __array_interface__'s time)
        return _addressof(_c_char.from_buffer(a))
    except (TypeError, ValueError, BufferError):	# read-only
        return a.__array_interface__["data"][0]


class PoolTensor:
    """A tensor inside a pool block, for a request's tensor table."""
    __slots__ = ("block", "offset", "shape", "dtype", "strides")

    def __init__(self, block, shape, dtype, offset=0, strides=None):
        self.block = block
        self.offset = offset
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype) if not (isinstance(dtype, str) and dtype == "bfloat16") \
            else dtype
        self.strides = strides	# bytes, None: C order


class PoolBlock:
    """A block of the broker's pool owned by this child (ferry_child_pool_alloc)."""

    def __init__(self, child, offset, nbytes, shape=None, dtype=None):
        self.child = child
        self.offset = offset
        self.nbytes = nbytes
        self.shape = shape
        self.dtype = dtype
        self.freed = False

    def tensor(self, shape=None, dtype=None, offset=0, strides=None):
        """This block's bytes (from @offset) as a tensor of a table."""
        shape = self.shape if shape is None else shape
        dtype = self.dtype if dtype is None else dtype
        if shape is None or dtype is None:
            raise ValueError("ferry: say the pool tensor's shape and dtype")
        return PoolTensor(self, shape, dtype, self.offset + offset, strides)

    def free(self):
        if self.freed:
            return
        check(lib.ferry_child_pool_free(self.child._c, self.offset), "ferry_child_pool_free")
        self.freed = True

    async def afree(self):
        """free() for asyncio: waits (in a worker thread) for a place in the window."""
        if self.freed:
            return
        c = self.child
        aio = c._aio_for(asyncio.get_running_loop())
        while True:
            r = lib.ferry_child_pool_free(c._c, self.offset)
            if r != -_lib.EAGAIN:
                check(r, "ferry_child_pool_free")
                self.freed = True
                return
            await aio.wait_room()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.free()

    def __repr__(self):
        return f"PoolBlock(offset={self.offset}, nbytes={self.nbytes})"


def _when_room(call, timeout, what):
    """call() again while it says -EAGAIN (the window is full: the loop's
    requests hold it), for up to @timeout seconds (None: forever).  In a
    worker thread, never on the loop's."""
    end = None if timeout is None else time.monotonic() + timeout
    pause = 20e-6
    while True:
        r = call()
        if r != -_lib.EAGAIN or (end is not None and time.monotonic() >= end):
            return check(r, what)
        time.sleep(pause)
        pause = min(pause * 2, 1e-3)


class _Aio:
    """One event loop's side of a child: its futures, woken by the child's fd."""

    def __init__(self, child, loop):
        self.child = child
        self.loop = loop
        self.fd = check(lib.ferry_child_fd(child._c), "ferry_child_fd")
        self.futs = {}
        self.room = collections.deque()	# futures of acall()s waiting for the window
        self.watching = False

    def watch(self):
        if not self.watching:
            self.loop.add_reader(self.fd, self.ready)
            self.watching = True

    def arm(self):
        a = lib.ferry_child_fd_arm(self.child._c)
        if a == 1:
            self.loop.call_soon(self.ready)
        elif a < 0:
            self.fail_all(-a)

    def deliver(self, rep):
        ent = self.futs.pop(rep.tag, None)
        if ent is None:
            # a reply of c.submit(): for c.complete()
            self.child._stash.append(rep)
            return
        fut, keep, chk, op = ent
        self.child._release(keep)
        if not fut.done():
            if chk and rep.status < 0:
                fut.set_exception(FerryError(-rep.status, f"request op {op}"))
            else:
                fut.set_result(rep)
        while self.room:
            w = self.room.popleft()
            if not w.done():
                w.set_result(None)
                break

    async def wait_room(self):
        """Until a place in the window may be free: each reply of ours wakes
        the first waiter; with none of ours out, the places are other
        threads' (or waiting pool allocations'): look again soon."""
        w = self.loop.create_future()
        self.room.append(w)
        if self.futs:
            await w
        else:
            try:
                await asyncio.wait_for(w, 0.001)
            except asyncio.TimeoutError:
                pass

    def ready(self):
        c = self.child._c
        for _ in range(4 * self.child.window + 4):
            rep = Desc()
            r = lib.ferry_complete(c, _byref(rep), 0)
            if r == 0:
                self.deliver(rep)
                continue
            if r != -_lib.ETIMEDOUT and r != -_lib.ENOENT:
                self.fail_all(-r)
                return
            a = lib.ferry_child_fd_arm(c)
            if a == 0:
                return
            if a < 0:
                self.fail_all(-a)
                return
        self.loop.call_soon(self.ready)	# more to take: let others run first

    def fail_all(self, err):
        futs, self.futs = self.futs, {}
        for fut, keep, _, op in futs.values():
            if not fut.done():
                fut.set_exception(FerryError(err, f"request op {op}"))
        # their tables stay: the broker may still hold the requests
        while self.room:
            w = self.room.popleft()
            if not w.done():
                w.set_exception(FerryError(err))
        if self.watching:
            self.loop.remove_reader(self.fd)
            self.watching = False


class Child:
    """A child's (or an attached service's) end of the broker."""

    def __init__(self, ptr, attached=False):
        self._c = ptr
        self._open = True
        self.attached = attached
        self.index = lib.ferry_child_index(ptr)
        self.window = lib.ferry_window(ptr)
        self._seq = itertools.count(1)
        self._aseq = itertools.count(1)
        self._inflight = {}	# tag -> what its request must keep alive
        self._stash = collections.deque()	# submit() replies the loop took
        self._aio = None
        self._pool_threads = None
        self._lock = threading.Lock()
        # The region's offsets: base address, and a span [lo, hi] of
        # offsets libferry's ferry_offset() has said are in the heap (what
        # it says is in is one interval, fixed for the child's life: any
        # offset between two it said are in is in).
        self._base = None
        self._lo, self._hi = 1, 0	# none yet
        # Tensor tables whose requests are done, for the next ones (by
        # entries: a list of (address, offset, buffer, entries)).
        self._tabs = {}
        # The table entry of a C-order array by (address, shape, dtype): a
        # function of those alone (the region does not move), made once
        # the address range was found in the heap.
        self._entries = {}

    # ---------------------------------------------------------- memory

    def empty(self, shape, dtype=np.float32, timeout=0):
        """A numpy array inside this child's region (uninitialised); its bytes
        go back to the heap when the array and every view of it are gone.
        @timeout: seconds to wait for another thread's frees (None: forever)."""
        self._live()
        if isinstance(shape, (int, np.integer)):
            shape = (int(shape),)
        shape = tuple(int(s) for s in shape)
        dt = np.dtype(dtype)
        n = dt.itemsize * math.prod(shape)
        t = ns(timeout)
        ptr = lib.ferry_malloc_timeout(self._c, max(n, 1), 0)
        if not ptr:
            # the tables kept for requests go back first; then wait as asked
            self._drop_tables()
            ptr = lib.ferry_malloc_timeout(self._c, max(n, 1), t)
        if not ptr:
            raise FerryError(errno.ENOMEM, f"ferry_malloc({n})")
        return view(ptr, shape, dt, release=lambda: self._free(ptr))

    def zeros(self, shape, dtype=np.float32, timeout=0):
        a = self.empty(shape, dtype, timeout)
        a[...] = 0
        return a

    def asarray(self, x, dtype=None, timeout=0):
        """@x copied into this child's region (as it is if it is there already)."""
        x = np.asarray(x, dtype=dtype)
        if self.holds(x):
            return x
        a = self.empty(x.shape, x.dtype, timeout)
        a[...] = x
        return a

    def holds(self, a):
        """Whether every byte of array @a lies in this child's heap."""
        try:
            self._span(a)
            return True
        except ValueError:
            return False

    def _span(self, a):
        """(offset, nbytes) of array @a in the region, from its first byte."""
        if not isinstance(a, np.ndarray):
            raise ValueError(f"ferry: {type(a).__name__} is not a numpy array or pool tensor")
        if a.size == 0:
            raise ValueError("ferry: an empty array names no bytes")
        if a.flags.c_contiguous:
            return self._offset_of(_array_addr(a), a.nbytes), a.nbytes
        last = 0
        for n, s in zip(a.shape, a.strides):
            if s < 0:
                raise ValueError("ferry: negative strides")
            last += (n - 1) * s
        nbytes = last + a.itemsize
        return self._offset_of(a.__array_interface__["data"][0], nbytes), nbytes

    def _offset_of(self, addr, nbytes):
        """The region offset of [addr, addr + nbytes), all in the heap (ValueError if not)."""
        b = self._base
        if b is not None:
            o = addr - b
            if self._lo <= o and o + nbytes - 1 <= self._hi:
                return o
        c = self._c
        off = _offset(c, addr)
        end = _offset(c, addr + nbytes - 1)
        if off == _NO_OFFSET or end == _NO_OFFSET:
            raise ValueError("ferry: the array is not in this child's region "
                             "(make it with c.empty(), or copy it with c.asarray())")
        if b is None:
            # the span before the base: a thread that sees the base sees a span
            self._lo, self._hi = off, end
            self._base = addr - off
        else:
            self._lo, self._hi = min(self._lo, off), max(self._hi, end)
        return off

    def _free(self, ptr):
        if self._open:
            lib.ferry_free(self._c, ptr)

    # ---------------------------------------------------------- requests

    def _build(self, op, tensors, data, offset, length, args, flags):
        d = Desc()
        d.op = op
        d.flags = flags
        keep = None
        if tensors is not None:
            if data is not None:
                raise ValueError("ferry: tensors= or data=, not both")
            tensors = list(tensors)
            n = len(tensors)
            if not 1 <= n <= _TENSORS_MAX:
                raise ValueError(f"ferry: 1 to {_TENSORS_MAX} tensors per request, not {n}")
            tab = self._table(n)
            try:
                buf = tab[2]
                at = 0
                ents = self._entries
                for t in tensors:
                    if type(t) is _ndarray and t.flags.c_contiguous:
                        # the common case: a C-order array of the region
                        key = (_array_addr(t), t.shape, t.dtype)
                        e = ents.get(key)
                        if e is None:
                            e = self._c_entry(t, key)
                        if e is None:
                            self._entry(buf, at, t)	# says what is wrong
                        else:
                            buf[at:at + 128] = e
                    else:
                        self._entry(buf, at, t)
                    at += 128
            except BaseException:
                self._untable(tab)
                raise
            d.flags |= _DESC_TENSORS
            d.offset = tab[1]
            d.len = n * 128
            keep = (tab, tensors)
        elif data is not None:
            if isinstance(data, PoolBlock):
                d.flags |= _lib.DESC_POOL
                d.offset, d.len = data.offset, data.nbytes
            elif isinstance(data, PoolTensor):
                d.flags |= _lib.DESC_POOL
                d.offset = data.offset
                d.len = math.prod(data.shape) * lib.ferry_dtype_size(ferry_dtype(data.dtype))
            else:
                if not data.flags.c_contiguous:
                    raise ValueError("ferry: data= takes a contiguous array (tensors= any)")
                d.offset, d.len = self._span(data)
                keep = (None, data)
        else:
            d.offset, d.len = offset, length
        if type(args) is not tuple or args:
            args = tuple(args)
            if len(args) > 3:
                raise ValueError("ferry: at most 3 args")
            a = d.arg
            for k, v in enumerate(args):
                a[k] = v
        return d, keep

    def _c_entry(self, t, key):
        """The table entry of C-order array @t at key[0] (None: not a plain
        one), remembered; ValueError if its bytes are not in the heap."""
        addr, shape, dt = key
        code = _DT.get(dt)
        ndim = len(shape)
        if code is None or ndim > _NDIM or not t.size:
            return None
        nbytes = t.nbytes
        off = self._offset_of(addr, nbytes)
        e = _pack(0, code, ndim, 0, 0, off, nbytes, *shape, *_ZEROS[ndim:], *_ZEROS, 0)
        ents = self._entries
        if len(ents) >= ENTRIES_MAX:
            ents.clear()
        ents[key] = e
        return e

    def _entry(self, buf, at, t):
        """Table entry at byte @at of @buf for tensor @t, any kind."""
        if isinstance(t, PoolTensor):
            code = ferry_dtype(t.dtype)
            size = lib.ferry_dtype_size(code)
            fill_entry(buf, at, 1, t.offset, t.shape, t.strides, size, code)
        else:
            off, _ = self._span(t)
            fill_entry(buf, at, 0, off, t.shape, array_strides(t), t.itemsize,
                       ferry_dtype(t.dtype))

    def _table(self, n):
        """Heap bytes for a table of @n entries: (address, offset, buffer, n)."""
        lst = self._tabs.get(n)
        if lst:
            try:
                return lst.pop()
            except IndexError:	# another thread took the last
                pass
        c = self._c
        p = lib.ferry_malloc_timeout(c, n * 128, 0)
        if not p and self._drop_tables():
            p = lib.ferry_malloc_timeout(c, n * 128, 0)
        if not p:
            raise FerryError(errno.ENOMEM, "ferry_malloc(tensor table)")
        buf = memoryview((_c_char * (n * 128)).from_address(p)).cast("B")
        return (p, lib.ferry_offset(c, p), buf, n)

    def _untable(self, tab):
        """A table whose request is done (or never went): kept for the next
        (a few per size; the others go back to the heap)."""
        if not self._open:
            return
        lst = self._tabs.get(tab[3])
        if lst is None:
            lst = self._tabs.setdefault(tab[3], [])
        if len(lst) < self.window:
            lst.append(tab)
        else:
            lib.ferry_free(self._c, tab[0])

    def _drop_tables(self):
        """Give the kept tables back to the heap; whether there were any."""
        some = False
        for lst in list(self._tabs.values()):
            while lst:
                try:
                    tab = lst.pop()
                except IndexError:
                    break
                if self._open:
                    lib.ferry_free(self._c, tab[0])
                some = True
        return some

    def _release(self, keep):
        if keep is not None and keep[0] is not None:
            self._untable(keep[0])

    def call(self, op=0, *, tensors=None, data=None, offset=0, length=0, args=(), flags=0,
             timeout=None, check=True):
        """Send one request and wait for its reply (a Desc).  tensors=[arrays of
        this region, pool tensors] sends a tensor table; data=array (or a pool
        block) its bytes as (offset, len).  A reply with a negative status
        raises FerryError (check=False: returned as it is)."""
        if not self._open:
            self._live()
        d, keep = self._build(op, tensors, data, offset, length, args, flags)
        rep = Desc()
        r = _call_timeout(self._c, _byref(d), _byref(rep), -1 if timeout is None else ns(timeout))
        if r == -_lib.ETIMEDOUT:
            # still at its helper: its table must outlive it; the heap has it back
            # only when the child goes (the request holds a place in the window)
            raise FerryError(-r, f"request op {op}")
        self._release(keep)
        if r < 0:
            raise FerryError(-r, f"request op {op}")
        if check and rep.status < 0:
            raise FerryError(-rep.status, f"request op {op}")
        return rep

    def submit(self, op=0, *, tensors=None, data=None, offset=0, length=0, args=(), flags=0,
               tag=None):
        """Send a request without waiting; its tag (yours, < 2**61, or one made
        up); c.complete() gives the replies.  FerryError(EAGAIN): window full."""
        self._live()
        if tag is None:
            tag = next(self._seq) % _ASYNC_TAG
        elif not 0 <= tag < _ASYNC_TAG:
            raise ValueError("ferry: tags of submit() are in [0, 2**61)")
        with self._lock:
            if tag in self._inflight:
                raise ValueError(f"ferry: tag {tag} is already in flight")
            d, keep = self._build(op, tensors, data, offset, length, args, flags)
            d.tag = tag
            r = lib.ferry_submit(self._c, _byref(d))
            if r < 0:
                self._release(keep)
                raise FerryError(-r, "ferry_submit")
            self._inflight[tag] = keep
        aio = self._aio
        if aio is not None and aio.watching:
            try:
                aio.loop.call_soon_threadsafe(aio.arm)	# the fd is armed by its loop
            except RuntimeError:
                pass	# that loop is closed
        return tag

    def complete(self, timeout=None, check=True):
        """The next reply of a submit()ted request (a Desc), waiting up to
        @timeout seconds (None: forever): FerryError(ETIMEDOUT) when none came,
        FerryError(ENOENT) when none is outstanding."""
        self._live()
        while True:
            if self._stash:
                rep = self._stash.popleft()
            else:
                rep = Desc()
                check_r = lib.ferry_complete(self._c, _byref(rep), ns(timeout))
                if check_r < 0:
                    raise FerryError(-check_r, "ferry_complete")
                aio = self._aio
                if aio is not None and rep.tag in aio.futs:
                    aio.loop.call_soon_threadsafe(aio.deliver, rep)
                    continue
            break
        self._release(self._inflight.pop(rep.tag, None))
        if check and rep.status < 0:
            raise FerryError(-rep.status, f"request op {rep.op} (tag {rep.tag})")
        return rep

    @property
    def outstanding(self):
        return lib.ferry_outstanding(self._c)

    def fileno(self):
        """The child's pollable fd (ferry_child_fd): readable when a reply waits."""
        return check(lib.ferry_child_fd(self._c), "ferry_child_fd")

    # ---------------------------------------------------------- asyncio

    def _aio_for(self, loop):
        a = self._aio
        if a is None or a.loop is not loop:
            if a is not None and a.futs:
                raise RuntimeError("ferry: acall()s of this child are pending on another loop")
            a = self._aio = _Aio(self, loop)
        a.watch()
        return a

    async def acall(self, op=0, *, tensors=None, data=None, offset=0, length=0, args=(),
                    flags=0, timeout=None, check=True):
        """c.call() for asyncio: the request goes out at once, the coroutine
        waits for its reply without blocking the loop (many may be in flight,
        up to the window; more wait for room)."""
        self._live()
        loop = asyncio.get_running_loop()
        aio = self._aio_for(loop)
        d, keep = self._build(op, tensors, data, offset, length, args, flags)
        d.tag = _ASYNC_TAG | next(self._aseq) % _ASYNC_TAG
        try:
            while True:
                r = lib.ferry_submit(self._c, _byref(d))
                if r != -_lib.EAGAIN:
                    break
                await aio.wait_room()
            if r < 0:
                raise FerryError(-r, "ferry_submit")
        except BaseException:
            self._release(keep)
            raise
        fut = loop.create_future()
        aio.futs[d.tag] = (fut, keep, check, op)
        aio.arm()
        if timeout is None:
            return await fut
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except asyncio.TimeoutError:
            # The request goes on at its helper; its reply, when it comes, is dropped.
            raise FerryError(errno.ETIMEDOUT, f"request op {op}") from None

    # ---------------------------------------------------------- pool

    def pool_alloc(self, nbytes, timeout=0, shape=None, dtype=None):
        """A block of the broker's pool (@timeout seconds to wait for room;
        None: forever).  FerryError(ENOENT): the broker has no pool."""
        self._live()
        off = _lib.u64()
        check(lib.ferry_child_pool_alloc_timeout(self._c, int(nbytes), ns(timeout), _byref(off)),
              "ferry_child_pool_alloc")
        return PoolBlock(self, off.value, int(nbytes), shape, dtype)

    async def apool_alloc(self, nbytes, timeout=None, shape=None, dtype=None):
        """pool_alloc() that can be awaited: waits (in a worker thread, which lets
        the loop run) for a place in the window and until a block fits or
        @timeout passes."""
        self._live()
        loop = asyncio.get_running_loop()
        off = _lib.u64()
        t = ns(timeout)
        if self._pool_threads is None:
            # A waiting allocation holds a place in the window: at most half
            # the window waits, so that the holders of blocks can still send
            # the requests that end in their frees.
            self._pool_threads = concurrent.futures.ThreadPoolExecutor(
                max(1, self.window // 2), thread_name_prefix="ferry-pool")
        await loop.run_in_executor(self._pool_threads, _when_room, lambda: lib.ferry_child_pool_alloc_timeout(
            self._c, int(nbytes), t, _byref(off)), timeout, "ferry_child_pool_alloc")
        return PoolBlock(self, off.value, int(nbytes), shape, dtype)

    def reply_block(self, rep, shape=None, dtype=None):
        """The pool block a reply names (a handler's req.pool_alloc output,
        flags DESC_POOL): this child's now, freed with block.free()."""
        if not rep.flags & _lib.DESC_POOL or rep.status < 0:
            raise ValueError("ferry: this reply names no pool block")
        return PoolBlock(self, rep.offset, rep.len, shape, dtype)

    def pool_put(self, a, timeout=0):
        """A new pool block holding a copy of array @a (copied by a helper)."""
        self._live()
        a = np.ascontiguousarray(a)
        off = _lib.u64()
        check(lib.ferry_child_pool_put(self._c, a.__array_interface__["data"][0], a.nbytes,
                                       _byref(off)), "ferry_child_pool_put")
        return PoolBlock(self, off.value, a.nbytes, a.shape, a.dtype)

    def pool_get(self, block, out=None):
        """The block's bytes copied (by a helper) into @out, or a new array."""
        self._live()
        if out is None:
            if block.shape is None or block.dtype is None:
                out = self.empty((block.nbytes,), np.uint8)
            else:
                out = self.empty(block.shape, block.dtype)
        if not out.flags.c_contiguous or out.nbytes > block.nbytes:
            raise ValueError("ferry: pool_get() needs a contiguous array no larger than the block")
        check(lib.ferry_child_pool_get(self._c, block.offset, out.__array_interface__["data"][0],
                                       out.nbytes), "ferry_child_pool_get")
        return out

    # ---------------------------------------------------------- life

    def _live(self):
        if not self._open:
            raise FerryError(errno.EBADF, "this child handle is closed")

    def _closed(self):
        self._open = False
        self._tabs = {}	# in the region, which goes
        if self._pool_threads is not None:
            self._pool_threads.shutdown(wait=False)
        if self._aio is not None and self._aio.watching:
            try:
                self._aio.loop.remove_reader(self._aio.fd)
            except Exception:
                pass
            self._aio.watching = False


class Service(Child):
    """A process the broker did not fork, attached over the broker's socket."""

    def close(self):
        """Detach: the region goes (arrays from empty() must not be used after)."""
        if self._open:
            self._closed()
            lib.ferry_detach(self._c)

    detach = close

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        if getattr(self, "_open", False):
            self.close()


def attach(path, timeout=30.0):
    """Attach to a running broker's attach socket (Broker(attach_path=...))."""
    from . import _fork
    _fork.install()
    p = _lib.vp()
    check(lib.ferry_attach_timeout(str(path).encode(), ns(timeout), _byref(p)), f"attach {path}")
    return Service(p.value, attached=True)
