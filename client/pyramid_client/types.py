"""Transport-independent parts of the client: the typed result, the error, the request inputs.

No ``tritonclient`` import here: both transports (gRPC, HTTP) hand the client a plain
``{output name: Python scalar}`` dict per response, parsed by ``result_from_outputs``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

# Triton datatypes of the router's inputs (every one is [1, 1]: batch, element).
INPUT_DATATYPES = {
    "text_input": "BYTES",
    "max_tokens": "INT32",
    "temperature": "FP32",
    "seed": "UINT64",
    "stream": "BOOL",
    "exclude_input_in_output": "BOOL",
    "escalation_threshold": "FP32",
    "force_tier": "BYTES",
    "deadline_ms": "INT32",
    "strict": "BOOL",
    # engine text API (pyramid record calls the engines directly)
    "return_log_probs": "BOOL",
}
TIERS = ("committee", "oracle")
COST_MODELS = ("usd", "flops")

# Error codes, named like Triton's TRITONSERVER_Error codes (INVALID_ARG, not INVALID_ARGUMENT).
UNAVAILABLE = "UNAVAILABLE"
DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
INVALID_ARG = "INVALID_ARG"
NOT_FOUND = "NOT_FOUND"
INTERNAL = "INTERNAL"
UNKNOWN = "UNKNOWN"

_CODE_PREFIX = re.compile(r"^\[([A-Z_]+)\] ")
_GRPC_NAMES = {"INVALID_ARGUMENT": INVALID_ARG, "UNIMPLEMENTED": "UNSUPPORTED"}


class PyramidError(RuntimeError):
    """The server answered with an error, could not be reached, or did not answer in time.

    ``code``: ``INVALID_ARG`` (the message names the input), ``NOT_FOUND``, ``UNAVAILABLE``
    (nothing listening / not ready; raised after the retries), ``DEADLINE_EXCEEDED`` (the call's
    timeout), ``INTERNAL``, ...; ``message``: the server's message without its ``[CODE]``
    prefix; ``attempts``: how many times the request was sent.
    """

    def __init__(self, message: str, code: str = UNKNOWN, attempts: int = 1) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.attempts = attempts

    def __str__(self) -> str:
        tries = f" (after {self.attempts} attempts)" if self.attempts > 1 else ""
        return f"{self.code}: {self.message}{tries}"

    def __reduce__(self):  # picklable with its fields (e.g. across a process pool)
        return (type(self), (self.message, self.code, self.attempts))


def error_from_message(message: str, code: str | None = None) -> PyramidError:
    """A PyramidError from a server message: the router's ``[CODE] `` prefix wins (errors on a gRPC
    stream and the generate endpoint's bodies carry no status of their own), then ``code``, then a
    guess from Triton's own wording for errors raised before the model runs."""
    m = _CODE_PREFIX.match(message)
    if m:
        return PyramidError(message[m.end() :], _GRPC_NAMES.get(m.group(1), m.group(1)))
    if code:
        return PyramidError(message, _GRPC_NAMES.get(code, code))
    low = message.lower()
    if "unknown model" in low or "is not found" in low:
        return PyramidError(message, NOT_FOUND)
    if "not ready" in low or "no available versions" in low:
        return PyramidError(message, UNAVAILABLE)
    if "unexpected datatype" in low or "unexpected shape" in low or "unexpected inference input" in low:
        return PyramidError(message, INVALID_ARG)
    return PyramidError(message, UNKNOWN)


@dataclass(frozen=True)
class PyramidResult:
    """One response of the router.

    ``cost``: the calls made, relative to one oracle call on this question, in the calibration's
    cost model (None when unknown); ``costs``: the same per cost model (``usd``, ``flops``; None
    where the deployment has no prices / parameter counts). ``provisional``: a committee answer
    sent before the oracle's (streaming) or instead of it (``deadline_ms``). ``latency_s``: from
    sending the request to this response, on the client; ``server_latency_ms``: the router's own
    wall time per step, where the server reports it.
    """

    answer: str | None
    text: str
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
    latency_s: float = 0.0
    server_latency_ms: dict[str, float] = field(default_factory=dict)
    request_id: str = ""
    # Per model called whose output the router had: [prompt tokens, completion tokens].
    tokens: dict[str, list[int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


def result_from_outputs(outputs: dict[str, Any], request_id: str = "", latency_s: float = 0.0) -> PyramidResult:
    """Parse one response, given as ``{output name: scalar}`` (bytes or str, bool, numbers)."""
    if "tier" not in outputs:
        raise PyramidError(f"the response has no 'tier' output (got {sorted(outputs)})", INTERNAL)
    raw = _text(outputs.get("agent_answers")) or "{}"
    try:
        details = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise PyramidError(f"agent_answers is not JSON ({exc}): {raw[:200]!r}", INTERNAL) from None
    if not isinstance(details, dict):
        details = {}
    costs_raw = details.get("cost")
    costs: dict[str, float | None] = {}
    if isinstance(costs_raw, dict):
        costs = {str(k): _num(v) for k, v in costs_raw.items()}
    latency = details.get("latency_ms")
    return PyramidResult(
        answer=_text(outputs.get("answer")) or None,
        text=_text(outputs.get("text_output")),
        tier=_text(outputs.get("tier")),
        escalated=_flag(outputs.get("escalated")),
        confidence=_num(outputs.get("confidence")) or 0.0,
        agreement=_num(outputs.get("agreement")) or 0.0,
        agent_answers=dict(details.get("agent_answers") or {}),
        failed_agents=list(details.get("failed") or []),
        calls=list(details.get("calls") or []),
        degraded=_flag(outputs.get("degraded")),
        cost=_num(outputs.get("cost")),
        costs=costs,
        provisional=_flag(outputs.get("provisional")),
        latency_s=latency_s,
        server_latency_ms={str(k): float(v) for k, v in latency.items()} if isinstance(latency, dict) else {},
        request_id=request_id,
        tokens={str(k): [int(x) for x in v] for k, v in (details.get("tokens") or {}).items()},
    )


def build_inputs(
    question: str,
    *,
    max_tokens: int | None = None,
    threshold: float | None = None,
    force_tier: str | None = None,
    deadline_ms: int | None = None,
    strict: bool | None = None,
    temperature: float | None = None,
    seed: int | None = None,
    stream: bool = False,
) -> dict[str, Any]:
    """The request's inputs as ``{input name: Python value}``; None means "not sent".

    Values are checked by the server (which names the offending input); only what cannot be
    encoded at all (a wrong Python type) is refused here, as INVALID_ARG."""
    inputs: dict[str, Any] = {"text_input": question}
    if max_tokens is not None:
        inputs["max_tokens"] = int(max_tokens)
    if threshold is not None:
        inputs["escalation_threshold"] = float(threshold)
    if force_tier is not None:
        inputs["force_tier"] = str(force_tier)
    if deadline_ms is not None:
        inputs["deadline_ms"] = int(deadline_ms)
    if strict is not None:
        inputs["strict"] = bool(strict)
    if temperature is not None:
        inputs["temperature"] = float(temperature)
    if seed is not None:
        inputs["seed"] = int(seed)
    if stream:
        inputs["stream"] = True
    for name in ("max_tokens", "deadline_ms"):
        v = inputs.get(name)
        if v is not None and not -(2**31) <= v < 2**31:
            raise PyramidError(f"invalid input '{name}': {v} does not fit in INT32", INVALID_ARG)
    if "seed" in inputs and not 0 <= inputs["seed"] < 2**64:
        raise PyramidError(f"invalid input 'seed': {inputs['seed']} does not fit in UINT64", INVALID_ARG)
    if not isinstance(question, str):
        raise PyramidError(f"invalid input 'text_input': must be a str, got {type(question).__name__}", INVALID_ARG)
    return inputs
