"""``pyramid evaluate --by FIELD``: the held-out figures per value of a questions.jsonl field (a subject,
a category), from the same cross-fitted routers; a field no question has is an error naming the fields."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import write_traces

from pyramid_moa.cli import main
from pyramid_moa.traces import TraceSet


def _traces(tmp_path):
    """240 questions, half "easy" (the committee agrees and is right) and half "hard" (it splits, and its
    plurality is right a third of the time); the oracle is always right."""
    rng = np.random.default_rng(5)
    qs, src = [], {"a": [], "b": [], "c": [], "o": []}
    for i in range(240):
        cat = "easy" if i % 2 == 0 else "hard"
        qs.append({"idx": i, "question": f"What is {i} plus one?", "gold": str(i + 1), "category": cat, "n": i})
        gold = i + 1
        if cat == "easy":
            votes = [gold, gold, gold]
        else:
            votes = [gold if rng.random() < 0.33 else gold + k + 1 for k in range(3)]
        for name, v in zip("abc", votes):
            src[name].append(
                json.dumps({"idx": i, "samples": [{"text": f"so {v}", "answer": str(v), "output_tokens": 5}]})
            )
        src["o"].append(
            json.dumps({"idx": i, "samples": [{"text": f"so {gold}", "answer": str(gold), "output_tokens": 5}]})
        )
    root = write_traces(tmp_path, qs, src)
    meta = [{"name": m, "params_b": 7 if m != "o" else 70, "license": "MIT"} for m in src]
    (root / "sources.json").write_text(json.dumps(meta))
    return root


def test_questions_keep_their_scalar_fields_as_tags(tmp_path):
    q = TraceSet.open(_traces(tmp_path)).questions[3]
    assert q.tags == {"category": "hard", "n": "3"} and q.gold == "4"


def test_figures_per_category(tmp_path):
    root, out = _traces(tmp_path), tmp_path / "r.json"
    args = ["evaluate", "--traces", str(root), "--committee", "a,b,c", "--oracle", "o", "--cost", "flops"]
    assert main([*args, "--target-oracle-rate", "0.5", "--folds", "3", "--quiet", "--by", "category",
                 "--json", str(out), "--report", str(tmp_path / "r.md")]) == 0  # fmt: skip
    r = json.loads(out.read_text())
    by = r["by"]
    assert by["field"] == "category" and sorted(by["groups"]) == ["easy", "hard"]
    easy, hard = by["groups"]["easy"], by["groups"]["hard"]
    assert easy["n_questions"] == hard["n_questions"] == 120
    assert easy["committee_majority_accuracy"] == pytest.approx(1.0)
    assert hard["committee_majority_accuracy"] < 0.7
    assert easy["oracle_call_rate"] < hard["oracle_call_rate"]  # the router escalates where the committee splits
    assert easy["mean_cost"] < hard["mean_cost"]
    # the groups partition the questions: their calls add up to the whole operating point's
    both = (easy["oracle_call_rate"] + hard["oracle_call_rate"]) / 2
    assert both == pytest.approx(r["operating_point"]["oracle_call_rate"], abs=1e-9)
    md = (tmp_path / "r.md").read_text()
    assert "Per category" in md and "| easy | 120 |" in md and "| hard | 120 |" in md


def test_an_unknown_field_names_the_fields_there_are(tmp_path, capsys):
    root = _traces(tmp_path)
    args = [
        "evaluate",
        "--traces",
        str(root),
        "--committee",
        "a,b,c",
        "--oracle",
        "o",
        "--json",
        str(tmp_path / "r.json"),
    ]
    assert main([*args, "--by", "subject", "--quiet"]) != 0
    err = capsys.readouterr().err
    assert "--by subject: no question" in err and "fields: category, n" in err
    assert not (tmp_path / "r.json").exists()
