"""The one retry rule of every call this project makes to a Triton server: the client's requests,
``pyramid record``'s engine calls and the router's calls to engines on other servers
(``pyramid_triton.remote``).

- Only a failure that says nothing was served is retried (UNAVAILABLE: nothing listening, a
  connection refused or reset, a server not ready), and only if no response had arrived: a
  request that was answered in part is never sent again.
- At most ``retries`` times, after ``backoff_s * 2**(k-1)`` seconds (at most ``max_backoff_s``)
  following failed attempt ``k``,
- and only while the call's deadline leaves room for that wait.

``Attempts`` runs one call under a ``RetryPolicy``, in a thread or in asyncio::

    tries = Attempts(policy, deadline)
    for _ in tries:                   # async for, in a coroutine: it sleeps with asyncio
        with tries:                   # decides on an exception: raised, or retried
            for response in send():
                tries.answered = True
                ...
            return
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from .types import PyramidError
from .wire import UNAVAILABLE

# (the error to raise, whether it may be retried) of an exception, or None: not a failure of the
# call (it propagates as it is).
Classify = Callable[[Exception, int], "tuple[BaseException, bool] | None"]
RetryHook = Callable[[int, Any, float], None]


class RetryPolicy:
    """How often and how long apart a call is retried."""

    def __init__(self, retries: int = 3, backoff_s: float = 0.25, max_backoff_s: float = 4.0) -> None:
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.retries, self.backoff_s, self.max_backoff_s = int(retries), backoff_s, max_backoff_s

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based)."""
        return min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))

    def delay(self, attempt: int, retryable: bool, deadline: float | None) -> float | None:
        """The wait before attempt ``attempt + 1``, or None: no retry (not retryable, no retries
        left, or the ``time.monotonic()`` deadline would pass while waiting)."""
        if not retryable or attempt > self.retries:
            return None
        wait = self.backoff(attempt)
        if deadline is not None and time.monotonic() + wait >= deadline:
            return None
        return wait


UNCAPPED = math.inf  # ``max_backoff_s`` of a policy whose waits only double


def client_failure(exc: Exception, attempt: int) -> tuple[PyramidError, bool] | None:
    """The client's classification: a ``PyramidError`` (which learns its ``attempts``), retried when
    UNAVAILABLE; anything else is not a failure of the call."""
    if not isinstance(exc, PyramidError):
        return None
    exc.attempts = attempt
    return exc, exc.code == UNAVAILABLE


class Attempts:
    """The attempts of one call, until ``deadline`` (``time.monotonic()``; None: no deadline).

    ``classify`` tells failures from other exceptions (default ``client_failure``); ``on_retry(attempt,
    error, wait)`` is called before each retry; ``sleep`` waits (default ``time.sleep`` when iterated,
    ``asyncio.sleep`` when iterated with ``async for``). ``answered``: set it when a response arrived
    (such an attempt is not retried)."""

    def __init__(
        self,
        policy: RetryPolicy,
        deadline: float | None,
        classify: Classify = client_failure,
        on_retry: RetryHook | None = None,
        sleep: Callable[[float], Any] | None = None,
    ) -> None:
        self.policy, self.deadline, self.classify, self.on_retry, self.sleep = (
            policy, deadline, classify, on_retry, sleep,
        )  # fmt: skip
        self.attempt = 0
        self.answered = False
        self._wait: float | None = None

    def _next(self) -> float | None:
        """Seconds to wait before the next attempt (0 before the first); None: there is none (the
        last attempt did not fail, or its failure was raised)."""
        if self.attempt and self._wait is None:
            return None
        wait, self._wait = self._wait or 0.0, None
        self.attempt += 1
        self.answered = False
        return wait

    def __iter__(self) -> Iterator[int]:
        while (wait := self._next()) is not None:
            if wait:
                (self.sleep or time.sleep)(wait)
            yield self.attempt

    async def __aiter__(self) -> AsyncIterator[int]:
        while (wait := self._next()) is not None:
            if wait:
                await (self.sleep or asyncio.sleep)(wait)
            yield self.attempt

    def __enter__(self) -> Attempts:
        return self

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: Any) -> bool:
        if not isinstance(exc, Exception):
            return False  # no exception, or one that ends the call (cancellation, generator exit)
        failure = self.classify(exc, self.attempt)
        if failure is None:
            return False
        error, retryable = failure
        self._wait = self.policy.delay(self.attempt, retryable and not self.answered, self.deadline)
        if self._wait is None:
            if error is exc:
                return False
            raise error from None
        if self.on_retry is not None:
            self.on_retry(self.attempt, error, self._wait)
        return True  # the next attempt follows, after the wait
