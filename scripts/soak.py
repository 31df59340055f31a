#!/usr/bin/env python3
"""Soak: many concurrent clients against a real tritonserver for a bounded time; nothing lost.

The command line of python_backend/pyramid_bench/soak.py (the code lives in the package, installed by make setup; usage there).
"""

import sys

from pyramid_bench.soak import main

if __name__ == "__main__":
    sys.exit(main())
