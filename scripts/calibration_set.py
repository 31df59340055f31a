"""Bundle calibration artifacts into one calibration set (one per answer task) for a deployment.

    python scripts/calibration_set.py OUT.json A.json [B.json ...]

Each input is validated as it loads; two artifacts of one task, or of different oracles, are refused
(``pyramid_moa.artifact.load_calibrations`` reads the result). ``pyramid calibrate --add`` builds a set
task by task from traces; this bundles artifacts made otherwise (e.g. the llamacpp profile's transfers).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from pyramid_moa.artifact import ArtifactError, load_artifact, load_calibrations, save_calibration_set


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2:
        print("usage: calibration_set.py OUT.json ARTIFACT.json [ARTIFACT.json ...]", file=sys.stderr)
        return 2
    out, inputs = Path(args[0]), [Path(p) for p in args[1:]]
    try:
        arts = [load_artifact(p) for p in inputs]
        with tempfile.TemporaryDirectory() as tmp:  # the set must load before it replaces anything
            probe = Path(tmp) / "set.json"
            save_calibration_set(probe, arts)
            load_calibrations(probe)
        save_calibration_set(out, arts)
    except ArtifactError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}: tasks {', '.join(a.task for a in arts)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
