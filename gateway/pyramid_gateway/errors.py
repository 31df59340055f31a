"""Errors in OpenAI's format (``{"error": {"message", "type", "param", "code"}}``) and the one
mapping from the router's error codes to HTTP statuses.

Why one module: every path (validation, the router, a direct engine call, Triton being down, a
client that went away) ends in ``ApiError``, so status, type and headers are decided in one place.

What an error body may say (docs/SECURITY.md, "Hostile clients"): ``ApiError`` passes every message through
``safe_message`` (server paths replaced by ``<path>``, lone surrogates escaped, at most ``MAX_MESSAGE_CHARS``) and
every ``param`` through ``clip``; where a message quotes a client's value, it quotes ``clip(value)`` (at most
``CLIP_CHARS`` characters and "..."), so an error never echoes a megabyte the client sent, nor where the
server keeps its files (a replay engine's "not found in traces /srv/..." passed through from Triton).
"""

from __future__ import annotations

import os
import re
from typing import Any

from pyramid_client import PyramidError

# HTTP status of a client that closed the connection before the answer (nginx's convention; nobody
# receives it, but logs and metrics show it).
CLIENT_CLOSED = 499

# The router's / engines' input names -> the OpenAI request field a client would fix.
_ROUTER_FIELDS = {
    "text_input": "messages",
    "max_tokens": "max_tokens",
    "temperature": "temperature",
    "seed": "seed",
    "escalation_threshold": "pyramid.escalation_threshold",
    "deadline_ms": "pyramid.deadline_ms",
    "strict": "pyramid.strict",
    "force_tier": "model",
    "task": "pyramid.task",
}
_INPUT_NAME = re.compile(r"invalid input '([a-z_]+)'")

CLIP_CHARS = 64  # how much of a client's value an error message quotes
MAX_MESSAGE_CHARS = 1024  # an error message's bound, whatever it quotes
# An absolute path whose first component is a directory at this machine's root (or a usual one): a server
# path. "/v1/models" (a URL path a client sent) is not one.
_ROOTS = frozenset(
    {"bin", "boot", "config", "data", "dev", "etc", "home", "lib", "lib64", "media", "mnt", "models", "opt",
     "proc", "repository", "root", "run", "sbin", "srv", "sys", "tmp", "usr", "var", "work", "workspace"}
)  # fmt: skip
try:
    _ROOTS = _ROOTS | frozenset(e for e in os.listdir("/") if os.path.isdir(os.path.join("/", e)))
except OSError:  # pragma: no cover - no readable root: the usual names only
    pass
_PATH = re.compile(r"(?<![\w.:/~-])/([\w.+@-]+)(?:/[\w.+@~=,-]*)*")


def clip(value: Any, limit: int = CLIP_CHARS) -> str:
    """A client's value as an error message may quote it: its text (a non-string: its repr), at most
    ``limit`` characters, then "..." when there was more."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def clip_names(names: list[str], most: int = 5) -> str:
    """Names a client chose (unknown fields, keys) as a message lists them: the first ``most``, each clipped."""
    shown = ", ".join(clip(n) for n in names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def scrub_paths(text: str) -> str:
    """``text`` with every absolute server path replaced by ``<path>``."""
    return _PATH.sub(lambda m: "<path>" if m.group(1) in _ROOTS else m.group(0), text)


def safe_message(text: str) -> str:
    """What an error body may say: no server path, no lone surrogate (a client's ``"\\ud800"`` quoted back
    would not encode as UTF-8), at most ``MAX_MESSAGE_CHARS`` characters."""
    text = scrub_paths(str(text)).encode("utf-8", "backslashreplace").decode("utf-8")
    return clip(text, MAX_MESSAGE_CHARS)


class ApiError(Exception):
    """An error answered to the client; ``param`` names the request field at fault."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",  # noqa: A002 - OpenAI's field name
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        message = safe_message(message)
        super().__init__(message)
        param = safe_message(clip(param)) if param is not None else None
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def invalid(message: str, param: str | None, code: str = "invalid_value") -> ApiError:
    """400 for a request the gateway or the router cannot honour; ``param`` names the field."""
    return ApiError(400, message, param=param, code=code)


def unavailable(message: str, retry_after_s: int) -> ApiError:
    """503 with ``Retry-After``: Triton (or the model) is not reachable or not ready."""
    return ApiError(
        503, message, type="service_unavailable", code="unavailable", headers={"Retry-After": str(retry_after_s)}
    )


def internal_error(exc: BaseException) -> ApiError:
    """A bug in the gateway, answered in OpenAI's format (500) rather than as a bare text page."""
    return ApiError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error", code="internal_error")


def deadline_exceeded(message: str) -> ApiError:
    return ApiError(504, message, type="timeout", code="deadline_exceeded")


def model_not_found(model: str, known: list[str]) -> ApiError:
    return ApiError(
        404,
        f"The model '{clip(model)}' does not exist; this server has: {', '.join(known)}",
        param="model",
        code="model_not_found",
    )


def from_pyramid(exc: PyramidError, retry_after_s: int, text_field: str = "messages") -> ApiError:
    """The HTTP error for a router / engine error code (``PyramidError.code``).

    INVALID_ARG -> 400 naming the OpenAI field; NOT_FOUND (e.g. a replay engine has no record for the
    question) -> 400, since the model exists; UNSUPPORTED (a task without a calibration) -> 400; UNAVAILABLE -> 503 + Retry-After; DEADLINE_EXCEEDED
    (the gateway's call timeout) -> 504; anything else -> 502 (the upstream failed)."""
    message = exc.message
    if exc.code == "INVALID_ARG":
        m = _INPUT_NAME.search(message)
        param = _ROUTER_FIELDS.get(m.group(1), m.group(1)) if m else None
        if param == "messages":
            param = text_field
        return invalid(message, param)
    if exc.code == "NOT_FOUND":
        return invalid(message, text_field, code="not_found")
    if exc.code == "UNSUPPORTED":  # e.g. a task this deployment has no calibration for
        return invalid(message, "pyramid.task" if "task" in message else None, code="unsupported")
    if exc.code == "UNAVAILABLE":
        return unavailable(message, retry_after_s)
    if exc.code == "DEADLINE_EXCEEDED":
        return deadline_exceeded(message)
    return ApiError(502, f"{exc.code}: {message}", type="server_error", code=exc.code.lower())
