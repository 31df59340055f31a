"""``pyramid deploy-calibration``: put a new calibration live without restarting tritonserver.

    pyramid deploy-calibration --repository model_repository --metrics localhost:8002 calib.json

The router watches its calibration file (``pyramid_triton.hot_reload``): a changed, valid file goes
live between requests (requests in flight finish under the artifact they started with), a bad one is
refused and the old one keeps serving. This command is the safe way to change that file:

1. The artifact is validated first, as the router will (format and version, feature names this code
   makes), against the router's config in the repository (``<repository>/<router>/config.pbtxt``):
   its committee and oracle must be the deployment's models. Nothing is written if it fails (exit 2).
2. The result is checked as the router will check it at load, without the server: the calibration
   set it makes (a set gets the artifact's task replaced and keeps the others) against the router's
   ``task``, ``task_fallback`` and ``embedder`` parameters, so a set that would need ``router.task``
   in the spec is refused here, naming the spec key, instead of by the server.
3. It is written as ``deployed-calibration.json`` beside the rendered ``calibration.json``
   (``hot_reload.DEPLOYED_FILE``), atomically; the deployed one before it becomes
   ``deployed-calibration.json.1`` (history: the last ``hot_reload.HISTORY_KEEP``). The rendered file
   is never touched, so nothing tracked changes, and ``make render`` / ``make serve`` keep the deployed
   one (``make serve RESET_CALIBRATION=1`` drops it). ``--rollback`` puts the newest history entry
   back (after the first deploy: the spec's); ``--reset`` removes the deployed one (the spec's
   calibration serves again).
4. With ``--metrics HOST:PORT`` (Triton's metrics port), it waits until the router reports the new
   calibration live (``pyramid_calibration_info{id=...}``, the artifact's content hash) or refused
   (``pyramid_calibration_reloads_total{outcome="refused"}``: then what was live before is put back,
   so a restart serves what is serving now, and the exit code is 1).

It runs where the repository is (``make serve`` puts it in ``model_repository/`` for the replay profile,
``out/model_repository/<profile>`` otherwise). The Helm chart copies the calibration into each router
pod's repository when the pod starts: there the chart's calibration is the live one, and ``helm
upgrade`` with a new calibration rolls the pods; a ``deploy-calibration`` into a pod lasts until the
pod restarts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from pyramid_client.wire import config_parameters
from pyramid_moa.artifact import (
    ArtifactError,
    calibration_set_text,
    load_artifact,
    load_calibrations,
    write_text_atomic,
)
from pyramid_moa.cli import DefaultsFormatter
from pyramid_triton.hot_reload import (
    HISTORY_KEEP,
    WATCH_DEFAULT_S,
    artifact_id,
    deployed_path,
    history,
    live_path,
)

from .record import _csv


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        formatter_class=DefaultsFormatter,
        prog="pyramid deploy-calibration",
        description="Put a new calibration live: the router's calibration file, replaced atomically and watched",
    )
    ap.add_argument("calibration", nargs="?", help="the calibration artifact (pyramid calibrate --out)")
    ap.add_argument("--rollback", action="store_true", help="put the previous deployed calibration back")
    ap.add_argument("--reset", action="store_true", help="remove the deployed calibration: the spec's serves again")
    ap.add_argument("--repository", required=True, help="the model repository the server serves")
    ap.add_argument("--router", default="pyramid", help="the router model (default pyramid)")
    ap.add_argument(
        "--metrics", metavar="HOST:PORT", help="Triton's metrics endpoint: wait until the router reports it"
    )
    ap.add_argument("--timeout", type=float, help="seconds to wait for that (default: 5 x the watch interval + 10)")
    return ap


def router_params(config_path: Path) -> dict[str, str]:
    """A model config's string parameters (protobuf text format; ``wire.config_parameters``)."""
    try:
        return config_parameters(config_path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ArtifactError(f"{config_path}: cannot read the router's config ({exc})") from None


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


def _check_like_the_router(cals: dict, p: dict[str, str], where: Path) -> None:
    """The calibration set the router would load, checked as it checks it (``tasks.TaskRouters``)."""
    from pyramid_triton.protocol import ROUTER_PARAMS
    from pyramid_triton.tasks import TaskRouters

    try:
        TaskRouters(cals, p.get("task") or None, p.get("task_fallback") or ROUTER_PARAMS["task_fallback"],
                    p.get("embedder", ""))  # fmt: skip
    except ValueError as exc:
        raise ArtifactError(
            f"the router {where} would refuse it: {exc} (set it in the deployment spec and render again)"
        ) from None


def _rotate(deployed: Path) -> None:
    """The live deployed file becomes history entry 1 (1 -> 2 ..., the oldest beyond HISTORY_KEEP dropped)."""
    if not deployed.is_file():
        return
    entries = [deployed.with_name(f"{deployed.name}.{k}") for k in range(1, HISTORY_KEEP + 1)]
    entries[-1].unlink(missing_ok=True)
    for older, newer in zip(reversed(entries[1:]), reversed(entries[:-1])):
        if newer.is_file():
            os.replace(newer, older)
    shutil.copyfile(deployed, entries[0])


def _unrotate(deployed: Path, had_deployed: bool) -> None:
    """Undo ``_rotate`` and the write after it: what was live before serves again."""
    entries = [deployed.with_name(f"{deployed.name}.{k}") for k in range(1, HISTORY_KEEP + 1)]
    if not had_deployed:
        deployed.unlink(missing_ok=True)  # the rendered calibration serves again
        return
    os.replace(entries[0], deployed)
    for newer, older in zip(entries[:-1], entries[1:]):
        if older.is_file():
            os.replace(older, newer)


def _router_config(repository: str, router: str) -> tuple[Path, dict[str, str], list[str], Path]:
    """(config path, its parameters, the deployment's models, the rendered calibration file)."""
    config = Path(repository) / router / "config.pbtxt"
    p = router_params(config)
    if "agents" not in p or "oracle" not in p or not p.get("calibration"):
        raise ArtifactError(f"{config}: model {router!r} is not a pyramid router")
    rendered = Path(p["calibration"])
    rendered = rendered if rendered.is_absolute() else config.parent / rendered
    return config, p, [*_csv(p["agents"]), p["oracle"]], rendered


def _new_set(a: argparse.Namespace, p: dict[str, str], models: list[str], rendered: Path) -> tuple[dict, str]:
    """(the calibration set the router would serve after this command, what to write), validated."""
    deployed = deployed_path(rendered)
    if a.reset:
        return load_calibrations(rendered, known_agents=models), ""
    if a.rollback:
        past = history(rendered)
        if past:
            return load_calibrations(past[0], known_agents=models), past[0].read_text(encoding="utf-8")
        if deployed.is_file():  # the first deployed one: before it, the spec's served
            return load_calibrations(rendered, known_agents=models), ""
        raise ArtifactError(f"nothing to roll back to: no calibration was deployed into {deployed.parent}")
    path = Path(a.calibration)
    art = load_artifact(path)
    load_artifact(path, known_agents=models)
    if art.oracle != p["oracle"]:
        raise ArtifactError(f"{path}: fitted for oracle {art.oracle!r}; the router's oracle is {p['oracle']!r}")
    live = live_path(rendered)
    current = load_calibrations(live, known_agents=models) if live.is_file() else {}
    if len(current) > 1 or (current and art.task not in current):  # a calibration set: replace one task
        cals = {**current, art.task: art}
        return cals, calibration_set_text(cals.values())
    return {art.task: art}, json.dumps(art.to_dict(), indent=1) + "\n"


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    if sum(bool(x) for x in (a.calibration, a.rollback, a.reset)) != 1:
        return _fail("give one of: a calibration file, --rollback, --reset")
    try:
        config, p, models, rendered = _router_config(a.repository, a.router)
        cals, text = _new_set(a, p, models, rendered)
        _check_like_the_router(cals, p, config)
    except ArtifactError as exc:
        return _fail(f"{exc}; nothing was written")
    deployed = deployed_path(rendered)
    live_before = live_path(rendered)
    old_ids = {t: artifact_id(c.to_dict()) for t, c in
               (load_calibrations(live_before, known_agents=models) if live_before.is_file() else {}).items()}  # fmt: skip
    task = p.get("task") or next(iter(cals))
    new_id = artifact_id(cals[task].to_dict()) if task in cals else artifact_id(next(iter(cals.values())).to_dict())
    metrics0 = None
    if a.metrics:
        try:
            metrics0 = scrape(a.metrics)
        except (OSError, urllib.error.URLError) as exc:
            return _fail(f"cannot read the metrics at {a.metrics}: {exc}; nothing was written")
    had_deployed = deployed.is_file()
    if a.rollback:  # history entry 1 becomes live (the rest move up one), or the spec's when there is none
        _unrotate(deployed, bool(history(rendered)))
    elif a.reset:
        _rotate(deployed)
        deployed.unlink(missing_ok=True)
    else:
        _rotate(deployed)
        write_text_atomic(deployed, text)
    what = "the spec's calibration" if a.reset else f"calibration {new_id}"
    print(f"{'removed ' + str(deployed) if a.reset else 'wrote ' + str(deployed)}: {what} serves "
          f"(was {old_ids.get(task, 'none')}; earlier ones: {deployed.name}.1 .. .{HISTORY_KEEP})")  # fmt: skip
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
            labels = cals[task].fitted_on.get("labels", "gold") if task in cals else "?"
            print(f"live: {a.router} serves calibration {new_id} (labels {labels})")
            return 0
        if refused > refused0:
            if deployed.is_file():
                shutil.copyfile(deployed, deployed.with_name(deployed.name + ".refused"))
            if not (a.rollback or a.reset):
                _unrotate(deployed, had_deployed)
            return _fail(
                f"{a.router} refused it (its log in the server's log names the cause); what served before keeps "
                f"serving and {deployed.name} is back to it",
                1,
            )
    return _fail(f"{a.router} did not report calibration {new_id} within the timeout (is it serving {config}?)", 1)


if __name__ == "__main__":
    sys.exit(main())
