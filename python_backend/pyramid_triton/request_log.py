"""The router's per-request log: where its lines go, what they may hold, how long they stay.

Prompts and answers are user data (docs/SECURITY.md). So the log is off by default; a line holds the
routing facts only (``metrics.RequestRecord``: id, outcome, tier, confidence, latencies, failed
engines, error) unless ``request_log_content`` adds the prompt and the answer; a redaction hook sees
every record before it is written anywhere; and a log file is private and bounded.

Router parameters (the spec's ``router:`` block):

* ``request_log``: ``off`` (default) | ``verbose`` (Triton's log, printed with ``--log-verbose=1``) |
  ``info`` (Triton's log) | ``file`` (``request_log_file``, written by the router itself).
* ``request_log_file``: the file (``file`` mode). Created with mode 0600; an existing one is set to 0600.
* ``request_log_max_bytes`` (default 16 MiB): a line that would take the file past this first moves it
  to ``<file>.1`` (replacing the previous one): at most about twice this on disk.
* ``request_log_max_age_s`` (default 7 days): the file is moved to ``<file>.1`` once its first line is
  older than this, and ``<file>.1`` is deleted once its last line is. Checked when the router starts and
  whenever it writes a line (a router that writes nothing deletes nothing).
* ``request_log_content`` (default false): add the prompt (``text_input``) and the answer (``text_output``).
* ``request_log_redact``: ``"module:function"``, importable by the router's Python stub (its model
  directory, the project's ``python_backend``). Called with each record, a dict, before the line is
  written; returns the dict to write (changed as it likes) or None to drop the line. If it raises, the
  line is dropped and a warning without the record is logged: nothing is ever written unredacted.
"""

from __future__ import annotations

import importlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LEVELS = ("off", "verbose", "info", "file")
DEFAULTS: dict[str, Any] = {
    "request_log_file": "",
    "request_log_max_bytes": 16 * 1024 * 1024,
    "request_log_max_age_s": 7 * 24 * 3600.0,
    "request_log_content": False,
    "request_log_redact": "",
}
Redact = Callable[[dict[str, Any]], "dict[str, Any] | None"]


def load_hook(ref: str) -> Redact:
    """The function named ``"module:function"``; ValueError naming what is wrong."""
    mod, _, fn = ref.partition(":")
    if not mod or not fn:
        raise ValueError(f"request_log_redact must be 'module:function', got {ref!r}")
    try:
        hook = getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"request_log_redact {ref!r} cannot be loaded: {exc}") from None
    if not callable(hook):
        raise ValueError(f"request_log_redact {ref!r} is not callable")
    return hook


class BoundedFile:
    """An append-only text file with mode 0600, kept under ``max_bytes`` (one previous file beside it,
    ``<path>.1``) and ``max_age_s`` (see the module doc). ``clock``: wall time (file times are wall time)."""

    def __init__(self, path: Path, max_bytes: int, max_age_s: float, clock: Callable[[], float] = time.time) -> None:
        if max_bytes <= 0 or max_age_s <= 0:
            raise ValueError(f"request log {path}: max_bytes and max_age_s must be positive")
        self.path, self.old = path, path.with_name(path.name + ".1")
        self.max_bytes, self.max_age_s, self.clock = max_bytes, max_age_s, clock
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = -1
        self._size = 0
        self._first = 0.0  # wall time of the current file's first line
        self._open()
        self._expire(clock())

    def _open(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.fchmod(self._fd, 0o600)  # also a file that existed with a wider mode
        st = os.fstat(self._fd)
        self._size = st.st_size
        self._first = _first_line_time(self.path) if st.st_size else 0.0

    def _rotate(self) -> None:
        os.close(self._fd)
        os.replace(self.path, self.old)
        self._open()

    def _expire(self, now: float) -> None:
        if self._size and now - self._first > self.max_age_s:
            self._rotate()
        try:
            if now - self.old.stat().st_mtime > self.max_age_s:
                self.old.unlink()
        except FileNotFoundError:
            pass

    def write(self, line: str) -> None:
        data = line.encode("utf-8")
        now = self.clock()
        self._expire(now)
        if self._size and self._size + len(data) > self.max_bytes:
            self._rotate()
        os.write(self._fd, data)
        if not self._size:
            self._first = now
        self._size += len(data)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _first_line_time(path: Path) -> float:
    """When the first line of an existing log was written: its ``ts`` field, else the file's change time."""
    try:
        with open(path, encoding="utf-8") as f:
            return float(json.loads(f.readline())["ts"])
    except (OSError, ValueError, KeyError, TypeError):
        return path.stat().st_ctime


@dataclass
class RequestLog:
    """Where the router's request lines go; ``write`` applies content, redaction and bounds."""

    level: str = "off"
    content: bool = False
    redact: Redact | None = None
    file: BoundedFile | None = None
    clock: Callable[[], float] = time.time

    @classmethod
    def from_params(cls, params: Any, model: str) -> RequestLog:
        """From the router's ``config.ModelParams``; ValueError naming the parameter that is wrong."""
        level = params.get_str("request_log", "off")
        if level not in LEVELS:
            raise ValueError(f"model {model!r}: request_log must be one of {LEVELS}, got {level!r}")
        d = DEFAULTS
        redact_ref = params.get_typed("request_log_redact", d)
        log = cls(
            level,
            params.get_typed("request_log_content", d),
            load_hook(redact_ref) if redact_ref else None,
        )
        if level == "file":
            path = params.get_path("request_log_file", None)
            if path is None:
                raise ValueError(f"model {model!r}: request_log is 'file' but request_log_file is not set")
            max_bytes = params.get_typed("request_log_max_bytes", d)
            log.file = BoundedFile(path, max_bytes, params.get_typed("request_log_max_age_s", d))
        return log

    @property
    def enabled(self) -> bool:
        return self.level != "off"

    def write(
        self, record: dict[str, Any], prompt: str | None, answer: str | None, emit: Callable[[str, str], None]
    ) -> str | None:
        """Write one request's line: ``record`` (plus the prompt and answer if ``content``), through the
        redaction hook, to the file or to ``emit(level, line)`` (Triton's log). Returns what a problem was
        (the record itself is never in it), or None."""
        if not self.enabled:
            return None
        rec = {**record, "ts": round(self.clock(), 3)}  # wall time: the file's age bound reads it back
        if self.content:
            rec["text_input"], rec["text_output"] = prompt, answer
        if self.redact is not None:
            try:
                out = self.redact(rec)
            except Exception as exc:  # noqa: BLE001 - any failure of user code drops the line, unwritten
                return f"the request-log redaction hook failed ({type(exc).__name__}); the line was dropped"
            if out is None:
                return None
            rec = out
        line = json.dumps(rec, separators=(",", ":"), ensure_ascii=False)
        if self.file is not None:
            self.file.write(line + "\n")
        else:
            emit(self.level, line)
        return None
