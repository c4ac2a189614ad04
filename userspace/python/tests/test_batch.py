# SPDX-License-Identifier: GPL-2.0
"""Batch handlers from Python (Triton's execute(requests)): the requests
waiting at a helper come in one call; each gets its own status and reply;
tensors of every request in the batch are checked views; an exception
fails the batch with its errno."""
import errno
import os
import traceback

import numpy as np
import pytest

import ferry
from util import wait_for

OP_SCALE, OP_FAIL, OP_RAISE, OP_AXPB = 1, 2, 3, 4
WINDOW = 4
FIRST = 0xf1257	# args[2] of the first round's requests


def execute(reqs):
    """One call for every waiting request; the batch size in arg[1]."""
    if any(r.op == OP_RAISE for r in reqs):
        raise ferry.FerryError(errno.EBADMSG, "asked to")
    # The first call waits for the whole first round (every child, its
    # window): the next one must get them together.
    h = reqs[0].helper
    if h.state == "wait" and any(r.args[2] == FIRST for r in reqs):
        h.state = "waited"
        wait_for(lambda: len(reqs) + h.waiting >= 8 * WINDOW, timeout=60)
    axpb = [r for r in reqs if r.op == OP_AXPB]
    if axpb:	# the Triton way: one buffer for the batch, one numpy call
        buf = h.state if isinstance(h.state, np.ndarray) else np.empty(1 << 16, np.float32)
        h.state = buf
        got = h.gather(axpb, 0, buf)
        v = buf[:got // 4]
        v *= 2
        v += axpb[0].args[0]
        h.scatter(axpb, 1, v)
        if len(axpb) == len(reqs):
            return None
    out = []
    xs = [r.tensors() for r in reqs if r.op == OP_SCALE]
    for x, y in xs:	# numpy on every request's own views
        np.multiply(x, 3, out=y)
    for r in reqs:
        r.reply.arg[1] = len(reqs)
        out.append(0 if r.op in (OP_SCALE, OP_AXPB) else -int(r.args[0]))
    return out


def loud(fn):
    def wrapped(*a):
        try:
            return fn(*a)
        except BaseException:
            os.write(2, traceback.format_exc().encode())
            raise
    return wrapped


def test_waiting_requests_come_in_one_call(tmp_path):
    def child(c):
        x = [c.empty(1000, np.float32) for _ in range(WINDOW)]
        y = [c.empty(1000, np.float32) for _ in range(WINDOW)]
        c.call(OP_FAIL, args=(0,), check=False)	# every child has had a reply...
        (tmp_path / str(c.index)).touch()	# ...before the first round starts
        wait_for(lambda: len(os.listdir(tmp_path)) >= 8, timeout=60)
        most = 0
        for r in range(30):
            for k in range(WINDOW):
                x[k][...] = np.arange(1000) + 100 * k + r
                mark = FIRST if r == 0 else 0
                if k == WINDOW - 1 and r % 2:
                    c.submit(OP_FAIL, args=(errno.EDOM, 0, mark), tag=k)
                else:
                    c.submit(OP_SCALE, tensors=[x[k], y[k]], args=(0, 0, mark), tag=k)
            for _ in range(WINDOW):
                rep = c.complete(check=False)
                k = rep.tag
                most = max(most, rep.arg[1])
                if k == WINDOW - 1 and r % 2:
                    assert rep.status == -errno.EDOM
                else:
                    assert rep.status == 0
                    assert np.array_equal(y[k], (np.arange(1000) + 100 * k + r) * 3)
        (tmp_path / f"most-{c.index}").write_text(str(most))
        return 0
    with ferry.Broker(children=8, helpers=1, child=loud(child), batch_handler=execute,
                      helper_init=lambda h: "wait", window=WINDOW, helper_depth=8 * WINDOW,
                      gpu=None) as b:
        assert b.wait(120) == 0
    # The first round waited behind one call: it, or the next, held half of it.
    assert max(int((tmp_path / f"most-{k}").read_text()) for k in range(8)) >= 8 * WINDOW // 2


def test_a_batch_gathered_into_one_buffer_and_scattered_back(tmp_path):
    def child(c):
        x = [c.empty(n, np.float32) for n in (1, 100, 1000, 5000)]
        y = [c.empty(n, np.float32) for n in (1, 100, 1000, 5000)]
        for r in range(40):
            for k in range(4):
                x[k][...] = np.arange(x[k].size) + k + r
                y[k][...] = -1
                c.submit(OP_AXPB, tensors=[x[k], y[k]], args=(7,), tag=k)
            for _ in range(4):
                k = c.complete().tag
                assert np.array_equal(y[k], x[k] * 2 + 7)
        # Bad ones fail the whole gather they are in: sent by child 0 alone,
        # once the others are through.
        (tmp_path / str(c.index)).touch()
        if c.index:
            return
        wait_for(lambda: len(os.listdir(tmp_path)) == 4, timeout=60)
        # a strided entry: refused whole, nothing written
        y[3][...] = -1
        with pytest.raises(ferry.FerryError) as e:
            c.call(OP_AXPB, tensors=[x[2], y[3][::2]], args=(7,))
        assert e.value.errno == errno.EINVAL and (y[3] == -1).all()
        # more than the handler's buffer: refused whole
        big_x, big_y = c.empty(1 << 17, np.float32), c.empty(1 << 17, np.float32)
        with pytest.raises(ferry.FerryError) as e:
            c.call(OP_AXPB, tensors=[big_x, big_y], args=(7,))
        assert e.value.errno == errno.ENOSPC
    with ferry.Broker(children=4, helpers=1, child=loud(child), batch_handler=execute,
                      helper_depth=16, gpu=None) as b:
        assert b.wait(120) == 0


def test_an_exception_fails_its_batch_with_its_errno():
    def child(c):
        with pytest.raises(ferry.FerryError) as e:
            c.call(OP_RAISE)
        assert e.value.errno == errno.EBADMSG
        x, y = c.empty(4, np.float32), c.empty(4, np.float32)
        x[...] = 2
        c.call(OP_SCALE, tensors=[x, y])
        assert (y == 6).all()
    with ferry.Broker(children=1, helpers=1, child=loud(child), batch_handler=execute,
                      gpu=None) as b:
        assert b.wait(60) == 0


def test_defer_all_needs_a_gpu_helper():
    def execute_defer(reqs):
        try:
            reqs[0].helper.defer_all(reqs)
        except ferry.FerryError as e:
            return [-e.errno] * len(reqs)
        return [0] * len(reqs)

    def child(c):
        with pytest.raises(ferry.FerryError) as e:
            c.call(1)
        assert e.value.errno == errno.ENODEV
    with ferry.Broker(children=1, helpers=1, child=loud(child), batch_handler=execute_defer,
                      gpu=None) as b:
        assert b.wait(60) == 0


def test_one_of_handler_and_batch_handler():
    with pytest.raises(TypeError):
        ferry.Broker(children=0, handler=execute, batch_handler=execute)
    with pytest.raises(TypeError):
        ferry.Broker(children=0)
    with pytest.raises(ferry.FerryError) as e:	# more than a helper may hold
        ferry.Broker(children=0, batch_handler=execute, helper_batch=9, helper_depth=8)
    assert e.value.errno == errno.EINVAL
