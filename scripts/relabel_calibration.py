#!/usr/bin/env python3
"""Move a calibration artifact to other models of the same shape: rename its agents and oracle.

The command line of python_backend/pyramid_moa/relabel.py (the code lives in the package, installed by make setup; usage there).
"""

import sys

from pyramid_moa.relabel import main

if __name__ == "__main__":
    sys.exit(main())
