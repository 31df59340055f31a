#!/usr/bin/env python3
"""Render the Helm chart (deploy/helm/pyramid-moa) and validate every manifest against Kubernetes' schemas.

The command line of python_backend/pyramid_ops/helm_check.py (the code lives in the package, installed by make setup; usage there).
"""

import sys

from pyramid_ops.helm_check import main

if __name__ == "__main__":
    sys.exit(main())
