# SPDX-License-Identifier: GPL-2.0
"""What the tests share: waiting for a condition, counting open files."""
import os
import time


def wait_for(cond, timeout=30.0, what="condition"):
    """Poll @cond until it is true (never a fixed sleep); its value."""
    end = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


def open_fds():
    return sorted(int(f) for f in os.listdir("/proc/self/fd"))


def shm_files():
    try:
        return sorted(os.listdir("/dev/shm"))
    except FileNotFoundError:
        return []
