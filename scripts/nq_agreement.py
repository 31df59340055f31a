"""Free-text agreement measured against people's judgements, and the ten-line containment baseline (issue 21).

On a trace set whose samples carry judgements (``correct``: shared/data/nq), over the questions where every
named system's answer is judged:

* the pairwise rule: every pair of the systems' answers to one question that people judged both right
  (the same answer) or one right and one wrong (different answers) is scored by the pair model
  (``cores.PairModel``, lexical signals, fitted label-free by EM on all pairs, and fitted on the
  judgements of half the questions and scored on the other half): AUROC and accuracy at P = 0.5;
* the ten-line rule: accept the second system's answer when the first's folded answer appears in it,
  else ask the oracle; accuracy by the judgements and USD cost relative to always-oracle, every call
  counted (``RoutingData.call_costs``).

    .venv/bin/python scripts/nq_agreement.py [--traces ../shared/data/nq] [--json out/nq_agreement.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

from pyramid_moa.answers import fold_text
from pyramid_moa.cores import answer_core, fit_pair_model, pair_levels
from pyramid_moa.dataset import load_routing_data
from pyramid_moa.metrics import auroc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces", default="../shared/data/nq")
    ap.add_argument("--systems", default="fid,gpt-3.5-turbo,text-davinci-003")
    ap.add_argument("--oracle", default="gpt-4")
    ap.add_argument("--json", default="out/nq_agreement.json")
    a = ap.parse_args()
    systems = a.systems.split(",")
    d = load_routing_data(a.traces, systems, a.oracle, task="semantic")
    names = [*systems, a.oracle]
    levels, label, qrow = [], [], []
    for r in range(d.n):
        cores = {n: answer_core(d.outputs[n][r].text, d.questions[r]) for n in names}
        for x, y in itertools.combinations(names, 2):
            ox, oy = d.outputs[x][r], d.outputs[y][r]
            if cores[x] is None or cores[y] is None or not (ox.judged or oy.judged):
                continue  # both wrong: nothing says whether they are the same wrong answer
            levels.append(pair_levels(cores[x], cores[y]))
            label.append(bool(ox.judged and oy.judged))
            qrow.append(r)
    L, y, q = np.array(levels), np.array(label), np.array(qrow)
    em = fit_pair_model(L)
    p = np.array([em.prob(v) for v in L])
    half = q % 2 == 0
    judged = fit_pair_model(L[half], y[half])
    pj = np.array([judged.prob(v) for v in L[~half]])
    contained = L[:, 0].astype(float)
    result = {
        "questions": d.n,
        "pairs": int(len(y)),
        "same_pairs": int(y.sum()),
        "label_free_em": {"auroc": auroc(p, y), "accuracy_at_0.5": float(((p >= 0.5) == y).mean())},
        "fitted_on_judgements_half": {
            "auroc": auroc(pj, y[~half]),
            "accuracy_at_0.5": float(((pj >= 0.5) == y[~half]).mean()),
        },
        "containment_alone": {"auroc": auroc(contained, y), "accuracy": float((contained == y).mean())},
    }
    # The ten-line rule: the first system's span inside the second's answer -> accept the second's.
    first, second = systems[0], systems[1]
    accept = np.array(
        [
            bool(fold_text(d.outputs[first][r].text))
            and f" {fold_text(d.outputs[first][r].text)} " in f" {fold_text(d.outputs[second][r].text)} "
            for r in range(d.n)
        ]
    )
    ok = {n: np.array([bool(o.judged) for o in d.outputs[n]]) for n in names}
    cost = {n: d.call_costs("usd", n) for n in names}
    spent = cost[first] + cost[second] + np.where(accept, 0.0, cost[a.oracle])
    result["ten_line_rule"] = {
        "accuracy": float(np.where(accept, ok[second], ok[a.oracle]).mean()),
        "oracle_accuracy": float(ok[a.oracle].mean()),
        "oracle_call_rate": float(1 - accept.mean()),
        "mean_cost_usd": float(spent.sum() / cost[a.oracle].sum()),
    }
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
