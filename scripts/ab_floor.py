#!/usr/bin/env python3
"""A quick A/B of the router against the bare-BLS floor: one server, interleaved rounds at c=16.

The command line of python_backend/pyramid_bench/ab_floor.py (the code lives in the package, installed by make setup; usage there).
"""

import sys

from pyramid_bench.ab_floor import main

if __name__ == "__main__":
    sys.exit(main())
