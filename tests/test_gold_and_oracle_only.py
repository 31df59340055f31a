"""Gold belongs to the task, judgements are gold labels, and a fit is never worse than the oracle
alone (issue 21 items 1, 2)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import write_traces

from pyramid_moa.answers import get_task
from pyramid_moa.dataset import load_routing_data
from pyramid_moa.evaluation import evaluate
from pyramid_moa.fitting import RouterFit, Target, TargetUnreachable
from pyramid_moa.traces import TraceError, TraceSet


def _line(idx: int, text: str | None, correct: bool | None = None) -> str:
    sample = {"text": text, "answer": text, "output_tokens": 5}
    if correct is not None:
        sample["correct"] = correct
    return json.dumps({"idx": idx, "samples": [sample]})


def test_each_task_reads_and_grades_its_own_gold():
    gsm, choice, semantic, text = (get_task(t) for t in ("gsm8k", "choice", "semantic", "text"))
    assert gsm.gold_of("1,200") == "1200" and gsm.grade("1200.0", gsm.gold_of("1,200"))
    assert choice.gold_of("I") == "I" and choice.gold_of("(b)") == "B"
    assert choice.grade("B", "B") and not choice.grade("C", "B")
    # Free text: any "/"-separated alias, folded (accents, case, articles, punctuation).
    assert semantic.grade("It was awarded in 1901 to Wilhelm Röntgen.", "Wilhelm Rontgen/W. C. Rontgen")
    assert not semantic.grade("Marie Curie", "Wilhelm Conrad Röntgen")
    assert text.grade("the Olivia", "Olivia/MFSK") and not text.grade("Olivia mode", "Olivia/MFSK")
    for task, bad in ((gsm, "Paris"), (choice, "Paris"), (choice, "K")):
        with pytest.raises(ValueError, match=f"task {task.name!r} cannot read gold"):
            task.gold_of(bad)


def test_traces_keep_gold_as_written_and_a_task_that_cannot_read_it_is_an_error(tmp_path):
    qs = [{"idx": i, "question": f"q{i}\nA) x\nB) y", "gold": "B" if i else "Paris"} for i in range(3)]
    src = {n: [_line(i, "The answer is (B)") for i in range(3)] for n in ("a", "b", "o")}
    root = write_traces(tmp_path, qs, src)
    assert TraceSet.open(root).questions[1].gold == "B"  # not read as a number (was None)
    with pytest.raises(TraceError, match=r"questions\.jsonl: idx 0: task 'choice' cannot read gold 'Paris'"):
        load_routing_data(str(root), ["a", "b"], "o", task="choice")


def test_judgements_are_the_gold_labels_and_unjudged_questions_are_left_out(tmp_path):
    n = 8
    qs = [{"idx": i, "question": f"who q{i}", "gold": "Rontgen"} for i in range(n)]
    # The oracle's answer names the gold but people judged it wrong on idx 1; idx 7 is unjudged for "b".
    src = {
        "a": [_line(i, "Rontgen", True) for i in range(n)],
        "b": [_line(i, "Curie", False if i != 7 else None) for i in range(n)],
        "o": [_line(i, "It was Rontgen", i != 1) for i in range(n)],
    }
    d = load_routing_data(str(write_traces(tmp_path, qs, src)), ["a", "b"], "o", task="semantic", labels="gold")
    assert d.n == n - 1 and d.idxs == list(range(7))
    assert d.notes and "1 of 8 questions left out" in d.notes[0]
    ok = d.correct(d.answers("o"))
    assert ok.tolist() == [i != 1 for i in range(7)]  # the judgement wins over the gold string
    assert d.correct(d.answers("b")).sum() == 0 and d.correct(d.answers("a")).all()
    assert d.graded(["It was Rontgen", "Rontgen"], np.array([1, 1])).tolist() == [False, True]


def test_a_bad_judgement_names_file_and_line(tmp_path):
    qs = [{"idx": 0, "question": "q", "gold": "x"}]
    root = write_traces(tmp_path, qs, {"a": ['{"idx": 0, "samples": [{"answer": "x", "correct": "yes"}]}']})
    with pytest.raises(TraceError, match=r"a\.jsonl:1: sample 'correct' must be true, false or null"):
        TraceSet.open(root).samples("a")


@pytest.fixture
def hopeless(tmp_path):
    """A committee that cannot be told right from wrong: its wrong answers agree as often as its
    right ones, and the oracle is always right. No schedule matches the oracle for less."""
    return load_routing_data(str(_hopeless_traces(tmp_path)), ["a", "b", "c"], "o")


def _hopeless_traces(tmp_path):
    rng = np.random.default_rng(3)
    n = 240
    qs = [{"idx": i, "question": f"What is {i} plus one?", "gold": str(i + 1)} for i in range(n)]
    src: dict[str, list[str]] = {"a": [], "b": [], "c": [], "o": []}
    for i in range(n):
        right = rng.random() < 0.5
        for name in ("a", "b", "c"):
            ans = i + 1 if right else 7
            src[name].append(_line(i, f"The answer is {ans}"))
        src["o"].append(_line(i, f"The answer is {i + 1}"))
    root = write_traces(tmp_path, qs, src)
    meta = [{"name": m, "params_b": 7 if m != "o" else 70, "license": "MIT"} for m in src]
    (root / "sources.json").write_text(json.dumps(meta))
    return root


def test_no_saving_means_the_oracle_alone_at_cost_one(hopeless):
    target = Target("max_accuracy_drop", 0.0)
    art = RouterFit(hopeless, np.arange(hopeless.n), "flops", target=target).artifact(target)
    assert art.oracle_only and "no" in art.fit_summary["oracle_only"]["why"]
    router = art.router()
    calls: list[str] = []

    def call(m):
        calls.append(m)
        return hopeless.outputs[m][0]

    res = router.route(hopeless.questions[0], call)
    # the oracle's answer as its trace records it (this synthetic trace records the whole text)
    assert calls == ["o"] and res.escalated and res.answer == "The answer is 1"
    calls.clear()
    router.route(hopeless.questions[0], call, threshold=0.0)  # a request's own threshold: the stages
    assert calls[0] != "o"
    r = evaluate(hopeless, target, "flops", folds=3)
    op = r["operating_point"]
    assert op["mean_cost"] <= 1.0 + 1e-9 and op["accuracy"] >= op["oracle_accuracy"] - 1e-9
    assert op["oracle_only_folds"] == 3 and all(s == [{"oracle_only": True}] for s in r["schedules"])
    # A looser target has a saving: not oracle-only.
    loose = Target("max_accuracy_drop", 0.6)
    assert not RouterFit(hopeless, np.arange(hopeless.n), "flops", target=loose).artifact(loose).oracle_only


def test_calibrate_says_the_oracle_alone_when_no_saving_exists(tmp_path, capsys):
    from pyramid_moa.cli import main

    out = tmp_path / "cal.json"
    args = ["calibrate", "--traces", str(_hopeless_traces(tmp_path)), "--committee", "a,b,c", "--oracle", "o"]
    assert main([*args, "--cost", "flops", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "the oracle alone (cost 1.000 of always-oracle)" in said and "no saving exists" in said
    assert json.loads(out.read_text())["oracle_only"] is True


def _one_stage(ok: np.ndarray, p: np.ndarray, final_ok: np.ndarray, cost: float):
    from pyramid_moa.fitting import Candidate

    n = len(ok)
    return Candidate(
        stages=[["a"]], calibrators=[None], oof=[p], labels=[ok], all_failed=[np.zeros(n, bool)],
        final_ok=[final_ok], stage_costs=[np.full(n, cost)], oracle_cost=np.ones(n),
    )  # fmt: skip


def test_an_oracle_only_fit_keeps_the_best_cascade_not_the_most_accurate_schedule():
    """Requests naming their own threshold on an oracle-only deployment get the kept schedule; the best
    cascade over budgets (largest area under accuracy against cost), not the most accurate at its dearest."""
    from pyramid_moa.fitting import _best_cascade, cascade_area, evaluate_grid

    n = 100
    # cheap and telling: P says exactly who is right; escalating keeps 2 wrong answers (final_ok)
    ok_a = np.r_[np.ones(60), np.zeros(40)].astype(bool)
    fin_a = np.r_[np.ones(98), np.zeros(2)].astype(bool)
    cheap = _one_stage(ok_a, ok_a.astype(float), fin_a, 0.1)
    # dear and blind: P says nothing; escalating is always right (the most accurate schedule)
    ok_b = np.arange(n) % 2 == 0
    dear = _one_stage(ok_b, np.full(n, 0.5), np.ones(n, bool), 0.6)
    # cheap: 0.6 from cost 0.1, 0.98 from 0.5 -> 0.4 * 0.6 + 0.5 * 0.98; dear: 0.5 from cost 0.6
    assert cascade_area(cheap) == pytest.approx(0.73, abs=1e-9)
    assert cascade_area(dear) == pytest.approx(0.2, abs=1e-9)
    evs = [evaluate_grid(c) for c in (dear, cheap)]
    assert max(evs[0].acc) > max(evs[1].acc)  # the old rule's pick would be the dear one
    ci, j = _best_cascade([dear, cheap], evs)
    assert ci == 1 and evs[1].acc[j] == pytest.approx(0.98, abs=1e-9) and evs[1].cost[j] <= 0.5 + 1e-9


def test_a_fit_where_no_schedule_can_be_calibrated_says_why(tmp_path):
    """Every committee answer right (one class): no calibrator can be fitted, and the error names the
    schedule and the reason rather than "no schedule of None stage(s)"."""
    n = 60
    qs = [{"idx": i, "question": f"What is {i} plus one?", "gold": str(i + 1)} for i in range(n)]
    src = {m: [_line(i, f"The answer is {i + 1}") for i in range(n)] for m in ("a", "b", "o")}
    root = write_traces(tmp_path, qs, src)
    meta = [{"name": m, "params_b": 7 if m != "o" else 70, "license": "MIT"} for m in src]
    (root / "sources.json").write_text(json.dumps(meta))
    data = load_routing_data(str(root), ["a", "b"], "o")
    fit = RouterFit(data, np.arange(n), "flops", adaptive=False)
    with pytest.raises(TargetUnreachable, match=r"no schedule could be calibrated.*a\+b: .*\d+ correct and 0 wrong"):
        fit.artifact(Target("oracle_rate", 0.2))
