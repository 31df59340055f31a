"""Does the ``semantic`` task find numeric agreement in whole GSM8K solutions? (issue 14, evidence)

For one setup (traces, committee, oracle, cost model) it routes twice, cross-fitted as
``pyramid evaluate`` does (5 folds, seed 0, oracle parity: max accuracy drop 0):

* ``gsm8k``: the extracted final numbers, ``full`` features (today's router);
* ``semantic``: the models' whole outputs embedded (all-MiniLM-L6-v2), grouped by the label-free
  (Otsu) similarity threshold, ``semantic`` features; answers graded against gold by the number in
  the returned text (``--grade gsm8k``), so accuracy and savings compare with the first row;
* ``semantic, oracle labels``: the same, calibrated on oracle agreement only (no gold read), at the
  default floor of at most 2% disagreement with the oracle; graded by gold afterwards.

and measures how often semantic groups match numeric agreement: over every pair of committee
answers to one question, whether "same group" equals "same extracted number"; and over questions,
whether the semantic vote's answer carries the numeric plurality's number.

    .venv/bin/python scripts/semantic_evidence.py TRACES COMMITTEE ORACLE COST OUT.json
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

from pyramid_moa.answers import answer_key, extract_gsm8k, numbers_equal
from pyramid_moa.dataset import load_routing_data
from pyramid_moa.evaluation import evaluate
from pyramid_moa.features import committee_vote
from pyramid_moa.fitting import Target
from pyramid_moa.metrics import auroc
from pyramid_moa.semantic import DEFAULT_EMBEDDING_CACHE, groups, prepare, semantic_vote


def pair_agreement(num, sem, threshold: float) -> dict:
    """Committee answer pairs: same semantic group vs same extracted number."""
    same_num, same_grp, sims = [], [], []
    for r in range(num.n):
        n_outs = [num.outputs[a][r] for a in num.committee]
        s_outs = [sem.outputs[a][r] for a in sem.committee]
        valid = [o.answer is not None and not o.failed for o in s_outs]
        keys = [answer_key(o.answer) for o in n_outs]
        if not all(valid):
            continue
        E = np.array([o.embedding for o in s_outs])
        sim = E @ E.T
        g = groups(sim, valid, threshold)
        for i in range(len(s_outs)):
            for j in range(i + 1, len(s_outs)):
                if keys[i] is None or keys[j] is None:
                    continue
                same_num.append(keys[i] == keys[j])
                same_grp.append(g[i] == g[j])
                sims.append(sim[i, j])
    same_num, same_grp, sims = np.array(same_num), np.array(same_grp), np.array(sims)
    return {
        "pairs": int(len(same_num)),
        "share_same_number": float(same_num.mean()),
        "share_same_group": float(same_grp.mean()),
        "pair_match": float((same_num == same_grp).mean()),
        "same_group_given_same_number": float(same_grp[same_num].mean()),
        "same_group_given_different_numbers": float(same_grp[~same_num].mean()),
        "similarity_auroc_for_same_number": auroc(sims, same_num),
        "similarity_mean_same_number": float(sims[same_num].mean()),
        "similarity_mean_different_numbers": float(sims[~same_num].mean()),
    }


def vote_agreement(num, sem, threshold: float) -> dict:
    """Questions: the semantic vote carries the numeric plurality's number; unanimity matches."""
    match, unanimous_both = [], []
    for r in range(num.n):
        n_vote = committee_vote([num.outputs[a][r] for a in num.committee])
        s_vote, _, _ = semantic_vote([sem.outputs[a][r] for a in sem.committee], threshold)
        match.append(numbers_equal(extract_gsm8k(s_vote.answer), n_vote.answer))
        k = len(num.committee)
        unanimous_both.append((n_vote.count == k) == (s_vote.count == k))
    return {"vote_number_match": float(np.mean(match)), "unanimity_match": float(np.mean(unanimous_both))}


def summary(res: dict) -> dict:
    op, cal = res["operating_point"], res["calibration"]
    return {
        "accuracy": op["accuracy"],
        "oracle_accuracy": op["oracle_accuracy"],
        "fidelity": op["fidelity"],
        "oracle_call_rate": op["oracle_call_rate"],
        "cost_saving": op["cost_saving"],
        "auroc": cal["auroc"],
        "auroc_of": cal["of"],
        "mcnemar_p": res["mcnemar_p"],
    }


def main() -> int:
    traces, committee, oracle, cost, out = sys.argv[1], sys.argv[2].split(","), sys.argv[3], sys.argv[4], sys.argv[5]
    t0 = time.time()
    num = load_routing_data(traces, committee, oracle, "gsm8k")
    rows = {"gsm8k": summary(evaluate(num, Target("max_accuracy_drop", 0.0), cost, "full"))}
    print("gsm8k", rows["gsm8k"], flush=True)
    sem = load_routing_data(traces, committee, oracle, "semantic")
    thr = prepare(sem, DEFAULT_EMBEDDING_CACHE, grade="gsm8k")
    print(f"similarity threshold (Otsu, label-free): {thr:.4f}", flush=True)
    rows["semantic"] = summary(evaluate(sem, Target("max_accuracy_drop", 0.0), cost, "semantic"))
    print("semantic", rows["semantic"], flush=True)
    sem_o = sem.with_labels("oracle")
    rows["semantic_oracle_labels"] = summary(evaluate(sem_o, Target("max_disagreement", 0.02), cost, "semantic"))
    print("semantic, oracle labels", rows["semantic_oracle_labels"], flush=True)
    result = {
        "setup": {"traces": traces, "committee": committee, "oracle": oracle, "cost": cost, "n_questions": num.n},
        "similarity_threshold": thr,
        "protocol": "5-fold cross-fitting (seed 0) as pyramid evaluate; semantic answers graded by the number in the "
        "returned text (gsm8k extractor); the similarity threshold is fitted label-free on all questions",
        "routers": rows,
        "pairs": pair_agreement(num, sem, thr),
        "votes": vote_agreement(num, sem, thr),
        "elapsed_s": round(time.time() - t0, 1),
    }
    with open(out, "w") as fh:
        json.dump(result, fh, indent=1)
    print(json.dumps({k: result[k] for k in ("similarity_threshold", "pairs", "votes")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
