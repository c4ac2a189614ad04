# SPDX-License-Identifier: GPL-2.0
"""The broker from Python: numpy tensors in place, checked element by element;
several tensors per call; errors as exceptions with their errno; processes
killed mid-call; forks made while other Python threads run; nothing left
open after stop()."""
import errno
import os
import signal
import threading
import traceback

import numpy as np
import pytest

import ferry
from util import open_fds, shm_files, wait_for

OP_MAP, OP_SUM, OP_SLEEP, OP_RAISE, OP_FAIL, OP_WHO, OP_BYTES = range(1, 8)


def serve(req):
    """A handler for every test here."""
    if req.op == OP_MAP:	# out = in * 3 + 1 (bool: not in), any dtype and layout
        src, dst = req.tensors()
        if src.dtype == np.bool_:
            dst[...] = ~src
        else:
            dst[...] = src * 3 + 1
        req.reply.arg[0] = src.ndim
        req.reply.arg[1] = ferry.ferry_dtype(src.dtype)
        return 0
    if req.op == OP_SUM:	# last = sum of the others; arg[0] = how many
        ts = req.tensors()
        acc = np.zeros_like(ts[-1])
        for t in ts[:-1]:
            acc += t
        ts[-1][...] = acc
        req.reply.arg[0] = len(ts)
        return 0
    if req.op == OP_SLEEP:	# until the file named by the request exists
        path = bytes(req.data()).decode()
        wait_for(lambda: os.path.exists(path), 60, path)
        return 0
    if req.op == OP_RAISE:
        raise ValueError("a handler's bug")
    if req.op == OP_FAIL:
        raise ferry.FerryError(req.args[0])
    if req.op == OP_WHO:
        req.reply.arg[0] = os.getpid()
        req.reply.arg[1] = req.helper.index
        return 0
    if req.op == OP_BYTES:	# data= (offset, len): reverse the bytes in place
        b = req.data()
        b[...] = b[::-1].copy()
        return 0
    return -errno.EOPNOTSUPP


def loud(fn):
    """@fn, with its traceback written to fd 2 (pytest shows it; sys.stderr
    is pytest's buffer in the forked copy, lost when the child ends)."""
    def wrapped(*a):
        try:
            return fn(*a)
        except BaseException:
            os.write(2, traceback.format_exc().encode())
            raise
    return wrapped


def run(child, children=2, helpers=2, **kw):
    kw.setdefault("gpu", None)
    with ferry.Broker(children=children, helpers=helpers, child=loud(child), handler=serve,
                      **kw) as b:
        failed = b.wait(120)
        st = b.stats()
    assert failed == 0, "a child failed (its traceback is above)"
    return st


DTYPES = [np.bool_, np.uint8, np.int8, np.uint16, np.int16, np.float16, np.uint32, np.int32,
          np.float32, np.uint64, np.int64, np.float64]


def test_numpy_round_trip_every_dtype_element_by_element():
    def child(c):
        rng = np.random.default_rng(c.index)
        for dt in DTYPES:
            for shape in [(1,), (1000,), (7, 13), (2, 3, 4, 5)]:
                x = c.empty(shape, dt)
                y = c.empty(shape, dt)
                if dt == np.bool_:
                    x[...] = rng.integers(0, 2, shape).astype(bool)
                elif np.issubdtype(dt, np.floating):
                    x[...] = rng.standard_normal(shape).astype(dt)
                else:
                    x[...] = rng.integers(0, 100, shape).astype(dt)
                y[...] = 0
                rep = c.call(OP_MAP, tensors=[x, y])
                assert rep.arg[0] == len(shape) and rep.arg[1] == ferry.ferry_dtype(dt)
                want = ~x if dt == np.bool_ else (x * 3 + 1).astype(dt)
                for i, (got, exp) in enumerate(zip(y.flat, want.flat)):
                    assert got == exp or (np.isnan(got) and np.isnan(exp)), (dt, shape, i)
    run(child)


def test_strided_views_and_fortran_order_travel_in_place():
    def child(c):
        base = c.empty((64, 64), np.float32)
        base[...] = np.arange(64 * 64, dtype=np.float32).reshape(64, 64)
        out = c.empty((64, 64), np.float32, )
        out[...] = -1
        # every other row and column, the transpose, a Fortran array
        c.call(OP_MAP, tensors=[base[::2, 1::2], out[::2, 1::2]])
        assert np.array_equal(out[::2, 1::2], base[::2, 1::2] * 3 + 1)
        assert (out[1::2] == -1).all() and (out[::2, ::2] == -1).all()
        f = np.asfortranarray(base)
        assert not f.flags.c_contiguous
        fa = c.asarray(f)	# a copy in the region keeps its order
        fo = c.empty((64, 64), np.float32)
        c.call(OP_MAP, tensors=[fa.T, fo.T])
        assert np.array_equal(fo.T, fa.T * 3 + 1)
    run(child, children=1, helpers=1)


def test_several_tensors_per_call_up_to_sixteen():
    def child(c):
        for n in (2, 3, 8, 16):
            ts = [c.empty((33, 5), np.int64) for _ in range(n)]
            for k, t in enumerate(ts[:-1]):
                t[...] = np.arange(33 * 5).reshape(33, 5) * (k + 1)
            rep = c.call(OP_SUM, tensors=ts)
            assert rep.arg[0] == n
            want = np.arange(33 * 5).reshape(33, 5) * sum(range(1, n))
            assert np.array_equal(ts[-1], want)
        with pytest.raises(ValueError):
            c.call(OP_SUM, tensors=[c.empty(4) for _ in range(17)])
        with pytest.raises(ValueError):
            c.call(OP_SUM, tensors=[])
    run(child, children=3)


def test_data_bytes_and_plain_descriptors():
    def child(c):
        a = c.empty(4096, np.uint8)
        a[...] = np.arange(4096) % 251
        before = a.copy()
        c.call(OP_BYTES, data=a)
        assert np.array_equal(a, before[::-1])
        rep = c.call(OP_WHO)
        assert rep.arg[1] in (0, 1) and rep.arg[0] != os.getpid()
    run(child)


def test_region_arrays_go_back_to_the_heap_when_released():
    def child(c):
        # 1 MiB regions: far more than fits, one at a time, all freed
        for i in range(200):
            a = c.empty((64, 1024), np.float64)	# 512 KiB
            a[...] = i
            v = a[3:5]
            del a
            assert (v == i).all()
            del v
        keep = c.empty(100 * 1024, np.uint8)
        with pytest.raises(ferry.FerryError) as e:
            c.empty(1 << 20, np.uint8)
        assert e.value.errno == errno.ENOMEM
        del keep
    run(child, children=1, helpers=1, region_size=1 << 20)


def test_errors_are_exceptions_that_carry_the_errno():
    def child(c):
        with pytest.raises(ferry.FerryError) as e:
            c.call(OP_FAIL, args=(errno.ENOSPC,))
        assert e.value.errno == errno.ENOSPC and isinstance(e.value, OSError)
        with pytest.raises(ferry.FerryError) as e:
            c.call(OP_RAISE)	# a handler's exception: EIO, and the helper lives on
        assert e.value.errno == errno.EIO
        rep = c.call(OP_FAIL, args=(errno.EBUSY,), check=False)
        assert rep.status == -errno.EBUSY
        with pytest.raises(ferry.FerryError) as e:
            c.call(999)
        assert e.value.errno == errno.EOPNOTSUPP
        # memory that is not the child's own
        with pytest.raises(ValueError):
            c.call(OP_MAP, tensors=[np.zeros(4), np.zeros(4)])
        # the broker refuses a range outside the heap
        with pytest.raises(ferry.FerryError) as e:
            c.call(OP_BYTES, offset=0, length=64)
        assert e.value.errno == errno.EINVAL
        with pytest.raises(TypeError):
            c.call(OP_MAP, tensors=[c.empty(4, np.complex64), c.empty(4, np.complex64)])
    run(child, children=1, helpers=1)


def test_bad_options_are_refused():
    with pytest.raises(ferry.FerryError) as e:
        ferry.Broker(children=0, helpers=0, handler=serve)
    assert e.value.errno == errno.EINVAL
    with pytest.raises(ferry.FerryError) as e:
        ferry.Broker(children=0, handler=serve, backend="tape")
    assert e.value.errno == errno.EINVAL
    with pytest.raises(TypeError):
        ferry.Broker(children=1, handler=serve)
    with pytest.raises(TypeError):
        ferry.Broker(children=0, handler=None)
    with pytest.raises(ValueError):
        ferry.Broker(children=0, handler=serve, gpu=-3)


def test_stats_are_a_dict_and_stop_is_idempotent():
    def child(c):
        for i in range(50):
            c.call(OP_WHO)
    b = ferry.Broker(children=2, helpers=1, child=child, handler=serve, gpu=None)
    assert b.wait(60) == 0
    st = b.stats()
    assert st["requests"] == st["replies"] == 100 and st["child_exits"] == 2
    assert b.backend in ("memfd", "kmod")
    b.stop()
    b.stop()
    with pytest.raises(ferry.FerryError) as e:
        b.stats()
    assert e.value.errno == errno.EBADF


def test_no_fd_or_dev_shm_left_after_stop():
    def child(c):
        x = c.empty(1000, np.float32)
        y = c.empty(1000, np.float32)
        x[...] = 1
        c.call(OP_MAP, tensors=[x, y])
    run(lambda c: None, children=1)	# warm: imports, lazily opened files
    fds, shm = open_fds(), shm_files()
    for _ in range(3):
        run(child, children=4)
    assert open_fds() == fds
    assert shm_files() == shm


def test_child_killed_mid_call_loses_nothing_of_the_others(tmp_path):
    flag = tmp_path / "go"

    def child(c):
        p = c.asarray(np.frombuffer(str(flag).encode(), np.uint8))
        if c.index == 0:
            c.call(OP_SLEEP, data=p)	# killed in here
            return 3
        wait_for(flag.exists, 60, "child 0's death")
        for _ in range(200):
            x = c.empty(100, np.int32)
            y = c.empty(100, np.int32)
            x[...] = np.arange(100)
            c.call(OP_MAP, tensors=[x, y])
            assert np.array_equal(y, x * 3 + 1)
    with ferry.Broker(children=3, helpers=2, child=child, handler=serve, gpu=None) as b:
        wait_for(lambda: b.stats()["in_flight"] >= 1, what="child 0's request at a helper")
        os.kill(b.child_pid(0), signal.SIGKILL)
        wait_for(lambda: b.stats()["child_deaths"] == 1, what="child 0's death")
        flag.touch()	# its request ends at the helper; the reply goes nowhere
        assert b.wait(120) == 1
        st = b.stats()
    assert st["child_deaths"] == 1 and st["replies"] >= 400


def test_helper_killed_mid_call_is_epipe_and_the_restarted_helper_serves(tmp_path):
    flag = tmp_path / "never"

    def child(c):
        p = c.asarray(np.frombuffer(str(flag).encode(), np.uint8))
        with pytest.raises(ferry.FerryError) as e:
            c.call(OP_SLEEP, data=p)
        assert e.value.errno == errno.EPIPE
        # the helper was forked again (by the broker's thread): Python there works
        for _ in range(20):
            x = c.empty(10, np.float64)
            y = c.empty(10, np.float64)
            x[...] = 2.5
            c.call(OP_MAP, tensors=[x, y])
            assert (y == 8.5).all()
    with ferry.Broker(children=1, helpers=1, child=child, handler=serve, gpu=None) as b:
        wait_for(lambda: b.stats()["in_flight"] >= 1, what="the request at its helper")
        old = b.helper_pid(0)
        os.kill(old, signal.SIGKILL)
        assert b.wait(120) == 0
        st = b.stats()
        assert st["helper_deaths"] == 1 and st["helper_restarts"] == 1
        assert b.helper_pid(0) != old


def test_forks_while_other_python_threads_hold_the_gil():
    """Children and helpers start while Python threads here compute and a
    helper is restarted meanwhile: none of them hangs on the GIL."""
    stop = threading.Event()

    def spin():
        n = 0
        while not stop.is_set():
            n += sum(range(1000))

    def child(c):
        # threads work in the child too (its threading state was reset)
        def who():
            while True:	# helper 1 may die under a request: EPIPE, again
                try:
                    return c.call(OP_WHO).arg[1]
                except ferry.FerryError as e:
                    if e.errno != errno.EPIPE:
                        raise
        out = []
        t = threading.Thread(target=lambda: out.append(who()))
        t.start()
        t.join(60)
        assert out and not t.is_alive()
        for _ in range(100):
            who()
    threads = [threading.Thread(target=spin) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for _ in range(3):
            with ferry.Broker(children=4, helpers=2, child=child, handler=serve,
                              gpu=None) as b:
                os.kill(b.helper_pid(1), signal.SIGKILL)
                assert b.wait(120) == 0
    finally:
        stop.set()
        for t in threads:
            t.join()


def test_child_exceptions_and_exit_codes():
    def child(c):
        if c.index == 0:
            raise RuntimeError("a child's bug")
        if c.index == 1:
            raise SystemExit(0)
        return 0
    with ferry.Broker(children=3, helpers=1, child=child, handler=serve, gpu=None) as b:
        assert b.wait(60) == 1
