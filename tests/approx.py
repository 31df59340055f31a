"""Tolerant comparison of nested JSON-like values (artifacts, configs).

Fitted floats differ in their last digits between machines (BLAS build, CPU), so a test that holds
a refitted artifact against a shipped one compares numbers with a tolerance and everything else
exactly. The first difference is reported with its path, e.g. ``stages[0].calibrator.coef[3]``.
"""

from __future__ import annotations

import math
from typing import Any


def tree_mismatch(a: Any, b: Any, *, rel: float = 1e-7, abs_: float = 1e-9, path: str = "") -> str | None:
    """The path and values of the first difference between ``a`` and ``b``, or None if they match:
    numbers within ``rel``/``abs_`` (bools exactly), dicts with the same keys, lists of one length."""
    where = path or "<root>"
    if isinstance(a, bool) or isinstance(b, bool):
        return None if a is b else f"{where}: {a!r} != {b!r}"
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return None if math.isclose(a, b, rel_tol=rel, abs_tol=abs_) else f"{where}: {a!r} != {b!r}"
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return f"{where}: keys differ: {sorted(set(a) ^ set(b))}"
        for k in a:
            found = tree_mismatch(a[k], b[k], rel=rel, abs_=abs_, path=f"{path}.{k}" if path else str(k))
            if found:
                return found
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return f"{where}: lengths {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            found = tree_mismatch(x, y, rel=rel, abs_=abs_, path=f"{path}[{i}]")
            if found:
                return found
        return None
    return None if a == b else f"{where}: {a!r} != {b!r}"


def assert_tree_close(a: Any, b: Any, *, rel: float = 1e-7, abs_: float = 1e-9) -> None:
    found = tree_mismatch(a, b, rel=rel, abs_=abs_)
    assert found is None, found
