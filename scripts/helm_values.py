#!/usr/bin/env python3
"""Values for the Helm chart (deploy/helm/pyramid-moa) from one deployment spec.

The command line of python_backend/pyramid_ops/helm_values.py (the code lives in the package, installed by make setup; usage there).
"""

import sys

from pyramid_ops.helm_values import main

if __name__ == "__main__":
    sys.exit(main())
