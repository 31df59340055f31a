"""API keys for the gateway (optional): ``Authorization: Bearer <key>``, as OpenAI clients send it.

Keys come from a file (``--api-keys-file``: one key per line, optionally followed by that key's
concurrency limit; ``#`` starts a comment) and/or an environment variable (``PYRAMID_GATEWAY_API_KEYS``:
comma-separated). A key is compared with every configured key in constant time
(``hmac.compare_digest``, no early exit), so response timing does not reveal how much of a key matched.
A missing or wrong key is a 401 in OpenAI's format. A per-key concurrency limit (``--max-concurrent-per-key``,
or the file's per-key number) answers a request over it with 429 + ``Retry-After``: one client cannot take
every engine slot.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ApiError

ENV_VAR = "PYRAMID_GATEWAY_API_KEYS"


class KeyError401(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(
            401, message, type="invalid_request_error", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}
        )


@dataclass
class Lease:
    """One admitted request's hold on its key's concurrency slot; ``release`` is idempotent."""

    auth: KeyAuth | None = None
    key: bytes = b""
    released: bool = False

    def release(self) -> None:
        if not self.released and self.auth is not None:
            self.auth.in_flight[self.key] -= 1
        self.released = True

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@dataclass
class KeyAuth:
    """``keys``: key -> its concurrency limit (0: only ``max_concurrent``, itself 0 for unlimited)."""

    keys: dict[bytes, int]
    max_concurrent: int = 0
    retry_after_s: int = 1
    in_flight: dict[bytes, int] = field(default_factory=dict)

    @classmethod
    def load(
        cls, path: str | Path | None = None, env: str | None = None, max_concurrent: int = 0, retry_after_s: int = 1
    ) -> KeyAuth | None:
        """Keys from ``path`` and the ``env`` value (default: $PYRAMID_GATEWAY_API_KEYS); None if there
        are none (no authentication). ValueError naming the line when the file is malformed."""
        keys: dict[bytes, int] = {}
        if path is not None:
            for n, raw in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
                line = raw.split("#", 1)[0].strip()
                if not line:
                    continue
                parts = line.split()
                if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
                    raise ValueError(f"{path}:{n}: expected 'KEY [MAX_CONCURRENT]', got {len(parts)} fields")
                keys[parts[0].encode()] = int(parts[1]) if len(parts) == 2 else 0
        value = os.environ.get(ENV_VAR, "") if env is None else env
        for k in value.split(","):
            if k.strip():
                keys.setdefault(k.strip().encode(), 0)
        if not keys:
            return None
        return cls(keys, max_concurrent, retry_after_s)

    def _match(self, given: bytes) -> bytes | None:
        found = None
        for k in self.keys:  # every key compared: the time does not depend on which one matched
            if hmac.compare_digest(k, given):
                found = k
        return found

    def admit(self, authorization: str | None) -> Lease:
        """The request's lease, or ApiError: 401 (no / wrong key) or 429 (the key's limit reached)."""
        if not authorization:
            raise KeyError401(
                "You didn't provide an API key: send it as 'Authorization: Bearer <key>' (the OpenAI SDK's api_key)"
            )
        scheme, _, token = authorization.partition(" ")
        key = self._match(token.strip().encode()) if scheme.lower() == "bearer" else None
        if key is None:
            raise KeyError401("Incorrect API key provided")
        limit = self.keys[key] or self.max_concurrent
        busy = self.in_flight.get(key, 0)
        if limit and busy >= limit:
            raise ApiError(
                429,
                f"this API key already has {busy} request(s) in flight; its limit is {limit}",
                type="rate_limit_error",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(self.retry_after_s)},
            )
        self.in_flight[key] = busy + 1
        return Lease(self, key)
