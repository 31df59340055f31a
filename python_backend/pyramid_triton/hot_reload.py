"""Hot reload of a calibration: a new artifact goes live without restarting tritonserver.

``pyramid deploy-calibration`` (``pyramid_cli.deploy_calibration``) validates the artifact, reads the
router model's config, and loads the router again through Triton's repository API with a config
override whose ``calibration_json`` parameter holds the artifact itself (and ``cost_facts`` the
artifact's cost facts). Triton loads a new instance of the router from the same model directory with
that config and, only once it has loaded, swaps it in without losing availability; requests in
flight finish on the instance (and so the artifact) they started with. If the new instance fails to
load (a bad artifact: wrong format, models this deployment lacks, features this code does not make),
Triton keeps the old one serving and the load request fails with the router's message.

The override lives in Triton's memory: a plain ``load`` of the router (the supervisor's, after its
stub died) keeps it, a restart of tritonserver goes back to the repository's ``calibration`` file.
``--persist`` also writes the artifact there, after the load succeeded.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pyramid_moa.artifact import ArtifactError, CalibrationArtifact, load_artifact

INLINE_PARAM = "calibration_json"  # the artifact itself, set by a config override
COST_FACTS_PARAM = "cost_facts"


def load_text(text: str, known_agents: Iterable[str] | None = None, where: str = INLINE_PARAM) -> CalibrationArtifact:
    """An artifact from its JSON text, validated as ``load_artifact`` validates a file; errors name ``where``."""
    with tempfile.TemporaryDirectory(prefix="pyramid-calibration-") as d:
        path = Path(d) / "calibration.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        try:
            return load_artifact(path, known_agents)
        except ArtifactError as exc:
            raise ArtifactError(str(exc).replace(str(path), where)) from None


def router_artifact(params: Any, known_agents: Iterable[str]) -> tuple[CalibrationArtifact, str]:
    """(artifact, where it came from) of a router model: ``calibration_json`` if a config override set
    it, else the ``calibration`` file."""
    inline = params.get_str(INLINE_PARAM, "")
    if inline:
        return load_text(inline, known_agents), f"parameter {INLINE_PARAM}"
    path = params.get_path("calibration", None)
    if path is None:
        raise ValueError(f"model {params.name!r}: parameter 'calibration' is required")
    return load_artifact(path, known_agents=known_agents), str(path)


def artifact_id(text_or_dict: str | dict[str, Any]) -> str:
    """The artifact's version as the router reports it: a hash of its content (key order aside)."""
    d = json.loads(text_or_dict) if isinstance(text_or_dict, str) else text_or_dict
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def override(config: dict[str, Any], art: CalibrationArtifact) -> dict[str, Any]:
    """The router's model config (Triton's JSON form) with the artifact as ``calibration_json``."""
    from .render import cost_facts_json

    out = json.loads(json.dumps(config))
    params = out.setdefault("parameters", {})
    params[INLINE_PARAM] = {"string_value": json.dumps(art.to_dict(), separators=(",", ":"))}
    params[COST_FACTS_PARAM] = {"string_value": cost_facts_json(art)}
    return out
