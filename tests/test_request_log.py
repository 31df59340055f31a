"""The router's request log treats prompts as user data (request_log.py, docs/SECURITY.md): off by default,
no prompt or answer unless asked, a redaction hook before anything is written, a private (0600) and bounded
file. The router is the real ``PyramidModel`` over the fake ``triton_python_backend_utils``."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import fake_pb_utils as pb
import pytest
import yaml
from test_triton_glue import Q_AGREE, Q_SPLIT, request, run
from test_triton_glue import model as glue_model  # noqa: F401 - the fixture: engines and calibration.json

from pyramid_triton.bls import PyramidModel
from pyramid_triton.request_log import BoundedFile

HOOKS = """
def redact(record):
    record["text_input"] = "[redacted]"
    return record

def drop_splits(record):
    return None if record.get("tier") == "oracle" else record

def broken(record):
    raise RuntimeError("hook bug: " + record["text_input"])
"""


def router(tmp_path, **params) -> PyramidModel:
    """The router over the glue fixture's engines and calibration, with these parameters."""
    base = {"calibration": "calibration.json", "agents": "a,b,c", "oracle": "o", **params}
    cfg = {"name": "pyramid", "parameters": {k: {"string_value": str(v)} for k, v in base.items()}}
    return PyramidModel(pb, {"model_config": json.dumps(cfg), "model_repository": str(tmp_path)})


@pytest.fixture
def hooks(tmp_path, monkeypatch):
    (tmp_path / "my_redaction.py").write_text(HOOKS, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_redaction"
    sys.modules.pop("my_redaction", None)


def _request_lines() -> list[tuple[str, str]]:
    return [(lvl, msg) for lvl, msg in pb.Logger.lines if "pyramid.request" in msg]


def test_the_request_log_is_off_by_default(glue_model, tmp_path):  # noqa: F811
    pb.Logger.lines.clear()
    m = router(tmp_path)
    run(m, request(text_input=Q_AGREE))
    assert not m.request_log.enabled and _request_lines() == []
    assert not [p for p in tmp_path.iterdir() if "log" in p.name]


def test_lines_hold_no_prompt_or_answer_unless_asked(glue_model, tmp_path):  # noqa: F811
    pb.Logger.lines.clear()
    run(router(tmp_path, request_log="info"), request(text_input=Q_AGREE))
    ((level, line),) = _request_lines()
    assert level == "info" and Q_AGREE not in line and "The answer is" not in line
    assert json.loads(line)["tier"] == "committee"
    pb.Logger.lines.clear()
    run(router(tmp_path, request_log="info", request_log_content="true"), request(text_input=Q_AGREE))
    d = json.loads(_request_lines()[0][1])
    assert d["text_input"] == Q_AGREE and d["text_output"].startswith("The answer is 4")


def test_file_log_is_private_and_redacted_before_it_is_written(glue_model, tmp_path, hooks):  # noqa: F811
    pb.Logger.lines.clear()
    path = tmp_path / "logs" / "requests.jsonl"
    path.parent.mkdir()
    path.write_text("")
    os.chmod(path, 0o644)  # an existing file with a wider mode is made private
    m = router(tmp_path, request_log="file", request_log_file="logs/requests.jsonl", request_log_content="true",
               request_log_redact=f"{hooks}:redact")  # fmt: skip
    run(m, request(text_input=Q_AGREE), request(text_input=Q_SPLIT))
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    text = path.read_text(encoding="utf-8")
    assert Q_AGREE not in text and Q_SPLIT not in text
    lines = [json.loads(x) for x in text.splitlines()]
    assert [d["text_input"] for d in lines] == ["[redacted]", "[redacted]"]
    assert {d["tier"] for d in lines} == {"committee", "oracle"}
    assert _request_lines() == []  # a file log does not also go to Triton's log


def test_a_hook_can_drop_lines_and_a_failing_hook_writes_nothing(glue_model, tmp_path, hooks):  # noqa: F811
    pb.Logger.lines.clear()
    m = router(tmp_path, request_log="info", request_log_content="true", request_log_redact=f"{hooks}:drop_splits")
    run(m, request(text_input=Q_AGREE), request(text_input=Q_SPLIT))
    assert [json.loads(line)["tier"] for _, line in _request_lines()] == ["committee"]
    pb.Logger.lines.clear()
    m = router(tmp_path, request_log="info", request_log_content="true", request_log_redact=f"{hooks}:broken")
    run(m, request(text_input=Q_AGREE))
    assert _request_lines() == []
    warnings = [msg for lvl, msg in pb.Logger.lines if lvl == "warn"]
    assert len(warnings) == 1 and "RuntimeError" in warnings[0] and Q_AGREE not in warnings[0]


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"request_log": "everything"}, "request_log must be one of"),
        ({"request_log": "file"}, "request_log_file is not set"),
        ({"request_log": "info", "request_log_redact": "no_such_module:f"}, "cannot be loaded"),
        ({"request_log": "info", "request_log_redact": "json"}, "must be 'module:function'"),
    ],
)
def test_bad_settings_fail_the_router_load_naming_the_parameter(glue_model, tmp_path, params, match):  # noqa: F811
    with pytest.raises(ValueError, match=match):
        router(tmp_path, **params)


def test_file_is_bounded_in_size(tmp_path):
    f = BoundedFile(tmp_path / "r.jsonl", max_bytes=300, max_age_s=3600)
    line = json.dumps({"ts": 1.0, "x": "y" * 40}) + "\n"
    for _ in range(100):
        f.write(line)
    f.close()
    cur, old = tmp_path / "r.jsonl", tmp_path / "r.jsonl.1"
    assert 0 < cur.stat().st_size <= 300 and 0 < old.stat().st_size <= 300
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.jsonl", "r.jsonl.1"]
    assert oct(old.stat().st_mode & 0o777) == "0o600"


def test_file_is_bounded_in_age(tmp_path):
    now = [1_000_000.0]
    f = BoundedFile(tmp_path / "r.jsonl", max_bytes=10**6, max_age_s=100, clock=lambda: now[0])
    f.write(json.dumps({"ts": now[0], "n": 1}) + "\n")
    now[0] += 101  # the first line is now too old: the file moves aside before the next line
    f.write(json.dumps({"ts": now[0], "n": 2}) + "\n")
    cur, old = tmp_path / "r.jsonl", tmp_path / "r.jsonl.1"
    assert [json.loads(x)["n"] for x in cur.read_text().splitlines()] == [2]
    assert [json.loads(x)["n"] for x in old.read_text().splitlines()] == [1]
    t1 = now[0]
    os.utime(old, (t1 - 1, t1 - 1))  # its last line was written just before the move
    now[0] = t1 + 50  # neither file too old yet
    f.write(json.dumps({"ts": now[0], "n": 3}) + "\n")
    assert old.exists()
    now[0] = t1 + 99.5  # the old file's last line is now older than max_age: deleted at the next write
    f.write(json.dumps({"ts": now[0], "n": 4}) + "\n")
    assert not old.exists()
    assert [json.loads(x)["n"] for x in cur.read_text().splitlines()] == [2, 3, 4]
    f.close()
    # a router that starts again reads the file's age from its first line and moves it aside
    now[0] = t1 + 1000
    BoundedFile(cur, max_bytes=10**6, max_age_s=100, clock=lambda: now[0]).close()
    assert cur.stat().st_size == 0
    assert [json.loads(x)["n"] for x in old.read_text().splitlines()] == [2, 3, 4]


def test_the_spec_sets_the_request_log(tmp_path):
    """The spec's router block reaches the router's config (render.py, deploy/templates/pyramid)."""
    from pyramid_deploy.render import render

    root = Path(__file__).resolve().parents[1]
    spec = yaml.safe_load((root / "deploy" / "replay.yaml").read_text(encoding="utf-8"))
    spec["engine"]["traces"] = str(root / "data" / "gsm8k")
    spec.pop("calibration")
    spec["router"].update(request_log="file", request_log_file="/var/log/pyramid/requests.jsonl",
                          request_log_max_bytes=1000, request_log_content=True, request_log_redact="my_hooks:redact")  # fmt: skip
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec), encoding="utf-8")
    render(tmp_path / "spec.yaml", tmp_path / "repo", calibration=root / "deploy" / "replay.calibration.json")
    text = (tmp_path / "repo" / "pyramid" / "config.pbtxt").read_text(encoding="utf-8")
    params = dict(re.findall(r'key: "(request_log[a-z_]*)" value: \{ string_value: "([^"]*)" \}', text))
    assert params == {
        "request_log": "file",
        "request_log_file": "/var/log/pyramid/requests.jsonl",
        "request_log_max_bytes": "1000",
        "request_log_max_age_s": str(7 * 24 * 3600.0),
        "request_log_content": "true",
        "request_log_redact": "my_hooks:redact",
    }
