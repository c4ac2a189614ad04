# SPDX-License-Identifier: GPL-2.0
"""Tests of the Python package: build/python (make python) comes first on the path."""
import os
import sys

_build = os.path.join(os.path.dirname(__file__), "..", "..", "..", "build", "python")
if os.path.isdir(_build) and os.path.abspath(_build) not in map(os.path.abspath, sys.path):
    sys.path.insert(0, os.path.abspath(_build))
