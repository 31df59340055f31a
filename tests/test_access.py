"""The admin key's rules (pyramid_ops.access): where it comes from, what it must look like, how it is kept
(0600 files only) and shown (never in full), and the tritonserver arguments it becomes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyramid_ops import access
from pyramid_ops.server import resolve_admin_key

KEY = "k3y-" + "x" * 30
ROOT = Path(__file__).resolve().parents[1]


def test_key_file_must_be_private(tmp_path):
    f = tmp_path / "admin-key"
    f.write_text(KEY + "\n")
    os.chmod(f, 0o640)
    with pytest.raises(access.AccessError, match="readable by others.*chmod 600"):
        access.read_key_file(f)
    os.chmod(f, 0o600)
    assert access.read_key_file(f).value == KEY
    with pytest.raises(access.AccessError, match="cannot read the key file"):
        access.read_key_file(tmp_path / "missing")


@pytest.mark.parametrize(("value", "match"), [("short", "shorter than 16"), ("x" * 20 + " y", "characters other")])
def test_unusable_keys_are_refused_naming_the_source(value, match):
    with pytest.raises(access.AccessError, match=f"{match}"):
        access.from_env({access.ADMIN_KEY_ENV: value})
    with pytest.raises(access.AccessError, match=r"\$PYRAMID_ADMIN_KEY"):
        access.from_env({access.ADMIN_KEY_ENV: value})


def test_sources_in_order_file_then_env_then_generated(tmp_path, monkeypatch):
    f = tmp_path / "k"
    access.write_key_file(access.Key("f" * 20, "test"), f)
    assert oct(f.stat().st_mode & 0o777) == "0o600"
    env = {access.ADMIN_KEY_FILE_ENV: str(f), access.ADMIN_KEY_ENV: "e" * 20}
    assert access.from_env(env).value == "f" * 20
    assert access.from_env({access.ADMIN_KEY_ENV: "e" * 20}).value == "e" * 20
    assert access.from_env({}) is None
    monkeypatch.delenv(access.ADMIN_KEY_FILE_ENV, raising=False)
    monkeypatch.delenv(access.ADMIN_KEY_ENV, raising=False)
    a, b = resolve_admin_key(None), resolve_admin_key(None)
    assert a.source == "generated" and a.value != b.value and len(a.value) >= 32
    assert resolve_admin_key(str(f)).source == f"file {f}"


def test_a_key_is_never_shown_in_full():
    k = access.Key(KEY, "test")
    assert KEY not in repr(k) and KEY not in str(k) and KEY not in f"{k}"
    assert access.redacted(KEY) == "k3y-…"


def test_restricted_arguments_and_headers():
    k = access.Key(KEY, "test")
    apis = "model-repository,model-config,shared-memory,logging,trace"
    assert access.restricted_args(k) == [
        f"--http-restricted-api={apis}:pyramid-admin-key={KEY}",
        f"--grpc-restricted-protocol={apis}:pyramid-admin-key={KEY}",
    ]
    inf = access.Key("i" * 20, "test")
    assert access.restricted_args(k, inf)[2:] == [
        f"--http-restricted-api=inference:pyramid-inference-key={'i' * 20}",
        f"--grpc-restricted-protocol=inference:pyramid-inference-key={'i' * 20}",
    ]
    assert access.http_headers(k) == {"pyramid-admin-key": KEY}
    assert access.grpc_headers(k) == {"triton-grpc-protocol-pyramid-admin-key": KEY}


def test_a_spec_can_put_inference_behind_a_key(tmp_path, monkeypatch):
    from pyramid_deploy.render import SpecError
    from pyramid_ops.server import resolve_inference_key

    base = (ROOT / "deploy" / "replay.yaml").read_text(encoding="utf-8")
    spec = tmp_path / "spec.yaml"
    for var in (access.INFERENCE_KEY_ENV, access.INFERENCE_KEY_FILE_ENV):
        monkeypatch.delenv(var, raising=False)
    spec.write_text(base, encoding="utf-8")
    assert resolve_inference_key(spec) is None and resolve_inference_key(None) is None  # open by default
    spec.write_text(base + "security:\n  inference_key: true\n", encoding="utf-8")
    assert resolve_inference_key(spec).source == "generated"
    monkeypatch.setenv(access.INFERENCE_KEY_ENV, "i" * 20)
    assert resolve_inference_key(spec).value == "i" * 20  # a key given wins over a generated one
    spec.write_text(base + "security:\n  inference_key: 'yes'\n", encoding="utf-8")
    monkeypatch.delenv(access.INFERENCE_KEY_ENV)
    with pytest.raises(access.AccessError, match="security.inference_key must be true or false"):
        resolve_inference_key(spec)
    spec.write_text(base + "security:\n  admin_key: x\n", encoding="utf-8")
    with pytest.raises(SpecError, match="security: unknown key"):
        resolve_inference_key(spec)
