# SPDX-License-Identifier: LGPL-2.1-or-later
"""Fork safety: the _forksafe.so hooks (see _forksafe.c), installed once."""
import ctypes
import os

_here = os.path.dirname(os.path.abspath(__file__))
_installed = False


def install():
    """Make forks that libferry makes from C safe for this interpreter."""
    global _installed
    if _installed:
        return
    so = ctypes.CDLL(os.path.join(_here, "_forksafe.so"))
    so.ferry_py_forksafe_install.restype = ctypes.c_int
    err = so.ferry_py_forksafe_install()
    if err:
        raise OSError(err, "ferry: pthread_atfork: " + os.strerror(err))
    _installed = True
