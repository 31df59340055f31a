"""The wire format of a Pyramid MoA deployment, defined once for both sides.

The client (``pyramid_client``) encodes requests and parses responses with it; the server
(``pyramid_triton``: the router, the engines, ``pyramid record``'s engine calls) reads requests and
writes responses with it. Standard library only: the Triton Python-backend stub imports it too.

- **Tensors**: every input and output is ``[1, 1]`` (batch, element), of the Triton datatype named
  here. The engines speak TensorRT-LLM's text API (``ENGINE_INPUTS`` -> ``ENGINE_OUTPUTS``); the
  router takes the same inputs plus its own (``ROUTER_INPUTS``) and answers ``ROUTER_OUTPUTS``.
- **The router's answer**: ``RoutedAnswer`` holds the fields both sides share; ``answer_outputs``
  writes them (with the answer's text and the router's step times) as output values, the per-call
  details as JSON in ``agent_answers``; ``answer_fields`` reads them back.
- **Errors**: codes named like Triton's ``TRITONSERVER_Error`` codes. Triton's gRPC stream (the only
  way to reach a decoupled model) carries an error's message but not its code, so the code also
  leads the message: ``"[INVALID_ARG] invalid input 'max_tokens': ..."`` (``error_message``,
  ``split_code``). ``classify_error`` reads any error a Triton server sends (that prefix, else Triton's
  own wording, else the gRPC / HTTP status) for the client, the gateway and ``pyramid record``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

# --- tensors ------------------------------------------------------------------------------------

BYTES, BOOL, INT32, UINT64, FP32 = "BYTES", "BOOL", "INT32", "UINT64", "FP32"

# TensorRT-LLM's text API, as every engine serves it (the router asks for ``answer`` too from an
# engine that parses its own final answer, such as the replay engine).
ENGINE_INPUTS = {
    "text_input": BYTES,
    "max_tokens": INT32,
    "temperature": FP32,
    "seed": UINT64,
    "return_log_probs": BOOL,
}
ENGINE_OUTPUTS = {"text_output": BYTES, "output_tokens": INT32, "cum_log_probs": FP32}
PARSED_ANSWER_OUTPUT = "answer"

# --- request options ------------------------------------------------------------------------------
# The router's per-request options, each defined once here. Read from this table: the router's inputs
# (``ROUTER_INPUTS``), the client's keywords (``pyramid_client.types.build_inputs``, ``AskOptions``), the
# gateway's OpenAI fields (their ranges; ``extra_body.pyramid.<name>`` is built from it) and the router's
# checks (``check_option``, from ``pyramid_triton.protocol.validate_pyramid_request``). One name end to end:
# the router input, the client keyword and the OpenAI ``pyramid`` key are the same. Each process checks at
# its own boundary: the gateway (pydantic, from the ranges here) and the router (``check_option``); the
# client only refuses what cannot be encoded. Adding an option: an entry here, the router's
# ``PyramidRequest`` field, and the code that uses it.


@dataclass(frozen=True)
class RequestOption:
    """One request option. ``name``: the router input, the client keyword, the OpenAI ``pyramid`` key;
    ``datatype``: the tensor's; ``lo`` / ``hi``: its range, inclusive (None: the datatype's); ``choices``: a
    string's allowed values; ``unset``: the value that means "not set", as if absent (``unset_means``: what
    that is, in words); ``default``: what applies when it is not set; ``openai``: where an OpenAI request
    carries it: ``body`` (a top-level field of the same name), ``pyramid`` (``extra_body.pyramid.<name>``) or
    ``model`` (the model name picks it: ``pyramid-committee``); no option travels in a header. ``direct``:
    the gateway accepts it on a direct engine call too (otherwise it is a 400 there: it applies to routing)."""

    name: str
    datatype: str
    help: str
    lo: float | None = None
    hi: float | None = None
    choices: tuple[str, ...] = ()
    unset: Any = None
    unset_means: str = ""
    default: str = "none"
    openai: str = "pyramid"
    direct: bool = False

    @property
    def python_type(self) -> type:
        return _PYTHON_TYPES[self.datatype]

    def bounds(self) -> tuple[float | None, float | None]:
        """(lo, hi), inclusive: the table's, else the datatype's (None: unbounded)."""
        lo, hi = _DATATYPE_RANGES.get(self.datatype, (None, None))
        return (lo if self.lo is None else self.lo, hi if self.hi is None else self.hi)


_PYTHON_TYPES: dict[str, type] = {BYTES: str, BOOL: bool, INT32: int, UINT64: int, FP32: float}
_DATATYPE_RANGES = {INT32: (-(2**31), 2**31 - 1), UINT64: (0, 2**64 - 1)}
TIERS = ("committee", "oracle")

REQUEST_OPTIONS: dict[str, RequestOption] = {
    o.name: o
    for o in (
        RequestOption(
            "max_tokens", INT32, "the most tokens each model may generate", lo=1,
            default="the router's default_max_tokens parameter", openai="body", direct=True,
        ),
        RequestOption(
            "temperature", FP32, "sampling temperature of every model called", lo=0.0, hi=2.0,
            default="each engine's own", openai="body", direct=True,
        ),
        RequestOption("seed", UINT64, "sampling seed of every model called", openai="body", direct=True),
        RequestOption(
            "escalation_threshold", FP32, "per-request escalation threshold, for every stage", lo=0.0, hi=1.0,
            default="the calibration's thresholds",
        ),
        RequestOption(
            "force_tier", BYTES, "answer from this tier, whatever the confidence", choices=TIERS, unset="",
            unset_means="not set", default="the calibration decides", openai="model",
        ),
        RequestOption(
            "deadline_ms", INT32, "anytime bound: past it, the committee's answer, marked provisional", lo=0,
            unset=0, unset_means="no deadline", default="wait for the oracle", direct=True,
        ),
        RequestOption(
            "strict", BOOL, "an oracle failure is an error, not a degraded committee answer", default="false",
            direct=True,
        ),
        RequestOption(
            "task", BYTES,
            "the answer task (gsm8k, semantic, choice, text) whose calibration routes it; auto: detected from the prompt",
            unset="", unset_means="not set",
            default="the router's task parameter (the calibration's only task; auto for several)",
        ),
    )
}  # fmt: skip


def check_option(name: str, value: Any) -> Any:
    """The value of option ``name`` as the router takes it: None when it is not set (absent, or the option's
    ``unset`` value; a string stripped first), else ``value`` within the option's range and choices;
    ``ValueError(the problem)`` otherwise, e.g. ``"must be within [0, 1], got 1.5"``."""
    o = REQUEST_OPTIONS[name]
    if value is None:
        return None
    if o.datatype == BYTES:
        value = str(value).strip()
    elif o.datatype == BOOL:
        return bool(value)
    if o.unset is not None and value == o.unset:
        return None
    if o.choices and value not in o.choices:
        raise ValueError(f"must be one of {', '.join(o.choices)}, got {value!r}")
    if o.datatype in (INT32, UINT64, FP32):
        value = o.python_type(value)
        lo, hi = o.lo, o.hi  # the datatype's own range is the tensor's: nothing else fits in it
        if not (math.isfinite(value) and (lo is None or value >= lo) and (hi is None or value <= hi)):
            if lo is not None and hi is not None:
                raise ValueError(f"must be within [{lo:g}, {hi:g}], got {value}")
            note = f" ({o.unset}: {o.unset_means})" if o.unset is not None else ""
            raise ValueError(f"must be >= {lo:g}{note}, got {value}" if lo is not None else f"must be <= {hi:g}")
    return value


# The router's ``default_max_tokens`` where its config leaves it out (``pyramid_triton.protocol.ROUTER_PARAMS``),
# and the gateway's for a direct engine call when it cannot read the router's: one number for both sides.
DEFAULT_MAX_TOKENS = 512


def estimate_tokens(text: str) -> int:
    """chars/4: the token count of a text whose engine reports none (the router's ``tokens``, the gateway's
    usage of a direct engine call). The router library keeps the same rule as ``pyramid_moa.cost.estimate_tokens``
    (it imports nothing of the client); tests/test_one_home.py checks that both give the same numbers."""
    return int(round(len(text) / 4))


# The router's inputs: the text API's, ``stream``, the request options, and what Triton's OpenAI frontend
# sends. ``exclude_input_in_output`` is accepted (TensorRT-LLM clients send it) and has no effect. The last seven are what Triton's own OpenAI
# frontend sends a non-vLLM model besides (deploy/triton_openai_frontend_facts.json): ``stop_words`` (the one
# input with several elements, ``[1, n]``) cuts the returned text; ``top_p`` and the penalties are accepted at
# their no-op value only (``NOOP_SAMPLING``: the engines' text API has none of them); the token counts are
# always sent (``num_input_tokens`` / ``num_output_tokens``), so ``return_num_*`` has no further effect;
# ``random_seed`` is ``seed`` under its name before Triton 2.59 (containers 24.11 to 25.05).
ROUTER_INPUTS = {
    "text_input": BYTES,
    "stream": BOOL,
    "exclude_input_in_output": BOOL,
    **{o.name: o.datatype for o in REQUEST_OPTIONS.values()},
    "stop_words": BYTES,
    "top_p": FP32,
    "frequency_penalty": FP32,
    "presence_penalty": FP32,
    "return_num_input_tokens": BOOL,
    "return_num_output_tokens": BOOL,
    "random_seed": UINT64,
}
IGNORED_INPUTS = ("exclude_input_in_output", "return_num_input_tokens", "return_num_output_tokens")
LIST_INPUTS = ("stop_words",)  # one string per element, any number of them
# Sampling fields the engines' text API lacks: accepted only at the value that changes nothing.
NOOP_SAMPLING = {"top_p": 1.0, "frequency_penalty": 0.0, "presence_penalty": 0.0}
INPUT_DATATYPES = {**ROUTER_INPUTS, **ENGINE_INPUTS}

# The router's outputs, in the order it sends them.
ROUTER_OUTPUTS = {
    "text_output": BYTES,
    "answer": BYTES,
    "tier": BYTES,
    "escalated": BOOL,
    "confidence": FP32,
    "agreement": FP32,
    "agent_answers": BYTES,  # JSON: see ``answer_outputs``
    "degraded": BOOL,
    "cost": FP32,  # NaN when unknown
    "provisional": BOOL,
    # Tokens of every call the route made (sums of ``tokens``): what OpenAI frontends report as usage.
    "num_input_tokens": INT32,
    "num_output_tokens": INT32,
}

# --- the router's answer ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RoutedAnswer:
    """What the router answers, as both sides hold it (the server's ``PyramidResponse`` and the
    client's ``PyramidResult`` add what only their side has).

    ``cost``: the calls made, relative to one oracle call on this question, in the calibration's
    cost model (None when unknown); ``costs``: the same per cost model (``usd``, ``flops``; None
    where the deployment has no prices / parameter counts). ``provisional``: a committee answer sent
    before the oracle's (streaming) or instead of it (``deadline_ms``). ``tokens``: per model called
    whose output the router had, [prompt tokens, completion tokens] (the engine's counts where it
    reports them, else chars/4). ``answered_by``: the models whose answer this is: the oracle, or the
    agents of the deciding stage that voted for it (in a pyramid, which tier answered). ``budget``: with
    the router's oracle budget on and the request under it, ``{"target", "window_rate", "offset",
    "thresholds"}`` (the thresholds applied, one per stage); None otherwise. ``task``: the answer task that
    routed the request, ``{"name", "source"}`` (source ``request``, ``default`` or ``auto``: detected from the
    prompt, then with ``detected``, the kind of prompt, and ``reason``), plus ``fallback`` (``oracle`` or
    ``default``) where a fallback applied; None from a router that does not say.
    """

    answer: str | None
    tier: str
    escalated: bool
    confidence: float
    agreement: float
    agent_answers: dict[str, str | None] = field(default_factory=dict)
    failed_agents: list[str] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    degraded: bool = False
    cost: float | None = None
    costs: dict[str, float | None] = field(default_factory=dict)
    provisional: bool = False
    tokens: dict[str, list[int]] = field(default_factory=dict)
    answered_by: list[str] = field(default_factory=list)
    budget: dict[str, Any] | None = None
    task: dict[str, Any] | None = None


def answer_outputs(a: RoutedAnswer, text: str, latency_ms: dict[str, float]) -> dict[str, Any]:
    """``{output name: value}`` of one router response, in ``ROUTER_OUTPUTS`` order; ``text``: the
    answering model's text, ``latency_ms``: the router's wall time per step."""
    details = {
        "agent_answers": a.agent_answers,
        "failed": a.failed_agents,
        "calls": a.calls,
        "cost": {k: _json_num(v) for k, v in a.costs.items()},
        "latency_ms": {k: round(v, 3) for k, v in latency_ms.items()},
        "tokens": a.tokens,
        "answered_by": a.answered_by,
    }
    if a.budget is not None:
        details["budget"] = a.budget
    if a.task is not None:
        details["task"] = a.task
    return {
        "text_output": text,
        "answer": a.answer or "",
        "tier": a.tier,
        "escalated": a.escalated,
        "confidence": a.confidence,
        "agreement": a.agreement,
        "agent_answers": json.dumps(details, separators=(",", ":")),
        "degraded": a.degraded,
        "cost": math.nan if a.cost is None else a.cost,
        "provisional": a.provisional,
        "num_input_tokens": sum(t[0] for t in a.tokens.values()),
        "num_output_tokens": sum(t[1] for t in a.tokens.values()),
    }


def cut_at_stop(text: str, stops: list[str] | tuple[str, ...]) -> tuple[str, bool]:
    """``text`` up to the earliest stop sequence, which is left out (as OpenAI returns it); (text, cut?)."""
    first = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return (text[:first], True) if first >= 0 else (text, False)


class WireError(ValueError):
    """A response that does not follow this format."""


def answer_fields(outputs: dict[str, Any]) -> tuple[dict[str, Any], str, dict[str, float]]:
    """(``RoutedAnswer`` fields, text, the router's step times in ms) of one router response, given as
    ``{output name: scalar}`` (bytes or str, bool, numbers); ``WireError`` if it is not one."""
    if "tier" not in outputs:
        raise WireError(f"the response has no 'tier' output (got {sorted(outputs)})")
    raw = _text(outputs.get("agent_answers")) or "{}"
    try:
        details = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise WireError(f"agent_answers is not JSON ({exc}): {raw[:200]!r}") from None
    if not isinstance(details, dict):
        details = {}
    costs_raw, latency = details.get("cost"), details.get("latency_ms")
    fields = {
        "answer": _text(outputs.get("answer")) or None,
        "tier": _text(outputs.get("tier")),
        "escalated": _flag(outputs.get("escalated")),
        "confidence": _num(outputs.get("confidence")) or 0.0,
        "agreement": _num(outputs.get("agreement")) or 0.0,
        "agent_answers": dict(details.get("agent_answers") or {}),
        "failed_agents": list(details.get("failed") or []),
        "calls": list(details.get("calls") or []),
        "degraded": _flag(outputs.get("degraded")),
        "cost": _num(outputs.get("cost")),
        "costs": {str(k): _num(v) for k, v in costs_raw.items()} if isinstance(costs_raw, dict) else {},
        "provisional": _flag(outputs.get("provisional")),
        "tokens": {str(k): [int(x) for x in v] for k, v in (details.get("tokens") or {}).items()},
        "answered_by": [str(m) for m in details.get("answered_by") or []],
        "budget": details["budget"] if isinstance(details.get("budget"), dict) else None,
        "task": details["task"] if isinstance(details.get("task"), dict) else None,
    }
    steps = {str(k): float(v) for k, v in latency.items()} if isinstance(latency, dict) else {}
    return fields, _text(outputs.get("text_output")), steps


def _json_num(v: float | None) -> float | None:
    """JSON has no NaN: an unknown cost is null."""
    return None if v is None or not math.isfinite(v) else round(float(v), 6)


def _num(v: Any) -> float | None:
    """A finite float, or None (absent, null, NaN, not a number)."""
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="replace")
    return str(v)


def _flag(v: Any) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("true", "1")
    return bool(v) if v is not None else False


# --- model config parameters ---------------------------------------------------------------------
# A model's ``parameters { key: "k" value: { string_value: "v" } }`` (config.pbtxt), which Triton's model-config
# API and the Python backend's ``args["model_config"]`` give as JSON ``{"parameters": {"k": {"string_value": "v"}}}``.
_PBTXT_PARAMETER = re.compile(r'key:\s*"((?:[^"\\]|\\.)*)"\s*value:\s*\{\s*string_value:\s*"((?:[^"\\]|\\.)*)"\s*\}')
_PBTXT_COMMENT = re.compile(r"^\s*#.*$", re.M)


def pbtxt_unquote(text: str) -> str:
    """The value of a protobuf-text string literal's contents (``\\n``, ``\\t``; any other escaped character
    stands for itself: ``\\"``, ``\\\\``)."""
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), text)


def config_parameters(config: dict[str, Any] | str) -> dict[str, str]:
    """A model config's parameters as ``{key: string value}``, the one reader of them (the router's
    ``ModelParams``, ``pyramid record`` and ``deploy-calibration``, the gateway's discovery): ``config`` is
    Triton's JSON model config (a dict) or a config.pbtxt's text (its comment lines skipped)."""
    if isinstance(config, str):
        pairs = _PBTXT_PARAMETER.findall(_PBTXT_COMMENT.sub("", config))
        return {pbtxt_unquote(k): pbtxt_unquote(v) for k, v in pairs}
    return {k: (v or {}).get("string_value", "") for k, v in (config.get("parameters") or {}).items()}


# --- access keys ----------------------------------------------------------------------------------
# tritonserver puts API groups behind a header (``--http-restricted-api`` / ``--grpc-restricted-protocol``,
# docs/SECURITY.md): the admin key guards model control, the inference key (where a spec asks for it)
# inference. Over gRPC the header travels as metadata under Triton's prefix.
ADMIN_HEADER = "pyramid-admin-key"
INFERENCE_HEADER = "pyramid-inference-key"
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"  # tritonserver 2.51 expects gRPC metadata under this prefix


def key_headers(protocol: str, value: str, header: str = INFERENCE_HEADER) -> dict[str, str]:
    """The header (``http``) or gRPC metadata (``grpc``: Triton's prefix added) that carries a key."""
    return {(GRPC_HEADER_PREFIX + header) if protocol == "grpc" else header: value}


# --- errors ---------------------------------------------------------------------------------------

UNKNOWN = "UNKNOWN"
INTERNAL = "INTERNAL"
NOT_FOUND = "NOT_FOUND"
INVALID_ARG = "INVALID_ARG"
UNAVAILABLE = "UNAVAILABLE"
UNSUPPORTED = "UNSUPPORTED"
ALREADY_EXISTS = "ALREADY_EXISTS"
CANCELLED = "CANCELLED"
# Triton's TRITONSERVER_Error codes, by name (``pb_utils.TritonError`` has an attribute of each).
CODE_NAMES = (UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG, UNAVAILABLE, UNSUPPORTED, ALREADY_EXISTS, CANCELLED)
# The client's own: the call's timeout passed before the whole answer came.
DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
# The client's own: a restricted API refused the call (its key is missing or wrong). Triton 2.51 answers
# such a gRPC call with UNAVAILABLE, which would otherwise be retried; this is a configuration error.
PERMISSION_DENIED = "PERMISSION_DENIED"
# gRPC status names that Triton spells differently.
GRPC_NAMES = {"INVALID_ARGUMENT": INVALID_ARG, "UNIMPLEMENTED": UNSUPPORTED}
# HTTP statuses, as Triton's HTTP endpoint (and the router's generate endpoint) answers an error.
HTTP_CODES = {
    400: INVALID_ARG,
    404: NOT_FOUND,
    408: DEADLINE_EXCEEDED,
    499: CANCELLED,
    500: INTERNAL,
    501: UNSUPPORTED,
    503: UNAVAILABLE,
    504: DEADLINE_EXCEEDED,
}
# Triton's own wording (tritonserver 2.51, and gRPC's for a transport failure), for an error raised before a
# model runs, which has no ``[CODE]`` prefix and, on a gRPC stream, no status either: the first phrase found
# in the message (lower case) decides. An unloaded model ("... has no available versions", "... is not at
# ready state") is UNAVAILABLE; a name Triton does not know ("Request for unknown model: 'x' is not found")
# is NOT_FOUND.
TRITON_WORDING = (
    ("has no available versions", UNAVAILABLE),
    ("is not at ready state", UNAVAILABLE),
    ("not ready", UNAVAILABLE),
    ("unknown model", NOT_FOUND),
    ("is not found", NOT_FOUND),
    ("unexpected datatype", INVALID_ARG),
    ("unexpected shape", INVALID_ARG),
    ("unexpected inference input", INVALID_ARG),
    ("missing required input", INVALID_ARG),
    ("deadline exceeded", DEADLINE_EXCEEDED),
    ("failed to connect", UNAVAILABLE),
    ("connection refused", UNAVAILABLE),
)

_CODE_PREFIX = re.compile(r"^\[([A-Z][A-Z_]*)\] ")


def error_message(code: str, message: str) -> str:
    """The text of an error response: ``"[CODE] message"``."""
    return f"[{code}] {message}"


def split_code(message: str) -> tuple[str | None, str]:
    """(code, message) of an ``error_message`` text, the code in Triton's spelling; (None, message)
    when the text has no ``[CODE]`` prefix (an error raised by Triton itself, or by another server)."""
    m = _CODE_PREFIX.match(message)
    if m is None:
        return None, message
    return code_name(m.group(1)), message[m.end() :]


def refused_by_key(message: str) -> bool:
    """Whether a Triton error is a restricted API's refusal (tritonserver 2.51: over HTTP 403 "This API is
    restricted, expecting header '...'", over gRPC UNAVAILABLE "This protocol is restricted, expecting
    header 'triton-grpc-protocol-...'")."""
    low = message.lower()
    return ("this api is restricted" in low or "this protocol is restricted" in low) and "expecting header" in low


def code_name(name: str) -> str:
    """A code or gRPC status name in Triton's spelling (``INVALID_ARGUMENT`` -> ``INVALID_ARG``)."""
    return GRPC_NAMES.get(name, name)


def classify_error(message: str, status: str | int | None = None) -> tuple[str, str]:
    """(code, message) of an error a Triton server sent, the one reading of its text for every caller (the
    client's transports, the gateway's engine calls, ``pyramid record``): the ``[CODE]`` prefix the project's
    models put first wins (the message returned without it); then a restricted API's refusal
    (``PERMISSION_DENIED``: a missing or wrong key, not worth retrying); then Triton's own wording
    (``TRITON_WORDING``); then ``status``: a gRPC status name (``INVALID_ARGUMENT`` -> ``INVALID_ARG``) or an
    HTTP status (``HTTP_CODES``, else ``HTTP_<n>``); else ``UNKNOWN``."""
    prefixed, text = split_code(message)
    if prefixed:
        return prefixed, text
    if refused_by_key(message):
        return PERMISSION_DENIED, message
    low = message.lower()
    for phrase, code in TRITON_WORDING:
        if phrase in low:
            return code, message
    if isinstance(status, int) and not isinstance(status, bool):
        return HTTP_CODES.get(status, f"HTTP_{status}"), message
    if status:
        return code_name(str(status).replace("StatusCode.", "")), message
    return UNKNOWN, message
