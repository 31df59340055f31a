"""``pyramid deploy-calibration``: put a new calibration live without restarting tritonserver.

    pyramid deploy-calibration --repository model_repository --metrics localhost:8002 calib.json

The router watches its calibration file (``pyramid_triton.hot_reload``): a changed, valid file goes
live between requests (requests in flight finish under the artifact they started with), a bad one is
refused and the old one keeps serving. This command is the safe way to change that file:

1. The artifact is validated first, as the router will (format and version, feature names this code
   makes), against the router's config in the repository (``<repository>/<router>/config.pbtxt``):
   its committee and oracle must be the deployment's models. Nothing is written if it fails (exit 2).
2. The router's calibration file is replaced atomically (a temporary file renamed over it; the old
   one is kept as ``<file>.previous``). A calibration set (several tasks) gets the artifact's task
   replaced and keeps the others.
3. With ``--metrics HOST:PORT`` (Triton's metrics port), it waits until the router reports the new
   calibration live (``pyramid_calibration_info{id=...}``, the artifact's content hash) or refused
   (``pyramid_calibration_reloads_total{outcome="refused"}``: then the previous file is put back, so a
   restart serves what is serving now, and the exit code is 1).

It runs where the repository is (``make serve`` puts it in ``model_repository/`` for the replay profile,
``out/model_repository/<profile>`` otherwise). The Helm chart copies the calibration into each router
pod's repository when the pod starts: there, ``helm upgrade`` with the new calibration rolls the pods.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from pyramid_moa.artifact import (
    ArtifactError,
    load_artifact,
    load_calibrations,
    save_calibration_set,
    write_text_atomic,
)
from pyramid_triton.hot_reload import WATCH_DEFAULT_S, artifact_id

from .record import _csv


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="pyramid deploy-calibration",
        description="Put a new calibration live: the router's calibration file, replaced atomically and watched",
    )
    ap.add_argument("calibration", help="the calibration artifact (pyramid calibrate --out)")
    ap.add_argument("--repository", required=True, help="the model repository the server serves")
    ap.add_argument("--router", default="pyramid", help="the router model (default pyramid)")
    ap.add_argument(
        "--metrics", metavar="HOST:PORT", help="Triton's metrics endpoint: wait until the router reports it"
    )
    ap.add_argument("--timeout", type=float, help="seconds to wait for that (default: 5 x the watch interval + 10)")
    return ap


def router_params(config_path: Path) -> dict[str, str]:
    """A model config's string parameters (protobuf text format)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    cfg = mc.ModelConfig()
    try:
        text_format.Parse(config_path.read_text(encoding="utf-8"), cfg)
    except (OSError, text_format.ParseError) as exc:
        raise ArtifactError(f"{config_path}: cannot read the router's config ({exc})") from None
    return {k: v.string_value for k, v in cfg.parameters.items()}


def scrape(metrics: str, timeout_s: float = 5.0) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=timeout_s) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("pyramid_calibration_"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def reported(metrics: dict[str, float], router: str, cal_id: str) -> tuple[bool, float]:
    """(whether the router reports ``cal_id`` live, how many files it has refused)."""
    live = any(k.startswith("pyramid_calibration_info{") and f'id="{cal_id}"' in k and f'model="{router}"' in k and v == 1
               for k, v in metrics.items())  # fmt: skip
    refused = sum(v for k, v in metrics.items() if k.startswith("pyramid_calibration_reloads_total{")
                  and 'outcome="refused"' in k and f'model="{router}"' in k)  # fmt: skip
    return live, refused


def _fail(msg: str, code: int = 2) -> int:
    print(f"pyramid deploy-calibration: error: {msg}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    path = Path(a.calibration)
    config = Path(a.repository) / a.router / "config.pbtxt"
    try:
        art = load_artifact(path)
        p = router_params(config)
        if "agents" not in p or "oracle" not in p or not p.get("calibration"):
            raise ArtifactError(f"{config}: model {a.router!r} is not a pyramid router")
        models = [*_csv(p["agents"]), p["oracle"]]
        load_artifact(path, known_agents=models)
        if art.oracle != p["oracle"]:
            raise ArtifactError(f"{path}: fitted for oracle {art.oracle!r}; the router's oracle is {p['oracle']!r}")
        target = Path(p["calibration"])
        target = target if target.is_absolute() else config.parent / target
        current = load_calibrations(target, known_agents=models) if target.is_file() else {}
    except ArtifactError as exc:
        return _fail(f"{exc}; nothing was written")
    new_id = artifact_id(art.to_dict())
    old_ids = {t: artifact_id(c.to_dict()) for t, c in current.items()}
    metrics0 = None
    if a.metrics:
        try:
            metrics0 = scrape(a.metrics)
        except (OSError, urllib.error.URLError) as exc:
            return _fail(f"cannot read the metrics at {a.metrics}: {exc}; nothing was written")
    previous = target.with_name(target.name + ".previous")
    if target.is_file():
        shutil.copyfile(target, previous)
    if len(current) > 1 or (current and art.task not in current):  # a calibration set: replace one task
        save_calibration_set(target, [art if t == art.task else c for t, c in current.items()] + (
            [] if art.task in current else [art]))  # fmt: skip
    else:
        write_text_atomic(target, json.dumps(art.to_dict(), indent=1) + "\n")
    print(f"wrote {target} (calibration {new_id}, task {art.task}; was {old_ids.get(art.task, 'none')})")
    if metrics0 is None:
        print("the router loads it within its calibration_watch_s (pass --metrics to wait for it)")
        return 0
    interval = float(p.get("calibration_watch_s") or WATCH_DEFAULT_S)
    deadline = time.monotonic() + (a.timeout if a.timeout is not None else 5 * interval + 10)
    _, refused0 = reported(metrics0, a.router, new_id)
    while time.monotonic() < deadline:
        time.sleep(min(0.5, interval / 2))
        try:
            live, refused = reported(scrape(a.metrics), a.router, new_id)
        except (OSError, urllib.error.URLError):
            continue
        if live:
            print(f"live: {a.router} serves calibration {new_id} (labels {art.fitted_on.get('labels', 'gold')})")
            return 0
        if refused > refused0:
            if previous.is_file():
                shutil.copyfile(previous, target.with_name(target.name + ".refused"))
                write_text_atomic(target, previous.read_text(encoding="utf-8"))
            return _fail(
                f"{a.router} refused {path} (the server log says why); the previous calibration keeps serving and "
                f"{target} is back to it",
                1,
            )
    return _fail(f"{a.router} did not report calibration {new_id} within the timeout (is it serving {config}?)", 1)


if __name__ == "__main__":
    sys.exit(main())
