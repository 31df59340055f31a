"""The calibration artifact: one versioned JSON file the in-server router loads.

It holds everything a decision depends on (agents, oracle, feature set,
calibrator parameters, thresholds, cost model) and what it was fitted on, so
a deployment can be audited and an evaluation can refuse to score questions
the artifact has already seen.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .answers import get_task
from .calibration import calibrator_from_dict
from .cost import CostModel
from .features import ARBITER_FEATURES, make_feature_set
from .router import Router, Stage
from .traces import read_json

FORMAT = "pyramid-moa/calibration"
# 2: stages may carry "vote_weights" (a reliability-weighted vote) and schedules may be any depth.
# Version 1 files (plurality votes, one or two stages) mean the same under version 2 and still load.
VERSION = 2
READABLE_VERSIONS = (1, 2)


class ArtifactError(ValueError):
    """The artifact cannot be used: wrong format/version, unknown agents, drifted features."""


@dataclass
class CalibrationArtifact:
    committee: list[str]
    oracle: str
    feature_set: str
    calibrator: str
    stages: list[dict[str, Any]]
    target: dict[str, Any]
    cost_model: CostModel
    fitted_on: dict[str, Any]
    task: str = "gsm8k"
    fit_summary: dict[str, Any] = field(default_factory=dict)
    arbiter: dict[str, Any] | None = None  # {"feature_names", "calibrator"} or None
    # What the feature set needs besides the agents (semantic: the fitted "similarity_threshold").
    task_options: dict[str, Any] = field(default_factory=dict)
    # The fit found no schedule that meets the target for less than always-oracle: requests go to
    # the oracle alone by default (the stages stay, for a request that names its own threshold).
    oracle_only: bool = False

    def router(self) -> Router:
        stages = []
        for k, st in enumerate(self.stages):
            fs = make_feature_set(
                self.feature_set,
                st["agents"],
                numeric=get_task(self.task).numeric,
                weights=st.get("vote_weights"),
                **self.task_options,
            )
            if fs.names != st["feature_names"]:
                raise ArtifactError(
                    f"stage {k}: feature names in the artifact differ from feature set "
                    f"{self.feature_set!r} in this code version; re-run pyramid calibrate"
                )
            stages.append(Stage(list(st["agents"]), fs, calibrator_from_dict(st["calibrator"]), float(st["threshold"])))
        arbiter = None
        if self.arbiter is not None:
            if self.arbiter["feature_names"] != ARBITER_FEATURES:
                raise ArtifactError("arbiter feature names differ from this code version; re-run pyramid calibrate")
            arbiter = calibrator_from_dict(self.arbiter["calibrator"])
        return Router(stages, self.oracle, self.task, arbiter, oracle_only=self.oracle_only)

    def fitted_idx(self) -> set[int]:
        return set(self.fitted_on.get("idx", []))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "task": self.task,
            "task_options": self.task_options,
            "committee": self.committee,
            "oracle": self.oracle,
            "feature_set": self.feature_set,
            "calibrator": self.calibrator,
            "stages": self.stages,
            "arbiter": self.arbiter,
            "target": self.target,
            "cost_model": self.cost_model.to_dict(),
            "fitted_on": self.fitted_on,
            "fit_summary": self.fit_summary,
            **({"oracle_only": True} if self.oracle_only else {}),
        }

    def save(self, path: str | Path) -> None:
        """Write atomically (temp file + rename): a crash never leaves half a file."""
        write_json_atomic(path, self.to_dict())


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` all at once: readers see the old file or the new one, never a part
    (a temporary file beside it, renamed over it; removed if writing fails)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1) + "\n")


def load_artifact(path: str | Path, known_agents: Iterable[str] | None = None) -> CalibrationArtifact:
    """Load and validate; ``known_agents`` (e.g. a deployment's models) must cover all named models."""
    path = Path(path)
    d = read_json(path, ArtifactError, "calibration file")
    if isinstance(d, dict) and d.get("format") == SET_FORMAT:
        raise ArtifactError(f"{path}: a calibration set (one per task); name one task's calibration file instead")
    return artifact_from_dict(d, str(path), known_agents)


def artifact_from_dict(d: Any, where: str, known_agents: Iterable[str] | None = None) -> CalibrationArtifact:
    """A validated artifact from its JSON object; errors name ``where`` (a file, or a task in a set)."""
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise ArtifactError(f"{where}: not a {FORMAT} file")
    if d.get("version") not in READABLE_VERSIONS:
        raise ArtifactError(
            f"{where}: calibration version {d.get('version')!r} is not supported (this code reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))})"
        )
    try:
        art = CalibrationArtifact(
            committee=list(d["committee"]),
            oracle=d["oracle"],
            feature_set=d["feature_set"],
            calibrator=d["calibrator"],
            stages=list(d["stages"]),
            target=dict(d["target"]),
            cost_model=CostModel.from_dict(d["cost_model"]),
            fitted_on=dict(d["fitted_on"]),
            task=d.get("task", "gsm8k"),
            fit_summary=dict(d.get("fit_summary", {})),
            arbiter=d.get("arbiter"),
            task_options=dict(d.get("task_options") or {}),
            oracle_only=bool(d.get("oracle_only", False)),
        )
    except (KeyError, TypeError) as exc:
        raise ArtifactError(f"{where}: missing or malformed field {exc}") from None
    if known_agents is not None:
        known = set(known_agents)
        unknown = [a for a in [*art.committee, art.oracle] if a not in known]
        if unknown:
            raise ArtifactError(f"{where}: calibration names models this deployment does not have: {unknown}")
    try:
        art.router()
    except (KeyError, ValueError) as exc:
        if isinstance(exc, ArtifactError):
            raise
        raise ArtifactError(f"{where}: {exc}") from None
    return art


# A calibration set: one artifact per answer task, for a deployment that routes several tasks (the
# request names its task). A plain artifact file is a set of one.
SET_FORMAT = "pyramid-moa/calibration-set"
SET_VERSION = 1


def load_calibrations(path: str | Path, known_agents: Iterable[str] | None = None) -> dict[str, CalibrationArtifact]:
    """task -> its artifact, from a calibration set or a single artifact file. Every artifact must
    name the same oracle (one deployment), and no task may appear twice."""
    path = Path(path)
    d = read_json(path, ArtifactError, "calibration file")
    if not (isinstance(d, dict) and d.get("format") == SET_FORMAT):
        art = artifact_from_dict(d, str(path), known_agents)
        return {art.task: art}
    if d.get("version") != SET_VERSION:
        raise ArtifactError(f"{path}: calibration set version {d.get('version')!r} is not supported")
    items = d.get("calibrations")
    if not isinstance(items, list) or not items:
        raise ArtifactError(f"{path}: a calibration set needs a non-empty list 'calibrations'")
    out: dict[str, CalibrationArtifact] = {}
    for k, item in enumerate(items):
        art = artifact_from_dict(item, f"{path}: calibrations[{k}]", known_agents)
        if art.task in out:
            raise ArtifactError(f"{path}: task {art.task!r} is calibrated twice")
        out[art.task] = art
    oracles = sorted({a.oracle for a in out.values()})
    if len(oracles) > 1:
        raise ArtifactError(f"{path}: the calibrations name different oracles {oracles}; one deployment has one")
    return out


def calibration_set_text(arts: Iterable[CalibrationArtifact]) -> str:
    """The artifacts as one calibration set's JSON text; one per task."""
    arts = list(arts)
    tasks = [a.task for a in arts]
    if len(set(tasks)) != len(tasks):
        raise ArtifactError(f"a calibration set holds one calibration per task, got tasks {tasks}")
    d = {"format": SET_FORMAT, "version": SET_VERSION, "calibrations": [a.to_dict() for a in arts]}
    return json.dumps(d, indent=1) + "\n"


def save_calibration_set(path: str | Path, arts: Iterable[CalibrationArtifact]) -> None:
    """Write the artifacts as one calibration set (atomically); one per task."""
    write_text_atomic(path, calibration_set_text(arts))
