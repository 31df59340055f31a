"""``pyramid record`` against a real tritonserver serving the CPU replay profile.

The replay engines serve the shipped traces (one agent and the oracle with a few records
dropped, see conftest), so what ``record`` writes can be compared line by line with the traces
the engines serve from, and the result must be a trace directory ``pyramid calibrate`` accepts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import AGENT_MISSING, COMMITTEE, FAULTY_AGENT, ORACLE, SHIPPED

QUESTIONS = SHIPPED / "questions.jsonl"


def _record(*args: str, key=None) -> subprocess.CompletedProcess:
    """``pyramid record``; ``key``: the deployment's admin key, given as a user would ($PYRAMID_ADMIN_KEY),
    for reading the router's and the engines' configs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYRAMID_ADMIN_KEY")}
    if key is not None:
        env["PYRAMID_ADMIN_KEY"] = key.value
    return subprocess.run(
        [sys.executable, "-m", "pyramid_cli", "record", "--quiet", *args],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _clean_idx(deployment, n: int) -> list[int]:
    """The first ``n`` question ids every engine has a record for."""
    missing = set(AGENT_MISSING) | set(deployment.oracle_missing)
    return [i for i in range(n + len(missing) + 5) if i not in missing][:n]


def test_record_over_grpc_matches_the_served_traces_and_calibrates(deployment, tmp_path):
    out = tmp_path / "rec"
    idx = _clean_idx(deployment, 80)
    args = ["--url", deployment.grpc_url, "--questions", str(QUESTIONS), "--idx", ",".join(map(str, idx))]
    # the router's config (who the committee is) is behind the admin key: without it, a clear refusal
    r = _record(*args, "--out", str(tmp_path / "nokey"))
    assert r.returncode == 1 and "refused" in r.stderr and "PYRAMID_ADMIN_KEY_FILE" in r.stderr, r.stderr
    r = _record(*args, "--out", str(out), key=deployment.admin_key)
    assert r.returncode == 0, r.stderr
    assert "from router pyramid" in r.stderr and "next: pyramid calibrate" in r.stderr
    assert [q["idx"] for q in _lines(out / "questions.jsonl")] == idx
    sources = json.loads((out / "sources.json").read_text())
    assert [s["name"] for s in sources] == [*COMMITTEE, ORACLE]
    assert [s["role"] for s in sources] == ["agent"] * 3 + ["oracle"]
    for name in [*COMMITTEE, ORACLE]:
        served = {x["idx"]: x["samples"][0] for x in _lines(deployment.traces / "traces" / f"{name}.jsonl")}
        got = _lines(out / "traces" / f"{name}.jsonl")
        assert [x["idx"] for x in got] == idx  # sorted, one line per question
        for x in got:
            s, want = x["samples"][0], served[x["idx"]]
            assert (s["text"], s["answer"], s["output_tokens"]) == (want["text"], want["answer"], want["output_tokens"])

    cal = tmp_path / "cal.json"
    c = subprocess.run(
        [sys.executable, "-m", "pyramid_moa", "calibrate", "--traces", str(out), "--committee", ",".join(COMMITTEE),
         "--oracle", ORACLE, "--cost", "usd", "--features", "symmetric", "--no-arbiter", "--out", str(cal),
         "--price", f"{COMMITTEE[0]}=0.0015,0.002", "--price", f"{COMMITTEE[1]}=0.0015,0.002",
         "--price", f"{COMMITTEE[2]}=0.0015,0.002", "--price", f"{ORACLE}=0.03,0.06"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert c.returncode == 0, c.stderr
    assert json.loads(cal.read_text())["committee"] == COMMITTEE


def test_failed_calls_are_left_out_reported_and_retried_by_resume(deployment, tmp_path):
    out = tmp_path / "rec"
    key = deployment.admin_key
    r = _record("--url", deployment.grpc_url, "--questions", str(QUESTIONS), "--n", "14", "--out", str(out), key=key)
    assert r.returncode == 1  # FAULTY_AGENT has no record for AGENT_MISSING: NOT_FOUND
    assert f"error: {FAULTY_AGENT} on idx {AGENT_MISSING[0]}: NOT_FOUND" in r.stderr
    faulty = [x["idx"] for x in _lines(out / "traces" / f"{FAULTY_AGENT}.jsonl")]
    assert faulty == [i for i in range(14) if i not in AGENT_MISSING]
    assert len(_lines(out / "traces" / f"{ORACLE}.jsonl")) == 14 - len([i for i in deployment.oracle_missing if i < 14])

    # Without --resume a non-empty --out is refused; with it only what is missing is asked again.
    assert (
        _record(
            "--url", deployment.grpc_url, "--questions", str(QUESTIONS), "--n", "20", "--out", str(out), key=key
        ).returncode
        == 2
    )
    r2 = _record(
        "--url", deployment.grpc_url, "--questions", str(QUESTIONS), "--n", "20", "--out", str(out), "--resume", key=key
    )
    assert r2.returncode == 1 and r2.stderr.count(f"error: {FAULTY_AGENT}") == len(AGENT_MISSING)
    assert [x["idx"] for x in _lines(out / "traces" / f"{COMMITTEE[1]}.jsonl")] == list(range(20))
    assert [q["idx"] for q in _lines(out / "questions.jsonl")] == list(range(20))


def test_no_next_command_when_nothing_was_recorded(deployment, tmp_path):
    """Every call failed (the replay engines know none of these prompts): exit 1 saying so, and no
    ``next:`` line to calibrate on nothing."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a prompt nobody recorded\nanother one\n", encoding="utf-8")
    out = tmp_path / "rec"
    r = _record("--url", deployment.grpc_url, "--questions", str(prompts), "--out", str(out), key=deployment.admin_key)
    assert r.returncode == 1 and "no call succeeded" in r.stderr and "--resume" in r.stderr
    assert "next:" not in r.stderr


def test_record_over_http_with_named_models(deployment, tmp_path):
    out = tmp_path / "rec"
    idx = _clean_idx(deployment, 6)
    r = _record("--url", f"http://{deployment.http_url}", "--questions", str(QUESTIONS), "--idx",
                ",".join(map(str, idx)), "--committee", ",".join(COMMITTEE[1:]), "--oracle", ORACLE,
                "--params", f"{ORACLE}=1760", "--out", str(out))  # fmt: skip
    assert r.returncode == 0, r.stderr
    sources = json.loads((out / "sources.json").read_text())
    assert [s["name"] for s in sources] == [*COMMITTEE[1:], ORACLE] and sources[-1]["params_b"] == 1760
    assert [x["idx"] for x in _lines(out / "traces" / f"{ORACLE}.jsonl")] == idx


def test_gsm8k_format_and_usage_errors(tmp_path):
    from pyramid_cli.record import load_questions

    raw = tmp_path / "train.jsonl"
    raw.write_text(
        json.dumps({"question": "2+2?", "answer": "2+2=<<2+2=4>>4\n#### 4"})
        + "\n"
        + json.dumps({"question": "1,000 + 1?", "answer": "#### 1,001"})
        + "\n"
    )
    qs = load_questions(raw)
    assert [(q.idx, q.question, q.gold) for q in qs] == [(0, "2+2?", "4"), (1, "1,000 + 1?", "1001")]
    assert load_questions(QUESTIONS)[0].idx == 0
    r = _record("--questions", str(raw), "--out", str(tmp_path / "o"), "--committee", "a")
    assert r.returncode == 2 and "--committee and --oracle go together" in r.stderr
    r = _record("--questions", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "cannot read" in r.stderr


@pytest.mark.parametrize("flag", ["--params", "--price"])
def test_overrides_must_name_recorded_models(tmp_path, flag):
    from pyramid_cli.gsm8k import UsageError
    from pyramid_cli.record import _overrides

    with pytest.raises(UsageError, match="not one of the recorded models"):
        _overrides(["x=1" if flag == "--params" else "x=1,2"], flag, 1 if flag == "--params" else 2, ["a"])


def test_engine_info_reads_the_rendered_trtllm_ensemble(tmp_path, monkeypatch):
    """sources.json gets the model behind a TensorRT-LLM engine and its size from the ensemble's config."""
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2 as mc

    from pyramid_cli import record
    from pyramid_deploy.render import render

    from .conftest import ROOT

    repo = render(ROOT / "deploy" / "gpu-8x80gb.yaml", tmp_path / "repo", engines_only=True).out

    def fake_config(protocol, url, model, timeout_s=10.0):
        cfg = mc.ModelConfig()
        text_format.Parse((repo / model / "config.pbtxt").read_text(), cfg)
        return json_format.MessageToDict(cfg, preserving_proto_field_name=True)

    monkeypatch.setattr(record, "model_config", fake_config)
    info = record.engine_info("grpc", "x:1", "llama-3.1-70b-instruct")
    assert info == {"model": "meta-llama/Llama-3.1-70B-Instruct", "params_b": pytest.approx(70.55, abs=0.01)}
