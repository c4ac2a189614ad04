# SPDX-License-Identifier: GPL-2.0
"""What the per-request shortcuts must never change.  A helper remembers
the view it made for a table entry at a checked address (Request.tensors):
a later request gets it only for the same entry at the same checked
address, as a new array, whatever an earlier handler did to its own.  A
child remembers the table entry of a C-order array by address, shape and
dtype, keeps its tensor tables for the next requests and learns which
offsets are its heap: arrays outside still fail, and kept tables go back
to the heap when an allocation needs the room."""
import errno
import os
import traceback
import warnings

import numpy as np
import pytest

import ferry

OP_MAP, OP_KEEP, OP_WHERE, OP_COUNT = 1, 2, 3, 4
_kept = []	# OP_KEEP's arrays of earlier requests, kept past their handlers


def serve(req):
    if req.op == OP_MAP:	# dst = src * 3 + 1
        src, dst = req.tensors()
        dst[...] = src * 3 + 1
        return 0
    if req.op == OP_KEEP:
        # (an 8 x 8 float32 array): arg[0] = 1 if it is a new array, of its
        # own shape and writable, over the bytes at region offset arg[0]
        (t,) = req.tensors()
        ok = all(t is not k and t.base is not k for k in _kept)
        ok = ok and t.shape == (8, 8) and t.dtype == np.float32 and t.flags.writeable
        at = req.data(req.args[0], 256).__array_interface__["data"][0]
        ok = ok and t.__array_interface__["data"][0] == at
        t[...] = req.args[1]
        # what a handler may do to its own array (and keep it, wrongly)
        _kept.append(t)
        t.flags.writeable = False
        with warnings.catch_warnings():	# a numpy that deprecates setting shape
            warnings.simplefilter("ignore")
            try:
                t.shape = (64,)
            except AttributeError:	# or one that refuses it
                pass
        req.reply.arg[0] = int(ok)
        req.reply.arg[1] = len(req.helper._views)
        return 0
    if req.op == OP_WHERE:	# arg[0..]: each tensor's address in this helper
        ts = req.tensors()
        for k, t in enumerate(ts[:3]):
            req.reply.arg[k] = t.__array_interface__["data"][0]
        return 0
    if req.op == OP_COUNT:	# how many views this helper remembers
        req.reply.arg[0] = len(req.helper._views)
        return 0
    return -errno.EOPNOTSUPP


def loud(fn):
    def wrapped(*a):
        try:
            return fn(*a)
        except BaseException:
            os.write(2, traceback.format_exc().encode())
            raise
    return wrapped


def run(child, children=1, helpers=1, **kw):
    kw.setdefault("gpu", None)
    with ferry.Broker(children=children, helpers=helpers, child=loud(child), handler=serve,
                      **kw) as b:
        failed = b.wait(120)
    assert failed == 0, "a child failed (its traceback is above)"


def test_same_entry_other_child_is_that_childs_memory(tmp_path):
    """Two children with arrays at the same offsets of their regions: their
    table entries are the same bytes; one helper serves both; each gets
    its own memory's result, every time."""
    def child(c):
        x = c.empty(1024, np.float32)
        y = c.empty(1024, np.float32)
        off = (c._span(x)[0], c._span(y)[0])
        (tmp_path / f"off-{c.index}").write_text(repr(off))
        for i in range(300):
            x[...] = c.index * 1000 + i
            y[...] = -1
            c.call(OP_MAP, tensors=[x, y])
            assert (y == (c.index * 1000 + i) * 3 + 1).all(), (c.index, i)
    run(child, children=2, helpers=1)
    # the case this test is about: both children's entries named the same offsets
    assert (tmp_path / "off-0").read_text() == (tmp_path / "off-1").read_text()


def test_same_address_other_shape_dtype_or_start_is_a_new_view():
    sels = [lambda v: v, lambda v: v[:1024], lambda v: v.reshape(64, 64),
            lambda v: v.view(np.int32), lambda v: v[8:], lambda v: v[::2],
            lambda v: v.reshape(64, 64).T, lambda v: v[4:].view(np.int16)[::3]]

    def child(c):
        a = c.empty(4096, np.uint8)
        out = c.empty(4096, np.uint8)
        for rnd in range(3):
            for k, sel in enumerate(sels):
                a[...] = (np.arange(4096) * (k + 1)) % 251
                out[...] = 0
                c.call(OP_MAP, tensors=[sel(a), sel(out)])
                wa, wo = a.copy(), np.zeros_like(out)
                sel(wo)[...] = sel(wa) * 3 + 1
                assert np.array_equal(out, wo), (rnd, k)
        # freed, and the same bytes again under another shape
        del a, out
        b = c.empty((32, 128), np.uint8)
        o = c.empty((32, 128), np.uint8)
        b[...] = 5
        c.call(OP_MAP, tensors=[b, o])
        assert (o == 16).all()
    run(child)


def test_a_view_kept_past_its_handler_is_never_handed_out_again():
    def child(c):
        t = c.empty((8, 8), np.float32)
        off = c._span(t)[0]
        for i in range(50):
            rep = c.call(OP_KEEP, tensors=[t], args=(off, i))
            assert rep.arg[0] == 1, i
            assert (t == i).all()
            # the same entry each time: one remembered view, not one per request
            assert rep.arg[1] <= 2
    run(child)


def test_the_helpers_remembered_views_are_bounded():
    def child(c):
        a = c.empty(8192, np.uint8)
        o = c.empty(8192, np.uint8)
        a[...] = 1
        most = 0
        for n in range(1, 600):
            rep = c.call(OP_MAP, tensors=[a[:n], o[:n]])
            assert o[n - 1] == 4
            most = max(most, c.call(OP_COUNT).arg[0])
        assert 2 < most <= ferry._helper.VIEWS_MAX
        # and the child's remembered table entries
        assert 2 < len(c._entries) <= ferry._child.ENTRIES_MAX
    run(child)


def test_arrays_outside_the_region_still_fail_after_many_calls():
    def child(c):
        x = c.empty(1024, np.float32)
        y = c.empty(1024, np.float32)
        for _ in range(50):
            c.call(OP_MAP, tensors=[x, y])
        with pytest.raises(ValueError):
            c.call(OP_MAP, tensors=[np.zeros(4, np.float32), y])
        with pytest.raises(ValueError):
            c.call(OP_MAP, tensors=[x, np.zeros(1024, np.float32)])
        # from inside the heap to past the region's end
        end = c.empty(16, np.uint8)
        past = np.lib.stride_tricks.as_strided(end, shape=(64 << 20,), strides=(1,))
        with pytest.raises(ValueError):
            c.call(OP_MAP, tensors=[past, past])
        c.call(OP_MAP, tensors=[x, y])
    run(child)


def test_kept_tables_go_back_to_the_heap_when_room_is_needed():
    def child(c):
        # the largest array that fits in the empty heap
        lo, hi = 1, 1 << 20
        while lo < hi:
            mid = (lo + hi + 1) // 2
            try:
                c.empty(mid, np.uint8)
                lo = mid
            except ferry.FerryError:
                hi = mid - 1
        big = lo
        ts = [c.empty(64, np.float32) for _ in range(16)]
        for n in range(1, 17):
            for _ in range(3):
                c.call(OP_MAP if n == 2 else OP_WHERE, tensors=ts[:n])
        assert c._tabs
        del ts
        a = c.empty(big, np.uint8)	# the tables kept were given back for it
        assert a.nbytes == big
        del a
        with pytest.raises(ferry.FerryError) as e:
            c.empty(big + 4096, np.uint8)
        assert e.value.errno == errno.ENOMEM
    run(child, region_size=1 << 20)


class _Exporter:
    """An object numpy can take through DLPack: a capsule over ferry bytes."""

    def __init__(self, addr, shape, code, strides):
        self.args = (addr, shape, code, strides)

    def __dlpack_device__(self):
        return (ferry._tensors.KDL_CPU, 0)

    def __dlpack__(self, stream=None, **kw):
        return ferry.dlpack_capsule(*self.args)


@pytest.mark.skipif(not hasattr(np, "from_dlpack"), reason="numpy without from_dlpack")
def test_dlpack_capsules_describe_the_bytes_and_go_when_consumed():
    import gc
    base = np.arange(4096, dtype=np.float32)
    addr = base.__array_interface__["data"][0]
    live = ferry._tensors._live
    before = len(live)
    for shape, strides in (((64, 64), None), ((32, 16), (1, 64)), ((4096,), None),
                           ((2, 4, 8, 16), None), ((7,), (3,))):
        a = np.from_dlpack(_Exporter(addr, shape, ferry.ferry_dtype(np.float32), strides))
        if strides is None:
            want = base[:int(np.prod(shape))].reshape(shape)
        else:
            want = np.lib.stride_tricks.as_strided(base, shape, tuple(s * 4 for s in strides))
        assert a.__array_interface__["data"][0] == addr
        assert a.shape == shape and np.array_equal(a, want)
        del a
        gc.collect()
    # consumed ones are deleted by their consumer, unconsumed ones with their capsule
    ferry.dlpack_capsule(addr, (8,), ferry.ferry_dtype(np.float32))
    gc.collect()
    assert len(live) == before
