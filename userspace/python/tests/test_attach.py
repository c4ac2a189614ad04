# SPDX-License-Identifier: GPL-2.0
"""Services the broker did not fork: ferry.attach() from another Python
process (started with exec, as a real service is), the same calls as a
child's, and the broker going away under one (EPIPE as an exception)."""
import errno
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import ferry
from util import open_fds, wait_for


def serve(req):
    if req.op == 1:
        x, y = req.tensors()
        y[...] = x[::-1]
        return 0
    if req.op == 2:	# never answers by itself: waits for the file arg names
        path = bytes(req.data()).decode()
        wait_for(lambda: os.path.exists(path), 120, path)
        return 0
    return -errno.EOPNOTSUPP


def service(code, sock, *args, **kw):
    """Run @code in a new python3 that imports the same ferry package."""
    env = dict(os.environ)
    pkg = os.path.dirname(os.path.dirname(ferry.__file__))
    env["PYTHONPATH"] = pkg + os.pathsep + env.get("PYTHONPATH", "")
    prog = "import sys, errno, asyncio, numpy as np, ferry\nsock = sys.argv[1]\n" + \
        textwrap.dedent(code)
    return subprocess.Popen([sys.executable, "-c", prog, str(sock), *map(str, args)], env=env,
                            **kw)


def test_attached_service_calls_sync_and_async(tmp_path):
    sock = tmp_path / "ferry.sock"
    code = """
    with ferry.attach(sock) as c:
        assert c.attached
        for n in (1, 100, 4096):
            x = c.empty(n, np.int32)
            y = c.empty(n, np.int32)
            x[...] = np.arange(n)
            c.call(1, tensors=[x, y])
            assert np.array_equal(y, np.arange(n)[::-1])
        async def main():
            async def one(k):
                x = c.asarray(np.full(50, k, np.float64))
                y = c.empty(50, np.float64)
                await c.acall(1, tensors=[x, y])
                assert (y == k).all()
            await asyncio.gather(*(one(k) for k in range(40)))
        asyncio.run(main())
    print("service done")
    """
    with ferry.Broker(children=0, helpers=2, handler=serve, gpu=None, attach_path=sock,
                      max_attached=2) as b:
        procs = [service(code, sock, stdout=subprocess.PIPE) for _ in range(2)]
        for p in procs:
            out, _ = p.communicate(timeout=120)
            assert p.returncode == 0 and b"service done" in out
        st = b.stats()
        assert st["attached"] == 2
        wait_for(lambda: b.stats()["child_exits"] == 2, what="both services gone")


def test_service_sees_its_broker_go_as_epipe(tmp_path):
    sock = tmp_path / "ferry.sock"
    never = tmp_path / "never"
    code = """
    c = ferry.attach(sock)
    path = c.asarray(np.frombuffer(sys.argv[2].encode(), np.uint8))
    async def main():
        t = asyncio.ensure_future(c.acall(2, data=path))
        await asyncio.sleep(0)
        print("waiting", flush=True)
        try:
            await t
        except ferry.FerryError as e:
            assert e.errno == errno.EPIPE, e
            print("epipe", flush=True)
            return
        raise AssertionError("a reply came")
    asyncio.run(main())
    try:
        c.call(3)
    except ferry.FerryError as e:
        assert e.errno == errno.EPIPE, e
        print("epipe again", flush=True)
    c.close()
    """
    b = ferry.Broker(children=0, helpers=1, handler=serve, gpu=None, attach_path=sock)
    try:
        p = service(code, sock, never, stdout=subprocess.PIPE)
        assert p.stdout.readline() == b"waiting\n"
        wait_for(lambda: b.stats()["in_flight"] == 1, what="the service's request")
    finally:
        b.stop()
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 0, out
    assert out == b"epipe\nepipe again\n"


def test_attach_errors():
    with pytest.raises(ferry.FerryError) as e:
        ferry.attach("/tmp/ferry-no-such-socket-here")
    assert e.value.errno == errno.ENOENT
    with pytest.raises(ferry.FerryError) as e:
        ferry.attach("x" * 200)
    assert e.value.errno == errno.ENAMETOOLONG


def test_attach_in_process_and_detach_leaves_nothing_open(tmp_path):
    sock = tmp_path / "ferry.sock"
    # A service in this very process (a broker is here too): attach, detach.
    with ferry.Broker(children=0, helpers=1, handler=serve, gpu=None, attach_path=sock) as b:
        fds = open_fds()
        for k in range(3):
            with ferry.attach(sock) as c:
                x = c.empty(10, np.uint8)
                y = c.empty(10, np.uint8)
                x[...] = np.arange(10)
                c.call(1, tensors=[x, y])
                assert list(y) == list(range(9, -1, -1))
                del x, y
            wait_for(lambda: b.stats()["child_exits"] == k + 1, what="the detach seen")
        with pytest.raises(ferry.FerryError) as e:
            c.call(1)
        assert e.value.errno == errno.EBADF
        left = {f: os.readlink(f"/proc/self/fd/{f}") for f in set(open_fds()) - set(fds)}
        assert not left
