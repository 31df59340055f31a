"""Who may control the server: the admin key that guards tritonserver's model-control APIs.

Triton's repository API can load a model with a config override and model files sent in the
request body, which is code execution on the server (NVIDIA, "Secure Deployment Considerations").
tritonserver 2.51 can put API groups behind a header (``--http-restricted-api`` and
``--grpc-restricted-protocol``, both ``<groups>:<header>=<value>``). Measured on 2.51 (docs/SECURITY.md,
tests/integration/test_security.py):

* HTTP: a request without the header (or with a wrong value) gets 403
  ``This API is restricted, expecting header 'pyramid-admin-key'``.
* gRPC: the metadata key is ``triton-grpc-protocol-<header>`` (Triton adds the prefix), and a refused
  call fails with status UNAVAILABLE (not PERMISSION_DENIED) and the same kind of message.

The key is never printed in full nor logged: ``redacted`` shows its first four characters. It does
stand on tritonserver's command line (2.51 reads it from nowhere else), so local users who can read
``/proc/PID/cmdline`` of the server can read it; docs/SECURITY.md says what that means.
"""

from __future__ import annotations

import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

ADMIN_HEADER = "pyramid-admin-key"
INFERENCE_HEADER = "pyramid-inference-key"
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"  # tritonserver 2.51 expects gRPC metadata under this prefix
# Model control and everything that can change or inspect the server's internals; inference, health,
# metadata and statistics stay open (metrics are on their own port).
ADMIN_APIS = ("model-repository", "model-config", "shared-memory", "logging", "trace")
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


def generate() -> Key:
    """A new random key (256 bits, URL-safe characters)."""
    return Key(secrets.token_urlsafe(32), "generated")


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


def write_key_file(key: Key, path: Path) -> None:
    """Write ``key`` to ``path`` with mode 0600 from the start (never readable by others, not even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(key.value + "\n")
    os.replace(tmp, path)


def inference_key_wanted(spec: dict, where: str) -> bool:
    """A deployment spec's ``security: {inference_key: true}``: inference needs a key too."""
    v = (spec.get("security") or {}).get("inference_key", False)
    if not isinstance(v, bool):
        raise AccessError(f"{where}: security.inference_key must be true or false, got {v!r}")
    return v


def restricted_args(admin: Key, inference: Key | None = None) -> list[str]:
    """tritonserver arguments that put the admin APIs (and inference, if keyed) behind their headers."""
    groups = [(",".join(ADMIN_APIS), ADMIN_HEADER, admin.value)]
    if inference is not None:
        groups.append(("inference", INFERENCE_HEADER, inference.value))
    out = []
    for apis, header, value in groups:
        out += [f"--http-restricted-api={apis}:{header}={value}", f"--grpc-restricted-protocol={apis}:{header}={value}"]
    return out


def http_headers(key: Key, header: str = ADMIN_HEADER) -> dict[str, str]:
    """Headers for tritonclient.http (or urllib) calls to a restricted API."""
    return {header: key.value}


def grpc_headers(key: Key, header: str = ADMIN_HEADER) -> dict[str, str]:
    """Metadata for tritonclient.grpc calls to a restricted protocol (Triton's prefix added)."""
    return {GRPC_HEADER_PREFIX + header: key.value}
