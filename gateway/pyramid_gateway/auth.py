"""API keys for the gateway (optional): ``Authorization: Bearer <key>``, as OpenAI clients send it.

Keys come from a file (``--api-keys-file``: one key per line, optionally followed by that key's
concurrency limit and then ``name=VALUE`` options; ``#`` starts a comment) and/or an environment variable
(``PYRAMID_GATEWAY_API_KEYS``: comma-separated)::

    KEY [MAX_CONCURRENT] [name=NAME] [budget=calls:N/hour|cost:X/day] [on_exhausted=committee|refuse]
        [low=F] [threshold=T]

``name``: the key's label in ``/metrics`` (letters, digits, ``_.-``; default ``key-`` and the first 8 hex digits of
the key's SHA-256, never the key); the budget options: ``budget``. A key is compared with every configured key in constant time
(``hmac.compare_digest``, no early exit), so response timing does not reveal how much of a key matched.
A missing or wrong key is a 401 in OpenAI's format. A per-key concurrency limit (``--max-concurrent-per-key``,
or the file's per-key number) answers a request over it with 429 + ``Retry-After``: one client cannot take
every engine slot.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .budget import Budget
from .errors import ApiError

ENV_VAR = "PYRAMID_GATEWAY_API_KEYS"
KEY_OPTIONS = ("name", "budget", "on_exhausted", "low", "threshold")
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
FORMAT = "KEY [MAX_CONCURRENT] [name=NAME] [budget=calls:N/hour|cost:X/day] [on_exhausted=committee|refuse] ..."


def key_label(key: bytes) -> str:
    """A key's default label in /metrics and the budget state: a short stable hash, never the key."""
    return "key-" + hashlib.sha256(key).hexdigest()[:8]


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
    label: str | None = None  # the key's label (None: no keys)

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
    labels: dict[bytes, str] = field(default_factory=dict)  # key -> its label (name= or key_label)
    budgets: dict[str, Budget] = field(default_factory=dict)  # label -> the key's budget (budgeted keys only)

    def label(self, key: bytes) -> str:
        return self.labels.get(key) or key_label(key)

    @classmethod
    def load(
        cls, path: str | Path | None = None, env: str | None = None, max_concurrent: int = 0, retry_after_s: int = 1
    ) -> KeyAuth | None:
        """Keys from ``path`` and the ``env`` value (default: $PYRAMID_GATEWAY_API_KEYS); None if there
        are none (no authentication). ValueError naming the line when the file is malformed."""
        keys: dict[bytes, int] = {}
        labels: dict[bytes, str] = {}
        budgets: dict[str, Budget] = {}
        if path is not None:
            for n, raw in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
                line = raw.split("#", 1)[0].strip()
                if not line:
                    continue
                parts = line.split()
                key, *rest = parts
                limit = int(rest.pop(0)) if rest and rest[0].isdigit() else 0
                options: dict[str, str] = {}
                for i, part in enumerate(rest, len(parts) - len(rest) + 1):
                    name, eq, value = part.partition("=")
                    if not eq or name not in KEY_OPTIONS or name in options:
                        # the field's position, not its text: a misplaced field may be a key
                        raise ValueError(f"{path}:{n}: expected '{FORMAT}', field {i} is not one of its options")
                    options[name] = value
                try:
                    label = options.get("name") or key_label(key.encode())
                    if not _NAME.fullmatch(label):
                        raise ValueError(f"name={label[:20]!r}: letters, digits and _.- only, at most 64")
                    if label in labels.values():
                        raise ValueError(f"name={label!r} names two keys")
                    if "budget" in options:
                        budgets[label] = Budget.parse(options["budget"], **options)
                    elif set(options) - {"name"}:
                        raise ValueError(f"{', '.join(sorted(set(options) - {'name'}))} without budget=")
                except ValueError as exc:
                    raise ValueError(f"{path}:{n}: {exc}") from None
                keys[key.encode()] = limit
                labels[key.encode()] = label
        value = os.environ.get(ENV_VAR, "") if env is None else env
        for k in value.split(","):
            if k.strip():
                keys.setdefault(k.strip().encode(), 0)
        if not keys:
            return None
        return cls(keys, max_concurrent, retry_after_s, labels=labels, budgets=budgets)

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
        return Lease(self, key, label=self.label(key))
