"""Transport-independent parts of the client: the typed result, the error, the request inputs.

No ``tritonclient`` import here: both transports (gRPC, HTTP) hand the client a plain
``{output name: Python scalar}`` dict per response, parsed by ``result_from_outputs``. What goes
over the wire (input and output names, datatypes, error codes) is defined in ``wire``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from . import wire
from .wire import DEADLINE_EXCEEDED, INPUT_DATATYPES, INTERNAL, INVALID_ARG, UNKNOWN


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


def timed_out(timeout_s: float) -> PyramidError:
    """The error of a call whose timeout passed before its last response."""
    return PyramidError(f"no complete response within {timeout_s:g} s", DEADLINE_EXCEEDED)


def error_from_message(message: str, code: str | int | None = None) -> PyramidError:
    """A PyramidError from a server message and its gRPC status name or HTTP status, if any
    (``wire.classify_error``: the router's ``[CODE] `` prefix, Triton's wording, then the status)."""
    code, text = wire.classify_error(message, code)
    return PyramidError(text, code)


@dataclass(frozen=True)
class PyramidResult(wire.RoutedAnswer):
    """One response of the router: the fields of ``wire.RoutedAnswer`` (answer, tier, escalated,
    confidence, agreement, agent_answers, failed_agents, calls, degraded, cost, costs, provisional,
    tokens), and

    ``text``: the answering model's text; ``latency_s``: from sending the request to this response,
    on the client; ``server_latency_ms``: the router's own wall time per step, where the server
    reports it; ``request_id``: the request's id.
    """

    text: str = ""
    latency_s: float = 0.0
    server_latency_ms: dict[str, float] = field(default_factory=dict)
    request_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def result_from_outputs(outputs: dict[str, Any], request_id: str = "", latency_s: float = 0.0) -> PyramidResult:
    """Parse one response, given as ``{output name: scalar}`` (bytes or str, bool, numbers)."""
    try:
        fields, text, steps = wire.answer_fields(outputs)
    except wire.WireError as exc:
        raise PyramidError(str(exc), INTERNAL) from None
    return PyramidResult(**fields, text=text, latency_s=latency_s, server_latency_ms=steps, request_id=request_id)


_INT_RANGES = {wire.INT32: (-(2**31), 2**31), wire.UINT64: (0, 2**64)}


def build_inputs(question: str, stream: bool = False, **options: Any) -> dict[str, Any]:
    """The request's inputs as ``{input name: Python value}``, from ``wire.REQUEST_OPTIONS`` keywords (the
    router's input names); None means "not sent".

    Values are checked by the server (which names the offending input); only what cannot be
    encoded at all (a wrong Python type) is refused here, as INVALID_ARG."""
    unknown = sorted(set(options) - set(wire.REQUEST_OPTIONS))
    if unknown:
        raise TypeError(f"unexpected keyword argument(s): {', '.join(unknown)}")
    inputs: dict[str, Any] = {"text_input": question}
    for name, option in wire.REQUEST_OPTIONS.items():
        if options.get(name) is not None:
            inputs[name] = option.python_type(options[name])
    if stream:
        inputs["stream"] = True
    for name, v in inputs.items():
        lo, hi = _INT_RANGES.get(INPUT_DATATYPES[name], (None, None))
        if lo is not None and not lo <= v < hi:
            raise PyramidError(f"invalid input '{name}': {v} does not fit in {INPUT_DATATYPES[name]}", INVALID_ARG)
    if not isinstance(question, str):
        raise PyramidError(f"invalid input 'text_input': must be a str, got {type(question).__name__}", INVALID_ARG)
    return inputs
