# SPDX-License-Identifier: LGPL-2.1-or-later
"""A helper's side: the request a handler gets, and the helper itself.

Every view made here is of memory the request names, checked by libferry
(ferry_helper_data, ferry_helper_tensors, ferry_helper_tensor_addr) and
valid while the handler runs (or, for a deferred reply, until it is sent).
"""
import ctypes

from . import _lib
from ._lib import Desc, FerryError, lib, q
from ._tensors import (DeviceTensor, entry_parse, ferry_dtype, numpy_dtype, plain_view,
                       raw_view, view)

import numpy as np

_byref = ctypes.byref
_U8 = np.dtype(np.uint8)
_vp = ctypes.c_void_p
_string_at = ctypes.string_at
_DESC_TENSORS, _DESC_POOL, _DEFERRED = _lib.DESC_TENSORS, _lib.DESC_POOL, _lib.DEFERRED
_TSIZE = ctypes.sizeof(_lib.Tensor)
_tables = q.ferry_helper_tensors
_tensor_addr = q.ferry_helper_tensor_addr
_helper_data = q.ferry_helper_data
_defer = lib.ferry_helper_defer
_from_address = Desc.from_address
# Views made per table entry, remembered: see Request.tensors().
VIEWS_MAX = 256


def _stream_ptr(s):
    """A CUstream from an int, a torch.cuda.Stream or a CuPy stream."""
    if s is None:
        return None
    if isinstance(s, int):
        return s
    for attr in ("cuda_stream", "ptr"):
        v = getattr(s, attr, None)
        if isinstance(v, int):
            return v
    raise TypeError(f"ferry: not a CUDA stream: {s!r}")


def _buffer(b):
    """(address, bytes) of a torch tensor (contiguous), a numpy array or a
    DeviceTensor."""
    if hasattr(b, "data_ptr"):	# torch
        if not b.is_contiguous():
            raise ValueError("ferry: a batch buffer must be contiguous")
        return b.data_ptr(), b.numel() * b.element_size()
    if isinstance(b, np.ndarray):
        if not b.flags.c_contiguous:
            raise ValueError("ferry: a batch buffer must be contiguous")
        return b.ctypes.data, b.nbytes
    if isinstance(b, DeviceTensor):
        return b.ptr, b.nbytes
    raise TypeError(f"ferry: not a buffer for a batch copy: {type(b).__name__}")


class Helper:
    """The helper process's handle (one per helper process)."""

    def __init__(self, ptr):
        self._h = ptr
        self.index = lib.ferry_helper_index(ptr)
        g = lib.ferry_helper_gpu(ptr)
        self.gpu = g if g >= 0 else None
        # The first of its streams, kept: h.stream is stable, next_stream() rotates.
        s = lib.ferry_helper_stream(ptr)
        self.stream = s if s else None
        self.state = None	# whatever helper_init returned
        self._views = {}	# (entry bytes, checked address) -> view, see Request.tensors()
        self._descs = {}	# address -> Desc over it (the C loop's req and rep)

    def next_stream(self):
        """One of the helper's CUDA streams, round robin (None without a GPU)."""
        s = lib.ferry_helper_stream(self._h)
        return s if s else None

    def torch_stream(self, stream=None):
        """@stream (default: h.stream) as a torch.cuda.ExternalStream."""
        import torch
        s = self.stream if stream is None else _stream_ptr(stream)
        if s is None:
            raise FerryError(19, "this helper has no GPU")
        return torch.cuda.ExternalStream(s, device=torch.device("cuda", self.gpu))

    def gather(self, reqs, entry, dst, stream=None):
        """Tensor-table entry @entry of every request of @reqs, back to back,
        into @dst in one call (a torch CUDA tensor on a GPU helper, queued on
        @stream, default h.stream: defer the replies there; a numpy array or
        torch CPU tensor on a CPU helper); the bytes copied.  Each entry must
        be C-contiguous; nothing is copied if one is not, or they do not fit."""
        return self._batch_copy(lib.ferry_helper_gather, reqs, entry, dst, stream)

    def scatter(self, reqs, entry, src, stream=None):
        """The other way: @src, back to back, into entry @entry of each request."""
        return self._batch_copy(lib.ferry_helper_scatter, reqs, entry, src, stream)

    def defer_all(self, reqs, stream=None):
        """req.defer(stream) for every request of @reqs (of one batch) at
        once, with one wake-up for all: the list of statuses to return."""
        n = len(reqs)
        if not n:
            return []
        s = self.stream if stream is None else _stream_ptr(stream)
        if s is None:
            raise FerryError(19, "deferred replies need a GPU helper")
        ptrs = (ctypes.c_void_p * n)(*(r._rep for r in reqs))
        r = lib.ferry_helper_defer_all(self._h, ptrs, n, s)
        if r < 0:
            raise FerryError(-r, f"ferry_helper_defer_all of {n}")
        return [_DEFERRED] * n

    def _batch_copy(self, fn, reqs, entry, buf, stream):
        n = len(reqs)
        if not n:
            return 0
        ptrs = (ctypes.c_void_p * n)(*(r._req for r in reqs))
        addr, cap = _buffer(buf)
        s = None
        if self.gpu is not None:
            s = self.stream if stream is None else _stream_ptr(stream)
        r = fn(self._h, ptrs, n, entry, addr, cap, s)
        if r < 0:
            raise FerryError(-r, f"batch copy of entry {entry} of {n} requests")
        return r

    @property
    def waiting(self):
        """Requests waiting in this helper's ring, not yet handed to it."""
        return lib.ferry_helper_waiting(self._h)

    @property
    def pinned_count(self):
        return lib.ferry_helper_pinned_count(self._h)

    def pool_tensor(self, offset, shape, dtype):
        """Bytes of this helper's pool: a numpy array (CPU pool) or a
        DeviceTensor (GPU pool, for torch.from_dlpack).  Only a range the
        request being handled names (its own block, a pool entry of its
        table, a block req.pool_alloc() made): never an offset from args."""
        return self._pool_view(offset, shape, dtype, None)

    def _pool_view(self, offset, shape, dtype, req):
        code = ferry_dtype(dtype)
        n = q.ferry_dtype_size(code)
        shape = tuple(shape)
        for s in shape:
            n *= s
        addr = q.ferry_helper_pool_addr(self._h, offset, n) if req is None else \
            q.ferry_helper_req_pool_addr(self._h, req, offset, n)
        if not addr:
            raise FerryError(14, f"pool range [{offset}, +{n}) is not named by the request")
        if self.gpu is not None:
            return DeviceTensor(addr, shape, code, None, self.gpu)
        return plain_view(addr, shape, numpy_dtype(code))


def _desc_at(helper, addr):
    # The C loop's request and reply arrays stay where they are (one of
    # each, or a batch's worth): the views stay few; the bound is a guard.
    d = helper._descs
    if len(d) >= 1024:
        d.clear()
    v = d[addr] = _from_address(addr)
    return v


class Request:
    """One request, as a handler sees it.  req.reply is the reply's
    descriptor (it starts as a copy of the request; set its offset, len and
    arg[]); the handler's return value is the reply's status."""
    __slots__ = ("helper", "_req", "_rep", "desc", "_reply")

    def __init__(self, helper, req, rep):
        self.helper = helper
        self._req = req
        self._rep = rep
        # The helper's C loop hands every request in the same two structs:
        # the Desc views over them are made once (a view of an address is
        # the same whoever made it).
        d = helper._descs.get(req)
        self.desc = d if d is not None else _desc_at(helper, req)
        self._reply = None

    @property
    def reply(self):
        r = self._reply
        if r is None:
            r = self.helper._descs.get(self._rep)
            if r is None:
                r = _desc_at(self.helper, self._rep)
            self._reply = r
        return r

    op = property(lambda self: self.desc.op)
    tag = property(lambda self: self.desc.tag)
    flags = property(lambda self: self.desc.flags)
    region = property(lambda self: self.desc.region, doc="the sending child's index")
    offset = property(lambda self: self.desc.offset)
    len = property(lambda self: self.desc.len)

    @property
    def args(self):
        a = self.desc.arg
        return (a[0], a[1], a[2])

    def data(self, offset=None, length=None, dtype=np.uint8, shape=None):
        """[offset, offset + length) of the sender's region (default: the
        request's own offset and len) as a numpy array, checked."""
        off = self.desc.offset if offset is None else offset
        n = self.desc.len if length is None else length
        if self.desc.flags & _DESC_POOL and offset is None:
            return self.pool_tensor(off, (n,), np.uint8) if shape is None else \
                self.pool_tensor(off, shape, dtype)
        addr = _helper_data(self.helper._h, self._req, off, n)
        if not addr:
            raise FerryError(14, f"[{off}, +{n}) is not the sender's memory")
        dt = _U8 if dtype is np.uint8 else np.dtype(dtype)
        if shape is None:
            if n % dt.itemsize:
                raise ValueError(f"ferry: {n} bytes are not whole {dt} items")
            shape = (n // dt.itemsize,)
        else:
            shape = tuple(shape)
        need = dt.itemsize
        for s in shape:
            need *= s
        if need > n:
            raise ValueError(f"ferry: shape {tuple(shape)} of {dt} needs {need} bytes, has {n}")
        if dt.fields is not None or dt.subdtype is not None:
            return view(addr, shape, dt)
        return plain_view(addr, shape, dt)

    def tensors(self):
        """The request's tensor table as arrays: numpy views for bytes in the
        sender's region (pinned on a GPU helper: torch.from_numpy(a).cuda(
        non_blocking=True) copies at DMA speed) or a CPU pool, DeviceTensors
        for bytes in a GPU pool.  [] for a request without a table."""
        if not self.desc.flags & _DESC_TENSORS:
            return []
        h = self.helper
        hp, rq, tp = h._h, self._req, _vp()
        n = _tables(hp, rq, _byref(tp))
        if n < 0:
            raise FerryError(-n, "ferry_helper_tensors")
        t = tp.value
        # The broker's checked copy of the table: it cannot change while
        # this request is handled.
        raw = _string_at(t, n * _TSIZE)
        views = h._views
        out = []
        for k in range(n):
            # Every entry's bytes are checked by libferry, every time.
            addr = _tensor_addr(hp, rq, t + k * _TSIZE)
            if not addr:
                raise FerryError(14, f"tensor {k} is nowhere in this helper")
            # The view is a function of the entry and that checked address
            # alone: one made for an earlier request of the same entry at
            # the same address covers exactly these bytes.  Only the Python
            # object's construction is saved; each request gets new arrays.
            key = (raw[k * _TSIZE:(k + 1) * _TSIZE], addr)
            v = views.get(key)
            if v is None:
                v = self._make_view(raw, k * _TSIZE, addr)
                if len(views) >= VIEWS_MAX:
                    views.clear()
                views[key] = v
            if type(v) is tuple:	# a GPU pool tensor: (shape, dtype, strides)
                out.append(DeviceTensor(addr, v[0], v[1], v[2], h.gpu))
            else:
                out.append(v.view())
        return out

    def _make_view(self, raw, at, addr):
        where, code, shape, strides = entry_parse(raw, at)
        if where == 1 and self.helper.gpu is not None:
            return (shape, code, strides)
        return raw_view(addr, shape, code, strides)

    @property
    def pinned(self):
        """Whether the sender's region is registered with CUDA by this helper."""
        return bool(q.ferry_helper_pinned(self.helper._h, self._req))

    def pool_tensor(self, offset, shape, dtype):
        """Bytes of the pool this request names (its own block, a pool entry
        of its table, a block req.pool_alloc() made), as h.pool_tensor() but
        for this request: the way to ask in a batch handler."""
        return self.helper._pool_view(offset, shape, dtype, self._req)

    def pool_alloc(self, nbytes, stream=None):
        """A pool block of @nbytes for the sender, from this helper's arena
        (an output whose size only the handler knows): its offset.  Name it
        in req.reply (offset/len with flags DESC_POOL, or a tensor table);
        with a 0 status the child owns it and frees it, with an error it
        goes back.  @stream: where the block is written (default: the
        helper's h.stream on a GPU helper)."""
        s = _stream_ptr(stream) if stream is not None else self.helper.stream
        off = ctypes.c_uint64()
        r = lib.ferry_helper_pool_alloc(self.helper._h, self._req, nbytes, s,
                                        ctypes.byref(off))
        if r < 0:
            raise FerryError(-r, f"ferry_helper_pool_alloc({nbytes})")
        return off.value

    def defer(self, stream=None):
        """Reply once the work queued on @stream (default: the helper's
        h.stream) so far has completed; return what this returns from the
        handler.  req.reply as it is now is what is sent."""
        if stream is None:
            s = self.helper.stream
        elif type(stream) is int:
            s = stream
        else:
            s = _stream_ptr(stream)
        if s is None:
            raise FerryError(19, "deferred replies need a GPU helper")
        r = _defer(self.helper._h, self._rep, s)
        if r < 0:
            raise FerryError(-r, "ferry_helper_defer")
        return _DEFERRED

    def __repr__(self):
        return f"Request({self.desc!r})"
