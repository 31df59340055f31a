"""OpenAI request types the gateway accepts, and how each field maps to the router's text API.

Rules (README "OpenAI-compatible API"):

* honoured: ``model``, ``messages`` / ``prompt``, ``max_tokens`` (or ``max_completion_tokens``),
  ``temperature``, ``seed`` (the engines' text API), ``stop`` (cut out of the returned text: the engines'
  text API has no stop input), ``stream``, ``stream_options.include_usage``, ``user`` (no effect: an
  end-user id for the caller's own bookkeeping);
* accepted at their no-op value only: ``n=1``, ``top_p=1``, ``presence_penalty=0``,
  ``frequency_penalty=0``, ``logit_bias={}``, ``logprobs=false``, ``response_format={"type": "text"}``,
  ``store=false``, ``echo=false``, ``best_of=1``; anything else there is a 400 naming the field;
* ``tools`` / ``functions`` and the rest of OpenAI's fields: a 400 naming them (never a silent ignore);
* ``pyramid`` (the SDK's ``extra_body``): the router's request options that ``pyramid_client.wire.REQUEST_OPTIONS``
  places there (``escalation_threshold``, ``deadline_ms``, ``strict``, ``task``), under their names, in their ranges
  (``PyramidOptions`` is built from that table, and so are the ranges of ``max_tokens``, ``temperature``, ``seed``);
  unknown keys are a 400 naming them. One more there is the gateway's own, not a router input: ``provisional``
  (``PROVISIONAL``: what a provisional answer becomes).

Why pydantic: FastAPI's own validation layer, so a wrong type or an unknown field is reported
with its location, which becomes the error's ``param``. Strict types: ``max_tokens: true`` or
``stream: "yes"`` is a 400, not coerced to 1 / True (an int is still accepted for a float field).

Before validation, ``check_json`` refuses (400, naming the field) JSON nested deeper than ``MAX_DEPTH`` and a
string that is not text: a lone surrogate (``"\\ud800"``) is valid JSON but cannot be encoded as UTF-8 for
Triton.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from pyramid_client.wire import NOOP_SAMPLING, REQUEST_OPTIONS

from .errors import ApiError, clip, clip_names, invalid

# The request options an OpenAI request carries in ``pyramid`` (``extra_body``), from the table.
PYRAMID_KEYS = tuple(name for name, o in REQUEST_OPTIONS.items() if o.openai == "pyramid")
MAX_STOP = 4  # OpenAI's limit on stop sequences
MAX_DEPTH = 32  # JSON nesting: an OpenAI request needs 5 (messages[i].content[j].text)
_SURROGATE = re.compile(r"[\ud800-\udfff]")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = False


def option_field(name: str) -> Any:
    """A pydantic field for request option ``name``, unset by default, in the table's range (the gateway's one
    check of it)."""
    lo, hi = REQUEST_OPTIONS[name].bounds()
    return Field(None, ge=lo, le=hi)


def _option_type(name: str) -> Any:
    o = REQUEST_OPTIONS[name]
    return (Literal[o.choices] if o.choices else o.python_type) | None  # type: ignore[valid-type]


# The gateway's own ``pyramid`` option: what it does with a provisional answer (``deadline_ms`` passed before the
# oracle answered): "allow" returns it, marked provisional; "error" answers 504 instead (a stream: an error
# event). Unset: "error" under ``strict`` (the router's option: an oracle failure is an error), as the gateway
# did before this option had its own name, else "allow".
PROVISIONAL = ("allow", "error")


def refuses_provisional(options: Any) -> bool:
    """Whether a provisional answer is refused (504) under these ``PyramidOptions``."""
    return options.provisional == "error" if options.provisional else bool(options.strict)


PyramidOptions = create_model(  # type: ignore[call-overload]
    "PyramidOptions",
    __config__=ConfigDict(extra="forbid", strict=True),
    __doc__='Per-request routing (``extra_body={"pyramid": {...}}``): the router\'s inputs of the same name.',
    **{name: (_option_type(name), option_field(name)) for name in PYRAMID_KEYS},
    provisional=(Literal[PROVISIONAL] | None, None),  # type: ignore[valid-type]
)


class _Common(BaseModel):
    """Fields shared by both endpoints."""

    model_config = ConfigDict(extra="forbid", strict=True)
    model: str
    max_tokens: int | None = option_field("max_tokens")
    temperature: float | None = option_field("temperature")
    seed: int | None = option_field("seed")
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    pyramid: PyramidOptions | None = None  # type: ignore[valid-type]
    # Accepted only at their no-op value (checked in ``unsupported``).
    n: int | None = None
    top_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None

    def stops(self) -> list[str]:
        """The stop sequences, empty ones dropped (OpenAI ignores them too)."""
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        if len(stops) > MAX_STOP:
            raise invalid(f"at most {MAX_STOP} stop sequences are allowed, got {len(stops)}", "stop")
        return [s for s in stops if s]

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def options(self) -> Any:  # PyramidOptions
        return self.pyramid or PyramidOptions()


class ChatCompletionRequest(_Common):
    messages: list[Any]
    max_completion_tokens: int | None = option_field("max_tokens")
    logprobs: bool | None = None
    top_logprobs: int | None = None
    response_format: dict[str, Any] | None = None
    store: bool | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    functions: list[Any] | None = None
    function_call: Any = None


class CompletionRequest(_Common):
    prompt: str | list[str]
    logprobs: int | None = None
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = None


Kind = Literal["chat", "completion"]

# field -> (allowed no-op value, why it cannot be honoured)
_NOOP: dict[str, tuple[Any, str]] = {
    "n": (1, "one choice per request: the router returns one answer (n must be 1)"),
    # the router's own rule for these (Triton's OpenAI frontend sends them to it): wire.NOOP_SAMPLING
    **{k: (v, f"the engines' text API has no {k} (only {v:g} is accepted)") for k, v in NOOP_SAMPLING.items()},
    "logprobs": (False, "log-probabilities are not returned: the router answers with a vote, not tokens"),
    "top_logprobs": (0, "log-probabilities are not returned"),
    "store": (False, "this server stores no completions"),
    "echo": (False, "echo is not supported"),
    "suffix": ("", "suffix (insertion) is not supported"),
    "best_of": (1, "best_of must be 1: the router returns one answer"),
}
_UNSUPPORTED = {
    "tools": "tools / function calling are not supported: the router answers questions with text",
    "tool_choice": "tools / function calling are not supported",
    "parallel_tool_calls": "tools / function calling are not supported",
    "functions": "functions / function calling are not supported",
    "function_call": "functions / function calling are not supported",
}


def _unsupported(req: _Common) -> None:
    """400 for a field set to something the gateway cannot honour."""
    for name, why in _UNSUPPORTED.items():
        v = getattr(req, name, None)
        if v is not None and v != []:
            raise invalid(f"'{name}': {why}", name, code="unsupported_parameter")
    for name, (noop, why) in _NOOP.items():
        if name not in req.model_fields_set:
            continue
        v = getattr(req, name)
        if v is None or v == noop or (name == "logprobs" and v in (0, False)):
            continue
        raise invalid(f"'{name}'={clip(json.dumps(v))} cannot be honoured: {why}", name, code="unsupported_parameter")
    if req.logit_bias:
        raise invalid("'logit_bias' cannot be honoured: the engines' text API has no logit bias", "logit_bias")
    fmt = getattr(req, "response_format", None)
    if fmt is not None and fmt.get("type") != "text":
        raise invalid(
            f"response_format {clip(json.dumps(fmt))} cannot be honoured: only {{'type': 'text'}}", "response_format"
        )


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{clip(part)}" if out else clip(part))
    return out


_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}:]')


def too_deep(raw: bytes) -> ApiError:
    """The 400 for a body too deep for the JSON decoder itself (``RecursionError``), naming the top-level field
    that nests too deep: found by a scan of its brackets outside strings, which stops at ``MAX_DEPTH``."""
    depth, key, last = 0, None, None
    for m in _TOKEN.finditer(raw):
        t = m.group()
        if t in (b"[", b"{"):
            depth += 1
            if depth > MAX_DEPTH:
                break
        elif t in (b"]", b"}"):
            depth -= 1
        elif t == b":":
            key = last if depth == 1 else key
        else:
            last = t
    field = None
    if key is not None:
        try:
            field = clip(json.loads(key))
        except ValueError:
            field = None
    return invalid(f"the request body is nested more than {MAX_DEPTH} levels deep", field)


def check_json(body: Any) -> None:
    """400 naming the place for JSON nested deeper than ``MAX_DEPTH`` or a string (value or key) holding a
    lone surrogate; iterative, so no depth can overflow the stack."""
    stack: list[tuple[Any, tuple[Any, ...]]] = [(body, ())]
    while stack:
        value, loc = stack.pop()
        if len(loc) > MAX_DEPTH:
            field = _loc(loc[:1]) if isinstance(loc[0], str) else None
            raise invalid(f"the request body is nested more than {MAX_DEPTH} levels deep", field)
        if isinstance(value, str):
            if _SURROGATE.search(value):
                where = _loc(loc) or None
                raise invalid(f"'{where}' is not valid text: it holds a lone UTF-16 surrogate", where)
        elif isinstance(value, dict):
            for k, v in value.items():
                if _SURROGATE.search(k):
                    raise invalid(
                        "a key in the request is not valid text: it holds a lone UTF-16 surrogate", _loc(loc) or None
                    )
                stack.append((v, (*loc, k)))
        elif isinstance(value, list):
            stack.extend((v, (*loc, i)) for i, v in enumerate(value))


def _from_validation(exc: ValidationError) -> ApiError:
    """One 400 for pydantic's errors: unknown fields first (all named), else the first bad field."""
    errors = exc.errors()
    extra = [e for e in errors if e["type"] == "extra_forbidden"]
    if extra:
        top = [_loc(e["loc"]) for e in extra if len(e["loc"]) == 1]
        nested = [e for e in extra if len(e["loc"]) > 1]
        if top:
            return invalid(
                f"Unrecognized request argument(s) supplied: {clip_names(top)}", top[0], code="unknown_parameter"
            )
        parent = _loc(nested[0]["loc"][:-1])
        names = [str(e["loc"][-1]) for e in nested if _loc(e["loc"][:-1]) == parent]
        known = (*PYRAMID_KEYS, "provisional") if parent == "pyramid" else ()
        hint = f"; known: {', '.join(known)}" if known else ""
        return invalid(f"unknown key(s) in '{parent}': {clip_names(names)}{hint}", parent, code="unknown_parameter")
    e = errors[0]
    where = _loc(e["loc"])
    if e["type"] == "missing":
        return invalid(f"'{where}' is required", where, code="missing_required_parameter")
    got = e.get("input")
    shown = clip(json.dumps(got)) if isinstance(got, (int, float, str, bool, type(None))) else type(got).__name__
    return invalid(f"invalid '{where}' ({shown}): {e['msg']}", where)


def parse_request(kind: Kind, body: Any) -> ChatCompletionRequest | CompletionRequest:
    """Validate a decoded JSON body; ApiError (400, naming the field) when it cannot be served."""
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object", None)
    model_cls = ChatCompletionRequest if kind == "chat" else CompletionRequest
    try:
        req = model_cls.model_validate(body)
    except ValidationError as exc:
        raise _from_validation(exc) from None
    _unsupported(req)
    if isinstance(req, ChatCompletionRequest) and req.max_completion_tokens is not None:
        if req.max_tokens is not None and req.max_tokens != req.max_completion_tokens:
            raise invalid("max_tokens and max_completion_tokens differ; set one", "max_completion_tokens")
        req.max_tokens = req.max_completion_tokens
    req.stops()  # checked here, before any model is called
    return req


def prompt_text(req: CompletionRequest) -> str:
    """The completion endpoint's question: the prompt, verbatim (a list of exactly one string)."""
    p = req.prompt
    if isinstance(p, list):
        if len(p) != 1:
            raise invalid(f"one prompt per request (got {len(p)}): the router returns one answer", "prompt")
        p = p[0]
    if not p.strip():
        raise invalid("'prompt' must not be empty", "prompt")
    return p
