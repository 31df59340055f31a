"""The venv's ``tritonserver`` command: the nvidia-pytriton 2.51 binary, set up as its stub needs.

Installed as a console script, so that with ``.venv/bin`` first on ``PATH``

    tritonserver --model-repository model_repository

serves the committed replay repository like any Triton install. It adds what the wheel's binary
cannot find by itself (the wheel's backend directory; the environment ``server_env`` builds, which
the Python stub needs) and, unless the command line says otherwise, binds every endpoint to
loopback (a plain tritonserver listens on every interface). Everything else goes to tritonserver
unchanged. ``python -m pyramid_ops.server`` (``make serve``) is the managed way to run it.
"""

from __future__ import annotations

import os
import sys

from .server import LOOPBACK, ServerError, find_tritonserver, server_env

ADDRESS_FLAGS = ("--http-address", "--grpc-address", "--metrics-address")


def _given(args: list[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


def launch_argv(args: list[str]) -> tuple[list[str], list[str]]:
    """(the full tritonserver command line, the defaults this added): the backend directory and
    loopback addresses, each only where ``args`` does not set it."""
    binary, backends = find_tritonserver()
    added = [] if _given(args, "--backend-directory") else [f"--backend-directory={backends}"]
    added += [f"{flag}={LOOPBACK}" for flag in ADDRESS_FLAGS if not _given(args, flag)]
    return [str(binary), *added, *args], added


def main() -> int:
    try:
        argv, added = launch_argv(sys.argv[1:])
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if any(a.startswith(ADDRESS_FLAGS) for a in added):
        print(
            f"tritonserver: listening on {LOOPBACK} only (pass --http-address/--grpc-address/--metrics-address "
            "to listen elsewhere)",
            file=sys.stderr,
        )
    os.execve(argv[0], argv, server_env())
    return 0  # not reached: execve replaces this process


if __name__ == "__main__":
    sys.exit(main())
