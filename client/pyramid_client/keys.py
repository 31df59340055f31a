"""Access keys as a client holds them: where they come from (an environment variable, or a file only its
owner can read), how they are checked, and how they are shown (never in full).

The server (``pyramid_ops.access``) puts APIs behind these keys; the clients, the gateway and the
tools present them (``wire.key_headers``: the header, or gRPC metadata). docs/SECURITY.md.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

ADMIN_KEY_ENV = "PYRAMID_ADMIN_KEY"
ADMIN_KEY_FILE_ENV = "PYRAMID_ADMIN_KEY_FILE"
INFERENCE_KEY_ENV = "PYRAMID_INFERENCE_KEY"
INFERENCE_KEY_FILE_ENV = "PYRAMID_INFERENCE_KEY_FILE"
_ALLOWED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~")


class AccessError(ValueError):
    """A key could not be read or is unusable; the message names the source and what is wrong."""


@dataclass(frozen=True)
class Key:
    """A secret header value and where it came from (``env``, ``file PATH`` or ``generated``)."""

    value: str
    source: str

    def __repr__(self) -> str:  # never the value, even in a traceback or a debug print
        return f"Key({redacted(self.value)}, from {self.source})"

    __str__ = __repr__


def redacted(value: str) -> str:
    """What may be shown of a key: its first four characters."""
    return value[:4] + "…" if len(value) > 8 else "…"


def check(value: str, source: str) -> str:
    """The key, stripped; AccessError if it cannot travel in a header or on the command line safely."""
    v = value.strip()
    if len(v) < 16:
        raise AccessError(f"the key from {source} is shorter than 16 characters")
    bad = sorted(set(v) - _ALLOWED)
    if bad:
        raise AccessError(f"the key from {source} has characters other than letters, digits and -_.~")
    return v


def read_key_file(path: Path) -> Key:
    """A key from a file that only its owner can read (like ssh's private keys)."""
    try:
        st = path.stat()
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise AccessError(f"cannot read the key file {path}: {exc.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise AccessError(f"the key file {path} is readable by others (mode {st.st_mode & 0o777:o}); chmod 600 it")
    return Key(check(text, f"file {path}"), f"file {path}")


def from_env(
    env: dict[str, str] | None = None, key_env: str = ADMIN_KEY_ENV, file_env: str = ADMIN_KEY_FILE_ENV
) -> Key | None:
    """The key named by ``$<file_env>`` (a file) or ``$<key_env>`` (the value); None if neither is set."""
    env = dict(os.environ if env is None else env)
    if env.get(file_env):
        return read_key_file(Path(env[file_env]))
    if env.get(key_env):
        return Key(check(env[key_env], f"${key_env}"), f"${key_env}")
    return None


def inference_key_from_env(env: dict[str, str] | None = None) -> Key | None:
    """The inference key of a server that puts inference behind one: ``$PYRAMID_INFERENCE_KEY_FILE`` (a
    file) or ``$PYRAMID_INFERENCE_KEY``; None if neither is set (inference open)."""
    return from_env(env, INFERENCE_KEY_ENV, INFERENCE_KEY_FILE_ENV)
