#!/usr/bin/env python3
"""Liveness probe for a tritonserver pod (the Helm chart's ``livenessProbe``): exit 1 when an engine's
Python-backend stub process is dead, which tritonserver 2.51 does not notice (the model stays ready).

Standard library only, so the image's plain ``python3`` runs it. The admin key comes from
``$PYRAMID_ADMIN_KEY`` (the chart's Secret) or ``$PYRAMID_ADMIN_KEY_FILE``. See supervisor.check.

usage: python3 scripts/liveness.py [--http 127.0.0.1:8000]
"""

import sys

from pyramid_ops.supervisor import main

if __name__ == "__main__":
    sys.exit(main())
