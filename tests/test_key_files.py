"""Issue 27 item 6: one key file per server run, removed only by the run that wrote it (no server needed;
two real ``make serve`` runs in one OUT: tests/integration/test_lifecycle.py)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from pyramid_ops import access
from pyramid_ops.server import TritonServer, _announce_key


def _server(port: int) -> TritonServer:
    return TritonServer(Path("repo"), http_port=port)


def test_a_run_key_file_is_private_and_never_overwrites_another(tmp_path):
    path = tmp_path / "serve" / "admin-key-8000"
    mine = access.write_run_key_file(access.generate(), path)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert access.read_key_file(path).value == mine.value
    with pytest.raises(FileExistsError):
        access.write_run_key_file(access.generate(), path)
    assert access.read_key_file(path).value == mine.value  # untouched
    assert [p.name for p in path.parent.iterdir()] == ["admin-key-8000"]  # no temporary file left


def test_a_run_removes_its_own_file_only(tmp_path):
    path = tmp_path / "admin-key-8000"
    first = access.write_run_key_file(access.generate(), path)
    second = access.write_run_key_file(access.generate(), path, replace=True)  # e.g. after a killed run
    assert not access.remove_run_key_file(first)  # not first's file any more: left alone
    assert access.read_key_file(path).value == second.value
    assert access.remove_run_key_file(second) and not path.exists()
    assert not access.remove_run_key_file(second)  # gone: nothing to do


def test_a_file_rewritten_in_place_with_another_key_is_not_removed(tmp_path):
    path = tmp_path / "admin-key-8000"
    mine = access.write_run_key_file(access.generate(), path)
    path.write_text(access.generate().value + "\n")  # same inode, someone else's key
    assert not access.remove_run_key_file(mine) and path.exists()


def test_announce_refuses_the_key_file_of_a_live_server_and_replaces_a_stale_one(tmp_path, capsys):
    with socket.socket() as live:
        live.bind(("127.0.0.1", 0))
        live.listen()
        port = live.getsockname()[1]
        out = tmp_path / f"admin-key-{port}"
        theirs = access.write_run_key_file(access.generate(), out)
        mine = access.generate()
        with pytest.raises(access.AccessError, match="already running on port"):
            _announce_key("model control", access.ADMIN_HEADER, mine, out, access.ADMIN_KEY_FILE_ENV, _server(port))
        assert access.read_key_file(out).value == theirs.value
    # nothing listens there any more: the file was left by a run that is gone, and is replaced
    written = _announce_key("model control", access.ADMIN_HEADER, mine, out, access.ADMIN_KEY_FILE_ENV, _server(port))
    assert written is not None and access.read_key_file(out).value == mine.value
    assert mine.value not in capsys.readouterr().out  # shown redacted only
    assert access.remove_run_key_file(written) and not out.exists()


def test_a_key_from_a_file_or_the_environment_is_not_written(tmp_path):
    key = access.Key(access.generate().value, "$PYRAMID_ADMIN_KEY")
    out = tmp_path / "admin-key-8000"
    assert _announce_key("model control", access.ADMIN_HEADER, key, out, access.ADMIN_KEY_FILE_ENV) is None
    assert not out.exists()
