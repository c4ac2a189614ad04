# SPDX-License-Identifier: LGPL-2.1-or-later
"""Tensors in place: numpy arrays over ferry memory, tensor-table entries, DLPack.

Every array made here is a view of memory that libferry owns (a child's
region, a request's bytes in a helper, a pool); nothing is copied.
"""
import ctypes
import struct

import numpy as np

from . import _lib
from ._lib import FerryError, Tensor

# enum ferry_dtype <-> numpy
_DT = {
    np.dtype(np.bool_): 1, np.dtype(np.uint8): 2, np.dtype(np.int8): 3,
    np.dtype(np.uint16): 4, np.dtype(np.int16): 5, np.dtype(np.float16): 6,
    np.dtype(np.uint32): 8, np.dtype(np.int32): 9, np.dtype(np.float32): 10,
    np.dtype(np.uint64): 11, np.dtype(np.int64): 12, np.dtype(np.float64): 13,
}
DT_BF16 = 7
_NP = {v: k for k, v in _DT.items()}
# bfloat16 has no numpy type: helpers see its bits as uint16.
_NP[DT_BF16] = np.dtype(np.uint16)
DTYPE_NAMES = {1: "bool", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "float16",
               7: "bfloat16", 8: "uint32", 9: "int32", 10: "float32", 11: "uint64",
               12: "int64", 13: "float64"}


def ferry_dtype(dtype):
    """The enum ferry_dtype of a numpy dtype (or of "bfloat16")."""
    if isinstance(dtype, str) and dtype == "bfloat16":
        return DT_BF16
    try:
        return _DT[np.dtype(dtype)]
    except (KeyError, TypeError):
        raise TypeError(f"ferry: no tensor dtype for {dtype!r} "
                        f"(bool, (u)int8..64, float16/32/64, bfloat16)") from None


def numpy_dtype(code):
    try:
        return _NP[code]
    except KeyError:
        raise FerryError(22, f"tensor dtype {code}") from None


class _Memory:
    """The owner of a numpy array's bytes: an address, a length, a release."""
    __slots__ = ("__array_interface__", "_release", "__weakref__")

    def __init__(self, addr, shape, dtype, strides=None, release=None, readonly=False):
        dtype = np.dtype(dtype)
        self.__array_interface__ = {
            "version": 3, "shape": tuple(shape), "typestr": dtype.str,
            "data": (addr, readonly), "strides": strides,
        }
        if dtype.fields is not None or dtype.subdtype is not None:
            self.__array_interface__["descr"] = dtype.descr
        self._release = release

    def __del__(self):
        r, self._release = self._release, None
        if r is not None:
            r()


def view(addr, shape, dtype, strides=None, release=None, readonly=False):
    """A numpy array over [addr, ...) (no copy); release() when the last view goes."""
    if not addr:
        raise FerryError(14, "no memory at that address")
    return np.asarray(_Memory(addr, shape, dtype, strides, release, readonly))


def entry_view(e, addr):
    """A numpy view of table entry @e whose bytes are at @addr in this process."""
    dt = numpy_dtype(e.dtype)
    shape = tuple(e.shape[k] for k in range(e.ndim))
    strides = None
    if any(e.strides[k] for k in range(e.ndim)):
        strides = tuple(e.strides[k] * dt.itemsize for k in range(e.ndim))
    return view(addr, shape, dt, strides)


_ENTRY = struct.Struct("<BBBBIQQ6q6qQ")	# struct ferry_tensor
assert _ENTRY.size == ctypes.sizeof(Tensor)
_ZEROS = (0,) * _lib.TENSOR_NDIM


class _Iface:
    """A bare owner of an array's bytes (nothing to release): a helper's views."""
    __slots__ = ("__array_interface__",)


_asarray = np.asarray


def entry_parse(raw, at=0):
    """(where, dtype code, shape, element strides or None: C order) of the
    struct ferry_tensor at byte @at of bytes @raw."""
    v = _ENTRY.unpack_from(raw, at)
    ndim = v[2]
    if ndim > _lib.TENSOR_NDIM:
        raise FerryError(22, f"tensor of {ndim} dimensions")
    st = v[13:13 + ndim]
    return v[0], v[1], v[7:7 + ndim], (st if any(st) else None)


def plain_view(addr, shape, dt, strides=None):
    """view() of a plain numpy dtype @dt with nothing to release, quicker."""
    m = _Iface()
    m.__array_interface__ = {"version": 3, "shape": shape, "typestr": dt.str,
                             "data": (addr, False), "strides": strides}
    return _asarray(m)


def raw_view(addr, shape, code, strides):
    """A numpy view over @addr of an entry_parse()d tensor (its bytes checked
    by libferry: ferry_helper_tensor_addr)."""
    dt = numpy_dtype(code)
    if strides is not None:
        strides = tuple(s * dt.itemsize for s in strides)
    return plain_view(addr, shape, dt, strides)


def fill_entry(buf, at, where, offset, arr_shape, arr_strides, itemsize, dtype_code):
    """Write table entry (struct ferry_tensor) at byte @at of @buf for a tensor of
    this shape (strides in bytes, None: C order)."""
    ndim = len(arr_shape)
    if ndim > _lib.TENSOR_NDIM:
        raise ValueError(f"ferry: {ndim} dimensions, at most {_lib.TENSOR_NDIM}")
    count = 1
    for n in arr_shape:
        if n <= 0:
            raise ValueError("ferry: tensors have no empty dimension")
        count *= n
    pad = _ZEROS[ndim:]
    if arr_strides is None:
        _ENTRY.pack_into(buf, at, where, dtype_code, ndim, 0, 0, offset, count * itemsize,
                         *arr_shape, *pad, *_ZEROS, 0)
        return
    st = []
    last = 0
    for n, s in zip(arr_shape, arr_strides):
        if s < 0 or s % itemsize:
            raise ValueError("ferry: strides must be non-negative multiples of the item size")
        st.append(s // itemsize)
        last += (n - 1) * (s // itemsize)
    if not any(st):
        raise ValueError("ferry: broadcast (all-zero strides) tensors cannot be sent")
    _ENTRY.pack_into(buf, at, where, dtype_code, ndim, 0, 0, offset, (last + 1) * itemsize,
                     *arr_shape, *pad, *st, *pad, 0)


def array_strides(a):
    """None for a C-contiguous array (the table's 'all strides 0'), else its strides."""
    return None if a.flags.c_contiguous else a.strides


# ------------------------------------------------------------------ DLPack

class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int32),
                ("dtype", _DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


class _DLManagedTensor(ctypes.Structure):
    pass


_DELETER = ctypes.CFUNCTYPE(None, ctypes.POINTER(_DLManagedTensor))
_DLManagedTensor._fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p),
                             ("deleter", _DELETER)]

KDL_CPU, KDL_CUDA = 1, 2
# DLPack type codes: int 0, uint 1, float 2, bfloat 4, bool 6
_DL_CODE = {1: (6, 8), 2: (1, 8), 3: (0, 8), 4: (1, 16), 5: (0, 16), 6: (2, 16), 7: (4, 16),
            8: (1, 32), 9: (0, 32), 10: (2, 32), 11: (1, 64), 12: (0, 64), 13: (2, 64)}

# Managed tensors handed out and not yet deleted, by address: their
# ctypes memory (and whatever keeps the bytes alive) lives here until the
# consumer calls the deleter (or the capsule dies unconsumed).
_live = {}


@_DELETER
def _deleter(p):
    _live.pop(ctypes.addressof(p.contents), None)


_capsule_new = ctypes.pythonapi.PyCapsule_New
_capsule_new.restype = ctypes.py_object
_capsule_new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
_capsule_valid = ctypes.pythonapi.PyCapsule_IsValid
_capsule_valid.restype = ctypes.c_int
_capsule_valid.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
_capsule_ptr = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_ptr.restype = ctypes.c_void_p
_capsule_ptr.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
_NAME = b"dltensor"


@ctypes.CFUNCTYPE(None, ctypes.c_void_p)
def _capsule_dtor(cap):
    # Never consumed (still named "dltensor"): the producer deletes it.
    if _capsule_valid(cap, _NAME):
        _live.pop(_capsule_ptr(cap, _NAME), None)


class _DLBlock(ctypes.Structure):
    """A DLManagedTensor (its pointers as plain addresses) and, after it,
    the shape and strides it points to: one allocation per capsule."""
    _fields_ = [("data", ctypes.c_void_p), ("device_type", ctypes.c_int32),
                ("device_id", ctypes.c_int32), ("ndim", ctypes.c_int32),
                ("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16),
                ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p),
                ("byte_offset", ctypes.c_uint64), ("manager_ctx", ctypes.c_void_p),
                ("deleter", ctypes.c_void_p),
                ("shape_v", ctypes.c_int64 * _lib.TENSOR_NDIM),
                ("strides_v", ctypes.c_int64 * _lib.TENSOR_NDIM)]


# the same layout as the DLManagedTensor declared above, field by field
for _f, _o in (("data", _DLTensor.data.offset), ("device_type", _DLTensor.device.offset),
               ("ndim", _DLTensor.ndim.offset), ("code", _DLTensor.dtype.offset),
               ("shape", _DLTensor.shape.offset), ("strides", _DLTensor.strides.offset),
               ("byte_offset", _DLTensor.byte_offset.offset),
               ("manager_ctx", _DLManagedTensor.manager_ctx.offset),
               ("deleter", _DLManagedTensor.deleter.offset)):
    assert getattr(_DLBlock, _f).offset == _o, _f
assert _DLBlock.shape_v.offset == ctypes.sizeof(_DLManagedTensor)
_SHAPE_AT, _STRIDES_AT = _DLBlock.shape_v.offset, _DLBlock.strides_v.offset
_DELETER_AT = ctypes.cast(_deleter, ctypes.c_void_p).value
_DTOR_AT = ctypes.cast(_capsule_dtor, ctypes.c_void_p).value


def dlpack_capsule(addr, shape, dtype_code, strides=None, device=(KDL_CPU, 0), keep=None):
    """A "dltensor" PyCapsule over @addr (elements' strides or None: C order)."""
    code, bits = _DL_CODE[dtype_code]
    ndim = len(shape)
    if ndim > _lib.TENSOR_NDIM:
        raise ValueError(f"ferry: {ndim} dimensions, at most {_lib.TENSOR_NDIM}")
    b = _DLBlock(addr, device[0], device[1], ndim, code, bits, 1)
    at = ctypes.addressof(b)
    if ndim:
        b.shape_v = tuple(shape)
    b.shape = at + _SHAPE_AT
    if strides is not None:
        b.strides_v = tuple(strides)
        b.strides = at + _STRIDES_AT
    b.deleter = _DELETER_AT
    _live[at] = (b, keep)
    return _capsule_new(at, _NAME, _DTOR_AT)


class DeviceTensor:
    """Tensor bytes on a GPU (a pool block in a helper): hand it to torch.from_dlpack()
    or cupy.from_dlpack(); .ptr is the CUdeviceptr."""

    def __init__(self, ptr, shape, dtype_code, strides, device_id, keep=None):
        self.ptr = ptr
        self.shape = tuple(shape)
        self.dtype = DTYPE_NAMES[dtype_code]
        self._code = dtype_code
        self.strides = strides	# elements, or None: C order
        self.device_id = device_id
        self._keep = keep

    @property
    def nbytes(self):
        n = _lib.lib.ferry_dtype_size(self._code)
        for s in self.shape:
            n *= s
        return n

    def __dlpack_device__(self):
        return (KDL_CUDA, self.device_id)

    def __dlpack__(self, stream=None, **kw):
        # The bytes are ready when the handler runs (pool copies finish
        # before their reply): nothing to order against @stream.
        return dlpack_capsule(self.ptr, self.shape, self._code, self.strides,
                              (KDL_CUDA, self.device_id), self._keep)

    def torch(self):
        """This tensor as a torch CUDA tensor over the same bytes (no copy)."""
        import torch
        try:
            return torch.from_dlpack(self)
        except (TypeError, BufferError, RuntimeError):
            # a torch that wants a versioned capsule from __dlpack__: hand it ours
            return torch.utils.dlpack.from_dlpack(self.__dlpack__())

    def __repr__(self):
        return (f"DeviceTensor(ptr=0x{self.ptr:x}, shape={self.shape}, dtype={self.dtype}, "
                f"cuda:{self.device_id})")
