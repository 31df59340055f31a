"""Pure request/response types of the engine text API and of the Pyramid router.

No Triton import here: the Triton glue (``tensors``) converts tensors to and from
these dataclasses, and everything that decides lives in plain Python, so it is
testable without a server.

The text API follows TensorRT-LLM's ensemble / BLS models so that the router
cannot tell engines apart and standard tools work unchanged: ``text_input``
(STRING), ``max_tokens`` (INT32), optional ``temperature``, ``seed``,
``return_log_probs``; outputs ``text_output``, ``cum_log_probs``, ``output_tokens``.
The names, datatypes, response fields and error codes are the client's and the server's
common definition, ``pyramid_client.wire``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, make_dataclass
from typing import Any

from pyramid_client.wire import (
    BOOL,
    DEFAULT_MAX_TOKENS,
    INTERNAL,
    INVALID_ARG,
    NOOP_SAMPLING,
    NOT_FOUND,
    REQUEST_OPTIONS,
    RequestOption,
    RoutedAnswer,
    check_option,
)
from pyramid_client.wire import TIERS as TIERS  # importable from here (metrics)
from pyramid_client.wire import UNAVAILABLE as UNAVAILABLE  # the error codes are importable from here

from .budget import DEFAULTS as BUDGET_PARAMS
from .drift import DEFAULTS as DRIFT_PARAMS
from .request_log import DEFAULTS as REQUEST_LOG_PARAMS

# Shadow sampling (shadow.py): the share of answered requests recorded with every model's output
# (0: off), where (required when on; relative to the router's model directory), the directory's size
# bound and the most shadow model calls in flight (more are skipped, never queued).
SHADOW_PARAMS: dict[str, Any] = {
    "shadow_rate": 0.0,
    "shadow_dir": "",
    "shadow_max_bytes": 256 * 1024 * 1024,
    "shadow_max_concurrent": 8,
}

# The router model's parameters (config.pbtxt) that have a default: what ``render`` writes when the
# deployment spec leaves one out, and what the router (``bls``) assumes when a config does.
ROUTER_PARAMS: dict[str, Any] = {
    "default_max_tokens": DEFAULT_MAX_TOKENS,
    "max_tokens_cap": 8192,
    "max_input_chars": 20000,
    "agent_timeout_s": 60.0,  # a call to an agent that has not answered by then has failed
    "oracle_timeout_s": 120.0,
    # One JSON line per request: off | verbose (printed with --log-verbose=1) | info | file. Not free: each line is a
    # message from the router's stub to the server even when not printed (-15% routed throughput, BENCHMARKS.md).
    "request_log": "off",
    "metrics": True,  # pyramid_* Prometheus metrics on Triton's /metrics
    "breaker_s": 2.0,  # after an engine fails (timeout, crash), skip it for this long (0: never)
    "remote_retries": 2,  # a remote call that fails with gRPC UNAVAILABLE is retried this often (within its timeout)
    # A task per request (tasks.py): the default answer task ("": the calibration's only one, or auto for several;
    # auto: detected from each request's prompt, pyramid_moa.task_detect) and what a request
    # whose task has no calibration gets: "error" (UNSUPPORTED) or "oracle" (the oracle alone answers it).
    "task": "",
    "task_fallback": "error",
    # request_log "file" (a private, bounded file), prompts and answers, the redaction hook: request_log.py
    **REQUEST_LOG_PARAMS,
    # hot reload: seconds between looks at the calibration file (hot_reload.py; 0: never)
    "calibration_watch_s": 2.0,
    # shadow sampling (shadow.py) and drift alarms against the artifact's expectations (drift.py)
    **SHADOW_PARAMS,
    **DRIFT_PARAMS,
    # the oracle budget (budget.py): a target oracle-call rate over a sliding window, held by moving every
    # stage's threshold by one offset (0: off), no threshold below budget_min_threshold
    **BUDGET_PARAMS,
}


class ServeError(Exception):
    """An error to send back to the client as a Triton error response with ``code``."""

    code = INTERNAL

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class InvalidArgument(ServeError):
    """A request input is missing or out of range; the message names the input."""

    code = INVALID_ARG

    def __init__(self, field_name: str, problem: str) -> None:
        super().__init__(f"invalid input '{field_name}': {problem}")
        self.field = field_name


class NotFound(ServeError):
    """The replay engine has no recorded output for this question."""

    code = NOT_FOUND


@dataclass(frozen=True)
class Limits:
    """Per-deployment caps on request inputs (from the model config)."""

    max_input_chars: int = ROUTER_PARAMS["max_input_chars"]
    max_tokens_cap: int = ROUTER_PARAMS["max_tokens_cap"]

    @classmethod
    def from_params(cls, params: Any) -> Limits:
        """From a model's parameters (``config.ModelParams``); a parameter left out takes the default."""
        return cls(
            params.get_typed("max_input_chars", ROUTER_PARAMS), params.get_typed("max_tokens_cap", ROUTER_PARAMS)
        )


@dataclass(frozen=True)
class EngineRequest:
    text_input: str
    max_tokens: int
    temperature: float | None = None
    seed: int | None = None
    return_log_probs: bool = False


@dataclass(frozen=True)
class EngineResponse:
    """One engine reply. ``answer``/``has_answer``: an engine that parses its own final
    answer (the replay engine returns the answer recorded with the trace, e.g. the
    result of executing a Faithful-CoT program) says so; otherwise the router extracts
    the answer from ``text_output`` with the task's extractor."""

    text_output: str
    output_tokens: int | None = None
    cum_log_prob: float | None = None
    answer: str | None = None
    has_answer: bool = False


@dataclass(frozen=True)
class _RoutedText:
    """What every routed request has besides its options: the question, ``max_tokens`` (the option, resolved
    to the deployment's default), ``stream`` (send the committee's provisional answer before the oracle's)
    and ``stop_words`` (the returned text is cut before the first one)."""

    text_input: str
    max_tokens: int
    stream: bool = False
    stop_words: tuple[str, ...] = ()

    def engine_request(self) -> EngineRequest:
        return EngineRequest(self.text_input, self.max_tokens, self.temperature, self.seed)


def _unset_value(o: RequestOption) -> Any:
    """An option's value in a request that does not set it: None, or False for a flag."""
    return False if o.datatype == BOOL else None


# One routed request: ``_RoutedText``'s fields and one per request option of ``pyramid_client.wire.REQUEST_OPTIONS``
# (its ``help`` says what it does), of the option's type, None when not set (a flag: False), e.g. ``deadline_ms``
# (anytime bound on waiting for the oracle; None: wait), ``strict`` (an oracle failure is an error rather than
# a degraded committee answer), ``task`` (None: the deployment's default). A new option needs no edit here.
PyramidRequest = make_dataclass(
    "PyramidRequest",
    [
        (o.name, o.python_type if o.datatype == BOOL else o.python_type | None, field(default=_unset_value(o)))
        for o in REQUEST_OPTIONS.values()
        if o.name != "max_tokens"
    ],
    bases=(_RoutedText,),
    frozen=True,
    namespace={"__module__": __name__},
)


@dataclass(frozen=True)
class PyramidResponse(RoutedAnswer):
    """The router's answer (``RoutedAnswer``: the fields the client reads too; ``cost`` NaN when
    unknown), the answering model's ``text_output`` and the router's wall time per step."""

    text_output: str = ""
    latency_ms: dict[str, float] = field(default_factory=dict)


def validate_text(name: str, value: str | None, limits: Limits) -> str:
    if value is None:
        raise InvalidArgument(name, "is required")
    if not value.strip():
        raise InvalidArgument(name, "must not be empty")
    if len(value) > limits.max_input_chars:
        raise InvalidArgument(name, f"is {len(value)} characters long; the limit is {limits.max_input_chars}")
    return value


def validate_max_tokens(value: int | None, limits: Limits, default: int | None = None) -> int:
    if value is None:
        if default is None:
            raise InvalidArgument("max_tokens", "is required")
        return default
    if value < REQUEST_OPTIONS["max_tokens"].lo:  # 1
        raise InvalidArgument("max_tokens", f"must be > 0, got {value}")
    if value > limits.max_tokens_cap:
        raise InvalidArgument("max_tokens", f"must be <= {limits.max_tokens_cap}, got {value}")
    return int(value)


def validate_engine_request(
    text_input: str | None,
    max_tokens: int | None,
    temperature: float | None,
    seed: int | None,
    return_log_probs: bool | None,
    limits: Limits,
) -> EngineRequest:
    text = validate_text("text_input", text_input, limits)
    mt = validate_max_tokens(max_tokens, limits)
    if temperature is not None and not (math.isfinite(temperature) and temperature >= 0):
        raise InvalidArgument("temperature", f"must be a finite number >= 0, got {temperature}")
    return EngineRequest(text, mt, temperature, seed, bool(return_log_probs))


def validate_pyramid_request(
    text_input: str | None,
    limits: Limits,
    default_max_tokens: int,
    stream: bool | None = None,
    stop_words: list[str] | None = None,
    top_p: float | None = None,
    frequency_penalty: float | None = None,
    presence_penalty: float | None = None,
    random_seed: int | None = None,
    **options: Any,
) -> PyramidRequest:
    """A routed request from the router's inputs (``None``: absent); ``options``: the request options
    (``pyramid_client.wire.REQUEST_OPTIONS``), each checked by the table (``check_option``): its range, its
    choices, its "unset" value (``deadline_ms`` 0, ``task`` ""). ``InvalidArgument`` names a bad input."""
    text = validate_text("text_input", text_input, limits)
    unknown = sorted(set(options) - set(REQUEST_OPTIONS))
    if unknown:
        raise TypeError(f"unexpected request option(s): {', '.join(unknown)}")
    seed = options.get("seed")
    if random_seed is not None:  # seed's name before Triton 2.59's OpenAI frontend
        if seed is not None and seed != random_seed:
            raise InvalidArgument(
                "random_seed", f"is seed's old name; got both, and they differ ({random_seed} != {seed})"
            )
        options["seed"] = random_seed
    for name, value in (
        ("top_p", top_p),
        ("frequency_penalty", frequency_penalty),
        ("presence_penalty", presence_penalty),
    ):
        if value is not None and value != NOOP_SAMPLING[name]:
            raise InvalidArgument(
                name, f"the engines' text API has no {name}: only {NOOP_SAMPLING[name]:g} is accepted, got {value:g}"
            )
    stops = tuple(s for s in stop_words or () if s)
    if sum(len(s) for s in stops) > limits.max_input_chars:
        raise InvalidArgument("stop_words", f"are longer than {limits.max_input_chars} characters together")
    checked: dict[str, Any] = {}
    for name in REQUEST_OPTIONS:
        if name == "max_tokens":  # its range has the deployment's cap too
            checked[name] = validate_max_tokens(options.get(name), limits, default_max_tokens)
            continue
        try:
            checked[name] = check_option(name, options.get(name))
        except ValueError as exc:
            raise InvalidArgument(name, str(exc)) from None
    # the task's name is checked by tasks.py
    set_ = {k: v for k, v in checked.items() if v is not None}  # the rest: PyramidRequest's defaults
    return PyramidRequest(text_input=text, stream=bool(stream), stop_words=stops, **set_)
