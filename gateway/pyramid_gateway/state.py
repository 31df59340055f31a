"""What every route shares: the gateway's configuration, its one state object (``GatewayState``: the
configuration, the Triton side, the metrics, the creation time the model cards show), kept on
``app.state.pyramid`` and handed to a route by ``state`` (a FastAPI dependency, or called with the request
by the plain routes), and the error response in OpenAI's format."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request
from fastapi.responses import JSONResponse

from .auth import KeyAuth, Lease
from .budget import DEFAULT_BASE_THRESHOLD, BudgetBook
from .errors import ApiError
from .limits import DEFAULT_BODY_TIMEOUT_S, DEFAULT_MAX_BODY_BYTES
from .metrics import Metrics
from .serving import Gateway
from .upstream import Deployment


@dataclass
class GatewayConfig:
    """``triton_url``: Triton's gRPC ``host:port``; ``timeout_s``: bound on one request's route;
    ``retries``: UNAVAILABLE retries before answering 503; ``retry_after_s``: the 503's Retry-After;
    ``max_body_bytes`` / ``body_timeout_s``: a request body's bounds (``limits``: 413 / 408)."""

    triton_url: str = "localhost:8001"
    router: str = "pyramid"
    timeout_s: float = 300.0
    retries: int = 1
    retry_after_s: int = 1
    auth: KeyAuth | None = None
    deployment: Deployment | None = None  # None: read from the router's model config
    inference_key: str | None = None  # the server's inference key, where it keys inference (security.inference_key)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
    budget_state: str | None = None  # the budgets' state file (None: a restart resets the period's spend)
    budget_base_threshold: float = DEFAULT_BASE_THRESHOLD  # where a low key's threshold starts from


@dataclass
class GatewayState:
    """The app's shared state; ``serving`` is set at startup (the app's lifespan)."""

    config: GatewayConfig
    metrics: Metrics = field(default_factory=Metrics)
    created: int = field(default_factory=lambda: int(time.time()))
    serving: Gateway | None = None
    book: BudgetBook | None = None  # the keys' budgets (None: no key has one)
    book_note: str = ""  # what loading the budget state did, for the log at start

    def __post_init__(self) -> None:
        auth = self.config.auth
        if auth is None:
            return
        self.metrics.key_labels = tuple(dict.fromkeys(auth.label(k) for k in auth.keys))
        if auth.budgets:
            path = Path(self.config.budget_state) if self.config.budget_state else None
            self.book = BudgetBook(auth.budgets, path, self.config.budget_base_threshold)
            self.book_note = self.book.load()  # ValueError: an unreadable state file
            self.metrics.book = self.book

    @property
    def gateway(self) -> Gateway:
        if self.serving is None:
            raise RuntimeError("the gateway has not started (its lifespan did not run)")
        return self.serving

    def admit(self, request: Request) -> Lease:
        """The request's API-key lease (401 / 429 as ApiError); a no-op lease without keys."""
        auth = self.config.auth
        return auth.admit(request.headers.get("authorization")) if auth else Lease()


def state(request: Request) -> GatewayState:
    """The app's ``GatewayState`` (a FastAPI dependency)."""
    return request.app.state.pyramid


def error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)
