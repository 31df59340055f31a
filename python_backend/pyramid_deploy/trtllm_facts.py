"""What NVIDIA's ``tensorrtllm`` Triton backend accepts, per TensorRT-LLM version, and checks of rendered
configs against it.

The facts live in ``deploy/trtllm_backend_facts.json``: data, not code, each with the upstream
repository, tag or commit, file and line it was read from (docs/GPU.md, "What was verified").
Per backend version they say

- which ``tensorrt_llm`` model parameters the backend reads **without a fallback** (a missing key
  fails the model load: "Cannot find parameter with name: ..."), and what values they take;
- which parameters it reads inside try/catch, with the type it parses them as (a value that does
  not parse is silently replaced by the backend's default: the check refuses it instead);
- the request inputs it reads, with the data type it reinterprets each buffer as (the backend does
  not check a tensor's Triton type: a wrong one is read as garbage), and the outputs it produces;
- the version-dependent request names (``seed`` / ``min_tokens`` vs ``random_seed`` / ``min_length``).

``check_engine_config``, ``check_ensemble_config`` and ``check_python_config`` hold a rendered
``config.pbtxt`` (parsed with ``parse_pbtxt``, a small protobuf-text reader that needs no
``tritonclient``) against them; the renderer runs them before it writes anything
(``render.render``). ``check_against_container_template`` compares a rendered ``tensorrt_llm``
config with the template of the TensorRT-LLM container it runs in
(``/app/all_models/inflight_batcher_llm/tensorrt_llm/config.pbtxt``): the facts are pinned to
upstream tags; the container's own template is what its backend was shipped with.

Nothing here imports TensorRT-LLM; the installed version is read from package metadata.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from pyramid_client.wire import pbtxt_unquote

FACTS_FILE = Path(__file__).resolve().parents[2] / "deploy" / "trtllm_backend_facts.json"
# NVIDIA's Triton TRT-LLM containers (25.05 and later) carry the upstream model templates here.
CONTAINER_TEMPLATE = Path("/app/all_models/inflight_batcher_llm/tensorrt_llm/config.pbtxt")

# --- protobuf text format ----------------------------------------------------------------------

_TOKEN = re.compile(
    r'\s+|#[^\n]*|"(?:\\.|[^"\\])*"|\$\{[^}\s]*\}|[{}\[\]:,;<>]|[^\s{}\[\]:,;<>"#]+',
)


class PbtxtError(ValueError):
    """Not protobuf text this reader understands."""


def _tokens(text: str) -> list[str]:
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise PbtxtError(f"unexpected character {text[pos]!r} at offset {pos}")
        tok = m.group(0)
        pos = m.end()
        if tok.isspace() or tok.startswith("#"):
            continue
        out.append(tok)
    return out


def _unquote(tok: str) -> str:
    return pbtxt_unquote(tok[1:-1])


def parse_pbtxt(text: str) -> dict[str, list[Any]]:
    """A protobuf-text message as ``{field: [values]}`` (every field a list; nested messages are
    dicts of the same shape; scalars are strings, quoted ones unescaped). Enough for Triton model
    configs, ``${placeholders}`` included; not a validator (``tritonclient``'s protobuf is)."""
    toks = _tokens(text)
    msg, i = _message(toks, 0, None)
    return msg


def _message(toks: list[str], i: int, end: str | None) -> tuple[dict[str, list[Any]], int]:
    msg: dict[str, list[Any]] = {}
    while i < len(toks):
        tok = toks[i]
        if tok == end:
            return msg, i + 1
        if tok in (",", ";"):
            i += 1
            continue
        if tok in "{}[]<>:" or tok.startswith('"'):
            raise PbtxtError(f"expected a field name, got {tok!r}")
        name, i = tok, i + 1
        if i < len(toks) and toks[i] == ":":
            i += 1
        if i >= len(toks):
            raise PbtxtError(f"field {name!r} has no value")
        values, i = _value(toks, i)
        msg.setdefault(name, []).extend(values)
    if end is not None:
        raise PbtxtError(f"missing {end!r}")
    return msg, i


def _value(toks: list[str], i: int) -> tuple[list[Any], int]:
    tok = toks[i]
    if tok in ("{", "<"):
        m, i = _message(toks, i + 1, "}" if tok == "{" else ">")
        return [m], i
    if tok == "[":
        out: list[Any] = []
        i += 1
        while i < len(toks) and toks[i] != "]":
            if toks[i] == ",":
                i += 1
                continue
            v, i = _value(toks, i)
            out.extend(v)
        if i >= len(toks):
            raise PbtxtError("missing ']'")
        return out, i + 1
    if tok in "}]>:,;":
        raise PbtxtError(f"expected a value, got {tok!r}")
    return [_unquote(tok) if tok.startswith('"') else tok], i + 1


def first(msg: dict[str, list[Any]], key: str, default: Any = None) -> Any:
    v = msg.get(key)
    return v[0] if v else default


def parameters(cfg: dict[str, list[Any]]) -> dict[str, str]:
    """``parameters { key: "k" value: { string_value: "v" } }`` as ``{k: v}``."""
    out = {}
    for p in cfg.get("parameters", []):
        value = first(p, "value", {})
        out[str(first(p, "key"))] = str(first(value, "string_value", ""))
    return out


def tensors(cfg: dict[str, list[Any]], kind: str) -> dict[str, dict[str, Any]]:
    """``input`` or ``output`` entries as ``{name: {dtype, dims, reshape, optional}}``."""
    out = {}
    for t in cfg.get(kind, []):
        reshape = first(t, "reshape")
        out[str(first(t, "name"))] = {
            "dtype": str(first(t, "data_type", "")),
            "dims": [int(d) for d in t.get("dims", [])],
            "reshape": None if reshape is None else [int(d) for d in reshape.get("shape", [])],
            "optional": str(first(t, "optional", "false")) == "true",
        }
    return out


# --- the facts -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackendFacts:
    """The facts of one backend version (an entry of ``backends`` in the facts file)."""

    id: str
    trtllm_versions: tuple[str, ...]  # version prefixes, e.g. "0.19." (a version matches one of them)
    source: str  # where these facts were read: "repo@ref (commit)"
    names: dict[str, str]  # role -> request input name: {"seed": ..., "min_tokens": ...}
    required_parameters: dict[str, dict[str, Any]]
    typed_parameters: dict[str, dict[str, Any]]  # read in try/catch: name -> {"type", "line"}
    inputs: dict[str, dict[str, Any]]
    outputs: dict[str, dict[str, Any]]
    required_outputs: tuple[str, ...]
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    def matches(self, version: str) -> bool:
        return any(version == p.rstrip(".") or version.startswith(p) for p in self.trtllm_versions)

    def cite(self, what: str, entry: dict[str, Any]) -> str:
        """``what (file:line)`` for an error message."""
        where = entry.get("file"), entry.get("line")
        return f"{what} ({where[0]}:{where[1]} at {self.source})" if where[0] else f"{what} ({self.source})"


@lru_cache(maxsize=4)
def load_facts(path: str | None = None) -> dict[str, Any]:
    p = Path(path) if path else FACTS_FILE
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"TensorRT-LLM backend facts {p} not found") from None


def backends(path: str | None = None) -> list[BackendFacts]:
    out = []
    for b in load_facts(path)["backends"]:
        src = b["source"]
        out.append(
            BackendFacts(
                id=b["id"],
                trtllm_versions=tuple(b["trtllm_versions"]),
                source=f"{src['repo']}@{src['ref']} ({src['commit'][:12]})",
                names=dict(b["names"]),
                required_parameters={p["name"]: p for p in b["parameters_required"]},
                typed_parameters={p["name"]: p for p in b["parameters_typed"]},
                inputs=dict(b["inputs"]),
                outputs=dict(b["outputs"]),
                required_outputs=tuple(b["outputs_required"]),
                raw=b,
            )
        )
    return out


def known_versions(path: str | None = None) -> list[str]:
    return [p.rstrip(".") + ".x" for b in backends(path) for p in b.trtllm_versions]


def facts_for(version: str, path: str | None = None) -> BackendFacts:
    """The facts for TensorRT-LLM ``version``; ValueError for a version the facts do not cover."""
    for b in backends(path):
        if b.matches(str(version)):
            return b
    raise ValueError(
        f"TensorRT-LLM {version} is not a version this renderer has backend facts for (known: "
        f"{', '.join(known_versions(path))}): its tensorrt_llm model may read parameters or request names "
        f"the rendered config does not have. Use a container with a known version (TRITON_IMAGE), or add "
        f"that version's facts to {FACTS_FILE.name} after reading its inflight_batcher_llm sources (docs/GPU.md)"
    )


def head_sizes(path: str | None = None) -> tuple[int, ...]:
    return tuple(load_facts(path)["attention_head_sizes"]["values"])


def head_sizes_source(path: str | None = None) -> str:
    s = load_facts(path)["attention_head_sizes"]["source"]
    return f"{s['file']}:{s['line']} at {s['repo']}@{s['commit'][:12]}"


DEFAULT_TRTLLM_VERSION = (
    "0.20.0"  # TensorRT-LLM of the default image, nvcr.io/nvidia/tritonserver:25.06-trtllm-python-py3
)


def installed_version() -> str | None:
    """The installed tensorrt_llm's version from its package metadata (no import), or None."""
    from importlib import metadata

    for dist in ("tensorrt_llm", "tensorrt-llm"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def resolve_version(spec_version: str | None, where: str) -> str:
    """The TensorRT-LLM version a repository is rendered for: the installed one where tensorrt_llm is
    installed (inside the container that will serve it), else the spec's ``trtllm_version``, else the
    default image's. A spec that names a version the installed one does not match is refused."""
    installed = installed_version()
    if installed is not None:
        if spec_version is not None and facts_for(installed).id != facts_for(str(spec_version)).id:
            raise ValueError(
                f"{where}: the spec targets TensorRT-LLM {spec_version}, but this environment has tensorrt_llm "
                f"{installed}: render and serve in the container the spec targets, or change trtllm_version"
            )
        return installed
    return str(spec_version) if spec_version is not None else DEFAULT_TRTLLM_VERSION


# --- checks of rendered configs ------------------------------------------------------------------

_TYPE_CHECKS = {
    "int": lambda v: re.fullmatch(r"-?\d+", v) is not None,
    "float": lambda v: re.fullmatch(r"-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", v) is not None,
    "bool": lambda v: v in ("true", "false", "True", "False", "TRUE", "FALSE", "1", "0"),
    "int_list": lambda v: re.fullmatch(r"-?\d+(,-?\d+)*", v) is not None,
    "string": lambda v: True,
}


def check_engine_config(cfg: dict[str, list[Any]], facts: BackendFacts) -> list[str]:
    """Problems of a rendered ``tensorrt_llm`` model config against ``facts`` (empty: none)."""
    problems = []
    if first(cfg, "backend") != "tensorrtllm":
        problems.append(f"backend is {first(cfg, 'backend')!r}, not 'tensorrtllm'")
    params = parameters(cfg)
    for name, p in facts.required_parameters.items():
        if name not in params:
            problems.append(
                facts.cite(f"parameter {name!r} is missing: the backend reads it without a fallback and the model "
                           "fails to load with 'Cannot find parameter with name: " + name + "'", p)
            )  # fmt: skip
            continue
        allowed = p.get("values")
        if allowed is not None and params[name] not in allowed:
            problems.append(facts.cite(f"parameter {name!r} is {params[name]!r}; the backend takes {allowed}", p))
        if p.get("non_empty") and not params[name]:
            problems.append(facts.cite(f"parameter {name!r} is empty: {p.get('why', 'required')}", p))
    for name, value in params.items():
        t = facts.typed_parameters.get(name)
        if t is None or value == "" or value.startswith("${"):
            continue  # unknown to the backend (ignored), or unset (the backend's default)
        if not _TYPE_CHECKS[t["type"]](value):
            problems.append(
                facts.cite(f"parameter {name!r} = {value!r} is not a {t['type']}: the backend would silently use its "
                           "default", t)
            )  # fmt: skip
        elif t.get("values") is not None and value not in t["values"]:
            problems.append(
                facts.cite(f"parameter {name!r} = {value!r} is not one of {t['values']}: the backend would silently use "
                           "its default", t)
            )  # fmt: skip
    declared_in = tensors(cfg, "input")
    for name, t in declared_in.items():
        f = facts.inputs.get(name)
        if f is None:
            problems.append(
                f"input {name!r} is not among the request inputs the facts ({facts.id}) describe: add it there after "
                "reading where the backend reads it and as which type"
            )
            continue
        if t["dtype"] != f["dtype"]:
            problems.append(facts.cite(f"input {name!r} is {t['dtype']}; the backend reads it as {f['dtype']}", f))
        if t["dims"] != f["dims"] or t["reshape"] != f.get("reshape"):
            problems.append(
                facts.cite(f"input {name!r} has dims {t['dims']} reshape {t['reshape']}; upstream declares dims "
                           f"{f['dims']} reshape {f.get('reshape')}", f)
            )  # fmt: skip
    for name, f in facts.inputs.items():
        if f.get("required") and name not in declared_in:
            problems.append(facts.cite(f"required input {name!r} is not declared", f))
        elif f.get("required") and declared_in[name]["optional"]:
            problems.append(facts.cite(f"input {name!r} is declared optional; the backend requires it", f))
    declared_out = tensors(cfg, "output")
    for name, t in declared_out.items():
        f = facts.outputs.get(name)
        if f is None:
            problems.append(f"output {name!r} is not among the outputs the facts ({facts.id}) describe")
        elif t["dtype"] != f["dtype"]:
            problems.append(facts.cite(f"output {name!r} is {t['dtype']}; the backend writes {f['dtype']}", f))
    for name in facts.required_outputs:
        if name not in declared_out:
            problems.append(
                f"output {name!r} is not declared; the backend requires it in every request ({facts.source})"
            )
    streaming = facts.raw.get("streaming_needs_decoupled")
    policy = first(cfg, "model_transaction_policy", {})
    if "streaming" in declared_in and str(first(policy, "decoupled", "false")) != "true":
        problems.append(facts.cite("input 'streaming' is declared but the model is not decoupled: the backend "
                                   "rejects streaming requests to a non-decoupled model", streaming or {}))  # fmt: skip
    for role, name in facts.names.items():
        other = facts.raw.get("names_elsewhere", {}).get(role, [])
        for o in other:
            if o in declared_in:
                problems.append(
                    f"input {o!r} is another TensorRT-LLM version's name for {role}; {facts.id} reads {name!r}"
                )
    return problems


def check_ensemble_config(cfg: dict[str, list[Any]], engine_name: str, facts: BackendFacts) -> list[str]:
    """The ensemble's step into ``engine_name``: it feeds only inputs the backend reads, and asks for
    the outputs the backend requires in every request."""
    problems = []
    if first(cfg, "platform") != "ensemble":
        problems.append(f"platform is {first(cfg, 'platform')!r}, not 'ensemble'")
    sched = first(cfg, "ensemble_scheduling", {})
    steps = [s for s in sched.get("step", []) if first(s, "model_name") == engine_name]
    if len(steps) != 1:
        return problems + [f"{len(steps)} steps call {engine_name!r}; expected one"]
    step = steps[0]
    fed = {str(first(m, "key")) for m in step.get("input_map", [])}
    asked = {str(first(m, "key")) for m in step.get("output_map", [])}
    for name in sorted(fed - set(facts.inputs)):
        problems.append(f"the step into {engine_name} feeds {name!r}, which the backend does not read ({facts.source})")
    for name in facts.required_outputs:
        if name not in asked:
            problems.append(f"the step into {engine_name} does not ask for {name!r}; the backend fails every request "
                            f"without it ({facts.source})")  # fmt: skip
    for role, name in facts.names.items():
        for o in facts.raw.get("names_elsewhere", {}).get(role, []):
            if o in fed:
                problems.append(f"the step into {engine_name} feeds {o!r}: {facts.id} reads {role} as {name!r}")
    return problems


def check_python_config(cfg: dict[str, list[Any]], required: list[str]) -> list[str]:
    """A Python-backend model config: ``backend: "python"`` and every parameter its model reads with
    ``REQUIRED`` present and set."""
    problems = []
    if first(cfg, "backend") != "python":
        problems.append(f"backend is {first(cfg, 'backend')!r}, not 'python'")
    params = parameters(cfg)
    for name in required:
        v = params.get(name)
        if v is None or v == "" or v.startswith("${"):
            problems.append(f"parameter {name!r} is {'missing' if v is None else 'unset'}; the model requires it")
    return problems


def check_against_container_template(
    engine_cfg: dict[str, list[Any]], template_text: str, facts: BackendFacts
) -> list[str]:
    """A rendered ``tensorrt_llm`` config against the container's own upstream template: every input it
    declares exists there with the same type (names and types are what that container's backend was
    shipped with), and every parameter the facts say is read without a fallback is in the template
    too (if not, the facts do not describe this container's backend)."""
    problems = []
    try:
        tpl = parse_pbtxt(template_text)
    except PbtxtError as exc:
        return [f"the container's template is not readable protobuf text ({exc})"]
    theirs_in = tensors(tpl, "input")
    for name, t in tensors(engine_cfg, "input").items():
        u = theirs_in.get(name)
        if u is None:
            problems.append(f"input {name!r} is not in the container's template (renamed in this TensorRT-LLM?)")
        elif u["dtype"] != t["dtype"] and not u["dtype"].startswith("${"):
            problems.append(f"input {name!r} is {t['dtype']} here and {u['dtype']} in the container's template")
    theirs_params = set(parameters(tpl))
    for name in facts.required_parameters:
        if name not in theirs_params:
            problems.append(
                f"the container's template has no parameter {name!r}, which the facts ({facts.id}) say its backend "
                "reads: the facts do not describe this container"
            )
    return problems


def container_template() -> Path | None:
    return CONTAINER_TEMPLATE if CONTAINER_TEMPLATE.is_file() else None


def main(argv: list[str] | None = None) -> int:
    """``python3 -m pyramid_deploy.trtllm_facts [--version V]``: which facts apply here, and (inside a
    TRT-LLM container) whether the container's template agrees with them. Exit 0 when it does."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--version", help="TensorRT-LLM version (default: the installed one, else the default image's)")
    a = ap.parse_args(argv)
    try:
        version = a.version or resolve_version(None, "facts")
        f = facts_for(version)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"TensorRT-LLM {version}: backend facts {f.id} ({f.source}); request names {f.names}")
    tpl = container_template()
    if tpl is None:
        print(f"no container template at {CONTAINER_TEMPLATE} (not inside NVIDIA's Triton TRT-LLM container)")
        return 0
    theirs = parse_pbtxt(tpl.read_text(encoding="utf-8"))
    problems = [
        f"the container's template has no input {n!r}" for n in f.names.values() if n not in tensors(theirs, "input")
    ]
    problems += [
        f"the container's template has no parameter {n!r}" for n in f.required_parameters if n not in parameters(theirs)
    ]
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    if not problems:
        print(f"{tpl} agrees: it declares {sorted(f.names.values())} and the parameters read without a fallback")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
