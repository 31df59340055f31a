"""Render a Triton model repository from a deployment spec (YAML).

The spec declares the agents, the oracle, the engine of each, the router's
settings and the calibration artifact; templates under ``deploy/templates/<kind>/``
(``config.pbtxt`` with ``${placeholders}`` and a thin ``model.py``) are filled with
``string.Template``, as upstream TensorRT-LLM's ``fill_template.py`` does, but
strictly: a spec key this renderer does not know, a placeholder left unfilled,
or a value given for a placeholder the template does not have is an error.

Spec (paths relative to the spec file)::

    profile: replay
    calibration: ../out/calibration/replay.json
    engine: {kind: replay, traces: ../data/gsm8k, seconds_per_token: 0, instance_count: 1}
    agents: [{name: A}, {name: B, seconds_per_token: 0.01}, ...]
    oracle: {name: O}
    router: {model_name: pyramid, instance_count: 1, default_max_tokens: 512, ...}
"""

from __future__ import annotations

import re
import shutil
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pyramid_moa.artifact import load_artifact

PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # python_backend/
PROJECT_ROOT = PACKAGE_ROOT.parent
TEMPLATES = PROJECT_ROOT / "deploy" / "templates"
MARKER = ".rendered-by-pyramid"
CALIBRATION_FILE = "calibration.json"
ENGINE_KINDS = ("replay",)

TOP_KEYS = {"profile", "calibration", "engine", "agents", "oracle", "router"}
ENGINE_KEYS = {"kind", "traces", "source", "seconds_per_token", "instance_count", "return_answer"}
MODEL_KEYS = {"name"} | ENGINE_KEYS
ROUTER_DEFAULTS: dict[str, Any] = {
    "model_name": "pyramid",
    "instance_count": 1,
    "default_max_tokens": 512,
    "max_tokens_cap": 8192,
    "max_input_chars": 20000,
    "agent_timeout_s": 60.0,
    "oracle_timeout_s": 120.0,
}
ENGINE_DEFAULTS: dict[str, Any] = {"seconds_per_token": 0.0, "instance_count": 1, "return_answer": True}
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


class SpecError(ValueError):
    """The deployment spec or a template is wrong; the message says where."""


@dataclass
class Rendered:
    out: Path
    router_model: str
    agents: list[str]
    oracle: str
    models: list[str] = field(default_factory=list)


def fill(template: str, values: dict[str, Any], where: str) -> str:
    """``string.Template`` fill; an unfilled placeholder or an unknown key is an error."""
    tpl = string.Template(template)
    wanted = set()
    for m in tpl.pattern.finditer(template):
        name = m.group("named") or m.group("braced")
        if name:
            wanted.add(name)
        elif m.group("invalid") is not None:
            raise SpecError(f"{where}: invalid placeholder at offset {m.start()}")
    missing = sorted(wanted - set(values))
    if missing:
        raise SpecError(f"{where}: no value for placeholder(s) {', '.join('${' + k + '}' for k in missing)}")
    unknown = sorted(set(values) - wanted)
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {', '.join(unknown)}: the template has no such placeholder")
    out = tpl.substitute({k: _fmt(v) for k, v in values.items()})
    if "${" in out:
        raise SpecError(f"{where}: a value left an unfilled '${{' in the output")
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    s = str(v)
    if '"' in s or "\n" in s:
        raise SpecError(f"value {s!r} may not contain quotes or newlines")
    return s


def _check_keys(obj: Any, allowed: set[str], where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise SpecError(f"{where}: expected a mapping, got {type(obj).__name__}")
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    return obj


def _model_entry(entry: Any, where: str) -> dict[str, Any]:
    if isinstance(entry, str):
        entry = {"name": entry}
    entry = _check_keys(entry, MODEL_KEYS, where)
    if "name" not in entry:
        raise SpecError(f"{where}: 'name' is required")
    if not _MODEL_NAME.match(str(entry["name"])):
        raise SpecError(f"{where}: {entry['name']!r} is not a valid Triton model name")
    return entry


def load_spec(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(f"{path}: deployment spec not found") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML ({exc})") from None
    spec = _check_keys(spec, TOP_KEYS, str(path))
    for key in ("agents", "oracle"):
        if key not in spec:
            raise SpecError(f"{path}: '{key}' is required")
    if not isinstance(spec["agents"], list) or not spec["agents"]:
        raise SpecError(f"{path}: 'agents' must be a non-empty list")
    _check_keys(spec.get("engine", {}), ENGINE_KEYS, f"{path}: engine")
    _check_keys(spec.get("router", {}), set(ROUTER_DEFAULTS), f"{path}: router")
    return spec


def render(
    spec_path: str | Path,
    out: str | Path,
    calibration: str | Path | None = None,
    templates: Path = TEMPLATES,
) -> Rendered:
    """Render ``spec_path`` into the directory ``out`` (replaced if it holds an earlier rendering)."""
    spec_path = Path(spec_path).resolve()
    base = spec_path.parent
    spec = load_spec(spec_path)

    def rel(p: Any) -> Path:
        p = Path(str(p))
        return p if p.is_absolute() else (base / p).resolve()

    engine_default = {**ENGINE_DEFAULTS, **spec.get("engine", {})}
    models = [_model_entry(e, f"{spec_path}: agents[{i}]") for i, e in enumerate(spec["agents"])]
    oracle = _model_entry(spec["oracle"], f"{spec_path}: oracle")
    names = [m["name"] for m in models] + [oracle["name"]]
    if len(set(names)) != len(names):
        raise SpecError(f"{spec_path}: agents and oracle must be distinct models, got {names}")
    router = {**ROUTER_DEFAULTS, **spec.get("router", {})}
    if router["model_name"] in names:
        raise SpecError(f"{spec_path}: router model_name {router['model_name']!r} clashes with an engine model")

    cal = calibration if calibration is not None else spec.get("calibration")
    if cal is None:
        raise SpecError(f"{spec_path}: no calibration artifact given (spec key 'calibration' or --calibration)")
    cal_path = Path(cal).resolve() if calibration is not None else rel(cal)
    if not cal_path.is_file():
        raise SpecError(
            f"calibration artifact {cal_path} not found; create it with 'pyramid calibrate --traces ... "
            f"--committee {','.join(names[:-1])} --oracle {names[-1]} --out {cal_path}'"
        )
    art = load_artifact(cal_path, known_agents=names)
    if art.oracle != oracle["name"]:
        raise SpecError(f"calibration {cal_path} has oracle {art.oracle!r}; the spec's oracle is {oracle['name']!r}")

    out = Path(out).resolve()
    if out.exists():
        if not (out / MARKER).is_file() and any(out.iterdir()):
            raise SpecError(f"{out} exists and was not rendered by this tool; refusing to overwrite it")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    python_path = str(PACKAGE_ROOT)
    limits = {"max_input_chars": router["max_input_chars"], "max_tokens_cap": router["max_tokens_cap"]}
    parsed_answer_models: list[str] = []
    decoupled_models: list[str] = []  # engines whose kind is a decoupled (streaming) model

    for entry in [*models, oracle]:
        e = {**engine_default, **{k: v for k, v in entry.items() if k != "name"}}
        kind = e.get("kind")
        if kind not in ENGINE_KINDS:
            raise SpecError(f"{spec_path}: model {entry['name']!r}: engine kind {kind!r} is not one of {ENGINE_KINDS}")
        if "traces" not in e:
            raise SpecError(f"{spec_path}: model {entry['name']!r}: replay engine needs 'traces'")
        values = {
            "model_name": entry["name"],
            "python_path": python_path,
            "source": e.get("source", entry["name"]),
            "traces": str(rel(e["traces"])),
            "seconds_per_token": float(e["seconds_per_token"]),
            "instance_count": int(e["instance_count"]),
            "return_answer": bool(e["return_answer"]),
            **limits,
        }
        if values["return_answer"]:
            parsed_answer_models.append(entry["name"])
        _write_model(templates / kind, out / entry["name"], values, f"model {entry['name']!r}")

    rdir = out / router["model_name"]
    _write_model(
        templates / "pyramid",
        rdir,
        {
            "model_name": router["model_name"],
            "python_path": python_path,
            "calibration": CALIBRATION_FILE,
            "agents": ",".join(names[:-1]),
            "oracle": oracle["name"],
            "parsed_answer_models": ",".join(parsed_answer_models),
            "decoupled_models": ",".join(decoupled_models),
            "instance_count": int(router["instance_count"]),
            "default_max_tokens": int(router["default_max_tokens"]),
            "agent_timeout_s": float(router["agent_timeout_s"]),
            "oracle_timeout_s": float(router["oracle_timeout_s"]),
            **limits,
        },
        f"router {router['model_name']!r}",
    )
    shutil.copyfile(cal_path, rdir / CALIBRATION_FILE)
    (out / MARKER).write_text(f"rendered from {spec_path}\n", encoding="utf-8")
    return Rendered(out, router["model_name"], names[:-1], oracle["name"], [*names, router["model_name"]])


def _write_model(template_dir: Path, dest: Path, values: dict[str, Any], what: str) -> None:
    config = template_dir / "config.pbtxt"
    if not config.is_file():
        raise SpecError(f"{what}: template {config} not found")
    (dest / "1").mkdir(parents=True)
    (dest / "config.pbtxt").write_text(fill(config.read_text(encoding="utf-8"), values, str(config)), encoding="utf-8")
    shutil.copyfile(template_dir / "model.py", dest / "1" / "model.py")


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    ap = argparse.ArgumentParser(description="Render a Triton model repository from a Pyramid MoA deployment spec")
    ap.add_argument("spec", help="deployment spec YAML, e.g. deploy/replay.yaml")
    ap.add_argument("--out", required=True, help="output model repository directory")
    ap.add_argument("--calibration", help="calibration artifact (overrides the spec's 'calibration')")
    args = ap.parse_args(argv)
    try:
        r = render(args.spec, args.out, args.calibration)
    except (SpecError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"rendered {len(r.models)} models into {r.out}: {', '.join(r.models)}")
    return 0
