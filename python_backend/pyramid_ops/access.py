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
from dataclasses import dataclass, field
from pathlib import Path

from pyramid_client.keys import (  # noqa: F401 - re-exported: the server's tools read keys through access
    ADMIN_KEY_ENV,
    ADMIN_KEY_FILE_ENV,
    INFERENCE_KEY_ENV,
    INFERENCE_KEY_FILE_ENV,
    AccessError,
    Key,
    check,
    from_env,
    read_key_file,
    redacted,
)
from pyramid_client.wire import ADMIN_HEADER, INFERENCE_HEADER, key_headers

# Model control and everything that can change or inspect the server's internals; inference, health,
# metadata and statistics stay open (metrics are on their own port).
ADMIN_APIS = ("model-repository", "model-config", "shared-memory", "logging", "trace")


def generate() -> Key:
    """A new random key (256 bits, URL-safe characters)."""
    return Key(secrets.token_urlsafe(32), "generated")


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
    return key_headers("http", key.value, header)


def grpc_headers(key: Key, header: str = ADMIN_HEADER) -> dict[str, str]:
    """Metadata for tritonclient.grpc calls to a restricted protocol (Triton's prefix added)."""
    return key_headers("grpc", key.value, header)


@dataclass(frozen=True)
class RunKeyFile:
    """A key file one server run wrote: removed by ``remove_run_key_file`` only while it is still that file
    (same inode, same key), so a run never deletes another run's key (issue 27 item 6)."""

    path: Path
    dev: int
    ino: int
    value: str = field(repr=False)


def write_run_key_file(key: Key, path: Path, replace: bool = False) -> RunKeyFile:
    """Write ``key`` to ``path`` (mode 0600 from the start) for this run. FileExistsError if ``path`` exists,
    unless ``replace`` (a file left by a run that is gone)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(key.value + "\n")
        st = os.stat(tmp)
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # atomic, and fails if the path exists: never overwrites another run's key
    finally:
        if tmp.exists():
            tmp.unlink()
    return RunKeyFile(path, st.st_dev, st.st_ino, key.value)


def remove_run_key_file(written: RunKeyFile) -> bool:
    """Remove the key file this run wrote, if ``path`` still is that file; whether it was removed."""
    try:
        st = os.stat(written.path)
        same = (st.st_dev, st.st_ino) == (written.dev, written.ino)
        if not same or written.path.read_text(encoding="utf-8").strip() != written.value:
            return False
        written.path.unlink()
        return True
    except OSError:
        return False
