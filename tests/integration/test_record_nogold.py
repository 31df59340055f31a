"""``pyramid record`` on plain prompts against a real tritonserver (replay profile), as a new user
would: the ``next:`` command it prints runs as printed (the router's cost facts are in sources.json),
and fits on agreement with the oracle; ``--labels gold`` is refused naming the file."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

from .conftest import AGENT_MISSING, COMMITTEE, ORACLE, SHIPPED


def _record(deployment, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYRAMID_ADMIN_KEY")}
    env["PYRAMID_ADMIN_KEY"] = deployment.admin_key.value  # the router's config is behind it
    return subprocess.run(
        [sys.executable, "-m", "pyramid_cli", "record", "--quiet", "--url", deployment.grpc_url, *args],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip


def test_plain_prompts_record_and_the_printed_next_command_runs(deployment, tmp_path):
    missing = set(AGENT_MISSING) | set(deployment.oracle_missing)
    lines = [json.loads(x) for x in (SHIPPED / "questions.jsonl").read_text().splitlines() if x.strip()]
    prompts = [q["question"] for q in lines[:90] if q["idx"] not in missing][:80]
    chat = tmp_path / "chat.jsonl"
    chat.write_text("".join(json.dumps({"messages": [{"role": "user", "content": p}]}) + "\n" for p in prompts))
    out = tmp_path / "rec"
    r = _record(deployment, "--questions", str(chat), "--out", str(out))
    assert r.returncode == 0, r.stderr
    qs = [json.loads(x) for x in (out / "questions.jsonl").read_text().splitlines()]
    assert [q["question"] for q in qs] == prompts and all(q["gold"] is None for q in qs)
    sources = json.loads((out / "sources.json").read_text())
    assert [s["name"] for s in sources] == [*COMMITTEE, ORACLE]
    assert all(s["gold_answers"] is False and s["price_usd_per_1k_tokens"] for s in sources)
    nxt = next(x for x in r.stderr.splitlines() if x.startswith("next: "))
    argv = shlex.split(nxt[len("next: ") :])
    assert argv[:2] == ["pyramid", "calibrate"] and "--cost" in argv and "--labels" in argv
    argv[argv.index("--out") + 1] = str(tmp_path / "calibration.json")
    c = subprocess.run([sys.executable, "-m", "pyramid_cli", *argv[1:]], capture_output=True, text=True, timeout=600)
    assert c.returncode == 0, c.stderr
    art = json.loads((tmp_path / "calibration.json").read_text())
    assert art["fitted_on"]["labels"] == "oracle" and art["target"]["cost_model"] == "usd"
    gold = list(argv[1:])
    gold[gold.index("--labels") + 1] = "gold"
    g = subprocess.run([sys.executable, "-m", "pyramid_cli", *gold], capture_output=True, text=True, timeout=600)
    assert g.returncode == 2 and str(out / "questions.jsonl") in g.stderr and "no gold" in g.stderr
