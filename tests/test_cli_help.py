"""What a newcomer meets on the command line first: defaults in ``--help``, a cost model the shipped
traces can price without being told, a warning when the fit has too few questions, and ``pyramid
inspect`` on the shipped traces and calibration."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pyramid_cli.inspect_cmd import main as inspect_main
from pyramid_moa.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "data" / "gsm8k"
COMMITTEE = "faithfulcot_gpt-3.5-turbo_COT,reread_gpt-3.5-turbo_re2_cot,faithfulcot_gpt-3.5-turbo_noNL"
ORACLE = "faithfulcot_gpt4_COT"


def test_help_shows_defaults():
    parser = build_parser()
    sub = next(a for a in parser._actions if hasattr(a, "choices") and a.choices and "evaluate" in a.choices)
    text = sub.choices["evaluate"].format_help()
    assert "(default: 5)" in " ".join(text.split())  # --folds
    assert "(default: logistic)" in " ".join(text.split())  # --calibrator
    assert "(default: None)" not in text and "(default: False)" not in text


def test_calibrate_prices_what_the_traces_can_and_warns_on_few_questions(tmp_path):
    """The shipped sources have dollar prices and no sizes: without --cost, dollars (flops used to be the
    default, and failed on them); 66 fitting questions get the warning naming what to do."""
    out = tmp_path / "calib.json"
    r = subprocess.run(
        [sys.executable, "-m", "pyramid_cli", "calibrate", "--traces", str(SHIPPED), "--committee", COMMITTEE,
         "--oracle", ORACLE, "--fit-fraction", "0.05", "--max-depth", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(out.read_text())["target"]["cost_model"] == "usd"
    assert "warning: fitting on 66 questions" in r.stderr and "pyramid record --n" in r.stderr


def test_calibrate_without_any_priceable_cost_model_names_the_flags(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "pyramid_cli", "calibrate", "--traces", str(SHIPPED), "--committee",
         "faithfulcot_gpt-3.5-turbo_COT,tora_70b", "--oracle", ORACLE, "--out", str(tmp_path / "c.json")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 2 and "--params" in r.stderr and "--price" in r.stderr
    assert not (tmp_path / "c.json").exists()


def test_inspect_traces_and_calibration(capsys):
    assert inspect_main(["--json", str(SHIPPED), str(ROOT / "deploy" / "replay.calibration.json")]) == 0
    traces, cal = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert traces["questions"] == traces["with_gold"] == 1319
    row = next(r for r in traces["sources"] if r["source"] == ORACLE)
    assert row["usd_per_1k"] == [0.03, 0.06] and row["answered"] == 1319
    (task,) = cal["tasks"]
    assert task["oracle"] == ORACLE and task["cost_model"] == "usd" and task["stages"]
    assert 0 < task["expected"]["oracle_call_rate"] < 1
    # a router's model directory: its live calibration
    assert inspect_main([str(ROOT / "model_repository" / "pyramid")]) == 0
    assert "stage 0:" in capsys.readouterr().out


def test_inspect_names_a_path_it_cannot_read(tmp_path, capsys):
    assert inspect_main([str(tmp_path / "nothing.json")]) == 2
    assert "nothing.json" in capsys.readouterr().err
