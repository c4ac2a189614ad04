# SPDX-License-Identifier: GPL-2.0
"""asyncio over the child's pollable fd: 32 children each with many
coroutines in flight (more than the window), tensors in every request,
submit()/complete() mixed in, awaited pool blocks, timeouts."""
import asyncio
import errno
import os
import traceback

import numpy as np
import pytest

import ferry

OP_SCALE, OP_SLOW = 1, 2


def serve(req):
    if req.op == OP_SCALE:	# y = x * arg[0]
        x, y = req.tensors()
        y[...] = x * req.args[0]
        req.reply.arg[0] = req.args[0]
        return 0
    if req.op == OP_SLOW:	# a reply that takes a while (arg[0] ms of work)
        import time
        end = time.monotonic() + req.args[0] / 1000
        while time.monotonic() < end:
            pass
        return 0
    if req.op == 3:	# a pool tensor: y (region) = block * 2
        blk, y = req.tensors()
        y[...] = blk * 2
        return 0
    if req.op == 4:	# into a pool tensor: block = x (region)
        x, blk = req.tensors()
        blk[...] = x
        return 0
    if req.op == 5:	# an output only the handler can size: arg[0] int32s
        n = req.args[0]
        off = req.pool_alloc(n * 4)
        req.pool_tensor(off, (n,), np.int32)[...] = np.arange(n, dtype=np.int32) * 3
        req.reply.flags |= 1	# DESC_POOL: offset/len name the block
        req.reply.offset, req.reply.len = off, n * 4
        return 0
    if req.op == 6:	# trusts args[0] as a pool offset: never resolved
        req.helper.pool_tensor(req.args[0], (16,), np.uint8)[...] = 0
        return 0
    return -errno.EOPNOTSUPP


def loud(fn):
    def wrapped(c):
        try:
            return fn(c)
        except BaseException:
            os.write(2, traceback.format_exc().encode())
            raise
    return wrapped


def run(child, children, helpers=2, **kw):
    with ferry.Broker(children=children, helpers=helpers, child=loud(child), handler=serve,
                      gpu=None, **kw) as b:
        failed = b.wait(300)
        st = b.stats()
    assert failed == 0, "a child failed (its traceback is above)"
    return st


async def one(c, k):
    x = c.empty(64, np.float32)
    y = c.empty(64, np.float32)
    x[...] = np.arange(64) + k
    rep = await c.acall(OP_SCALE, tensors=[x, y], args=(k % 7 + 1,))
    assert rep.arg[0] == k % 7 + 1
    assert np.array_equal(y, (np.arange(64) + k) * (k % 7 + 1))
    return k


def test_32_children_with_more_coroutines_than_the_window():
    def child(c):
        async def main():
            for rnd in range(3):
                got = await asyncio.gather(*(one(c, rnd * 100 + k) for k in range(24)))
                assert got == [rnd * 100 + k for k in range(24)]
            assert c.outstanding == 0
        asyncio.run(main())
    st = run(child, children=32, window=8, region_size=1 << 20)
    assert st["replies"] == 32 * 3 * 24


def test_acall_errors_and_submit_complete_mixed_in():
    def child(c):
        async def main():
            with pytest.raises(ferry.FerryError) as e:
                await c.acall(99)
            assert e.value.errno == errno.EOPNOTSUPP
            rep = await c.acall(99, check=False)
            assert rep.status == -errno.EOPNOTSUPP
            # submit()ted requests' replies are complete()'s, whoever takes them first
            tags = [c.submit(OP_SLOW, args=(1,)) for _ in range(3)]
            got = await asyncio.gather(*(one(c, k) for k in range(10)))
            assert got == list(range(10))
            seen = sorted(c.complete(10).tag for _ in tags)
            assert seen == sorted(tags)
            with pytest.raises(ferry.FerryError) as e:
                c.complete(0)
            assert e.value.errno == errno.ENOENT
            # a timeout: the coroutine gives up, the request ends at its helper
            with pytest.raises(ferry.FerryError) as e:
                await c.acall(OP_SLOW, args=(300,), timeout=0.01)
            assert e.value.errno == errno.ETIMEDOUT
            assert (await one(c, 5)) == 5
        asyncio.run(main())
    run(child, children=2)


def test_the_loop_keeps_running_while_requests_are_out():
    def child(c):
        async def main():
            ticks = 0
            fut = asyncio.ensure_future(c.acall(OP_SLOW, args=(100,)))
            while not fut.done():
                ticks += 1
                await asyncio.sleep(0)
            assert (await fut).status == 0
            assert ticks > 10, ticks	# the loop ran other work meanwhile
        asyncio.run(main())
    run(child, children=1, helpers=1)


def test_pool_blocks_can_be_awaited():
    n = 192 * 1024	# float32s: 768 KiB blocks, a 4 MiB pool, 8 users at once

    def child(c):
        async def main():
            async def user(k):
                b = await c.apool_alloc(n * 4, timeout=60)
                try:
                    src = c.empty(n, np.float32)
                    src[...] = k + 10 * c.index
                    await c.acall(4, tensors=[src, b.tensor((n,), np.float32)])
                    y = c.empty(n, np.float32)
                    await c.acall(3, tensors=[b.tensor((n,), np.float32), y])
                    assert (y == 2 * (k + 10 * c.index)).all()
                finally:
                    await b.afree()
            await asyncio.gather(*(user(k) for k in range(4)))
        asyncio.run(main())
    st = run(child, children=2, helpers=2, pool_size=4 << 20, region_size=8 << 20, window=16)
    assert st["pool_allocs"] == st["pool_frees"] == 8


def test_pool_put_get_round_trip():
    def child(c):
        x = np.arange(10000, dtype=np.int64) * 7
        blk = c.pool_put(x)	# from ordinary memory: staged by libferry
        back = c.pool_get(blk)
        assert back.dtype == np.int64 and np.array_equal(back, x)
        y = c.empty(10000, np.int64)
        c.call(3, tensors=[blk.tensor(), y])
        assert np.array_equal(y, x * 2)
        blk.free()
        with pytest.raises(ferry.FerryError):
            c.pool_alloc(1 << 30)
    run(child, children=1, helpers=1, pool_size=4 << 20)


def test_outputs_sized_by_the_handler_are_the_childs_blocks():
    def child(c):
        for n in (1, 1000, 50000, 7):
            rep = c.call(5, args=(n,))
            blk = c.reply_block(rep, (n,), np.int32)
            assert blk.nbytes == n * 4
            assert np.array_equal(c.pool_get(blk), np.arange(n, dtype=np.int32) * 3)
            blk.free()
        with pytest.raises(ValueError):
            c.reply_block(c.call(3, tensors=[]), (1,), np.int32)
        with pytest.raises(ferry.FerryError):	# larger than the helper's arena
            c.call(5, args=(1 << 22,))
    st = run(child, children=2, helpers=1, pool_size=4 << 20, helper_pool_bytes=1 << 20)
    assert st["pool_allocs"] >= st["pool_frees"]


def test_a_pool_offset_in_args_is_not_resolved():
    def child(c):
        blk = c.pool_put(np.full(16, 9, dtype=np.uint8))
        with pytest.raises(ferry.FerryError) as e:	# even the child's own block
            c.call(6, args=(blk.offset,))
        assert e.value.errno == errno.EFAULT
        assert (c.pool_get(blk) == 9).all()
        blk.free()
    run(child, children=1, helpers=1, pool_size=4 << 20)


def test_no_pool_is_enoent():
    def child(c):
        with pytest.raises(ferry.FerryError) as e:
            c.pool_alloc(4096)
        assert e.value.errno == errno.ENOENT
    run(child, children=1, helpers=1)
