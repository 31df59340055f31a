"""``pyramid calibrate`` and ``pyramid evaluate``: calibrate a router and evaluate it on recorded
traces. (The ``pyramid`` command is ``pyramid_cli``: these two, and the subcommands that talk to a
running deployment.)

Every failure is one line on stderr naming the cause and a non-zero exit;
outputs are written only after everything succeeded (atomic rename).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from .answers import task_names
from .artifact import ArtifactError, load_artifact, load_calibrations, save_calibration_set, write_json_atomic
from .calibration import calibrator_names
from .cost import COST_MODELS
from .dataset import LABELS, TRUTH_VOTERS, load_routing_data, parse_overrides
from .features import feature_set_names
from .fitting import MAX_DEPTH, RECOMMENDED_QUESTIONS, Target, TargetUnreachable, fit_router
from .registry import UnknownName
from .report import no_saving_note
from .semantic import DEFAULT_EMBEDDING_CACHE
from .semantic import FEATURE_SETS as SEMANTIC_FEATURE_SETS
from .semantic import TASK as SEMANTIC
from .semantic import prepare as prepare_semantic
from .traces import TraceError, TraceSet

# The default floor under --labels oracle: at most 2% of all questions get an answer other than the
# oracle's. The gold gap to the oracle can never exceed the disagreement (a question answered as the
# oracle answers scores as the oracle does), and about half of the disagreements are questions where
# the committee is right, so 2% kept gold accuracy within 1 point of the oracle on both benchmark
# setups (BENCHMARKS.md, "Label-free calibration"); 1% is a dozen questions of a 1,000-question fit,
# within the out-of-fold estimate's noise, and saved little on setup A.
DEFAULT_MAX_DISAGREEMENT = 0.02


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--traces", required=True, help="trace directory (questions.jsonl, sources.json, traces/)")
    p.add_argument("--committee", required=True, help="comma-separated agent source names, in order")
    p.add_argument("--oracle", required=True, help="oracle source name")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--target-oracle-rate", type=float, metavar="R", help="fraction of questions sent to the oracle")
    g.add_argument("--target-cost", type=float, metavar="C", help="mean cost per query relative to always-oracle")
    g.add_argument(
        "--max-accuracy-drop",
        type=float,
        metavar="E",
        help="cheapest τ with accuracy >= the oracle's - E: by gold under --labels gold, by the estimate under "
        "--labels estimated (the default under both: 0)",
    )
    g.add_argument(
        "--max-disagreement",
        type=float,
        metavar="E",
        help="cheapest τ whose answer differs from the oracle's on at most a share E of the questions "
        f"(label-free; the default under --labels oracle: {DEFAULT_MAX_DISAGREEMENT})",
    )
    p.add_argument(
        "--labels",
        choices=LABELS,
        help="what a correct committee answer is: equal to gold; equal to the oracle's answer (no gold read; "
        "no arbiter); or estimated: the probability that it is right, estimated from every recorded model's "
        "answer with the oracle one fallible voter (no gold read; no arbiter); default gold when every "
        "question has a gold answer, else oracle",
    )
    p.add_argument(
        "--truth-voters",
        default="all",
        metavar="all|routed|A,B",
        help="--labels estimated: the models that vote on which answer is right besides the committee and "
        f"the oracle: every other source of the traces (all, the default), none (routed), or a list ({TRUTH_VOTERS})",
    )
    p.add_argument(
        "--cost",
        choices=COST_MODELS,
        help="cost model the target and savings use (default: the first of flops, usd that the traces can price "
        "for every model; --params / --price fill in what they lack)",
    )
    p.add_argument(
        "--features", choices=feature_set_names(), help="feature set (default: full; semantic for --task semantic)"
    )
    p.add_argument("--calibrator", choices=calibrator_names(), default="logistic", help="each stage's calibrator")
    p.add_argument("--no-adaptive", action="store_true", help="one stage: always ask the whole committee")
    p.add_argument(
        "--max-depth",
        type=int,
        default=MAX_DEPTH,
        metavar="D",
        help=f"the deepest schedule searched: stages below the oracle, each adding members (default {MAX_DEPTH})",
    )
    p.add_argument(
        "--plurality-vote", action="store_true", help="count every agent's vote alike (default: reliability-weighted)"
    )
    p.add_argument("--no-arbiter", action="store_true", help="after escalation always return the oracle's answer")
    p.add_argument("--params", action="append", metavar="NAME=B", help="override params (billions) of a model")
    p.add_argument("--price", action="append", metavar="NAME=IN,OUT", help="override USD per 1k tokens")
    p.add_argument("--task", default="gsm8k", help=f"answer task ({', '.join(task_names())})")
    p.add_argument(
        "--no-embedding",
        action="store_true",
        help="--task semantic: compare answers' cores by their words, numbers and entities only, without the "
        "cosine of their embeddings (then the server needs no embedder)",
    )
    p.add_argument(
        "--grade",
        metavar="TASK",
        help="--task semantic: grade whole answers against gold with this task's extractor (e.g. gsm8k)",
    )
    p.add_argument(
        "--embedding-cache",
        default=str(DEFAULT_EMBEDDING_CACHE),
        metavar="NPZ",
        help="--task semantic: embeddings of recorded outputs kept here across runs (default %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="folds, fit fraction and fitting randomness")


def _target(a: argparse.Namespace, labels: str) -> Target:
    """The budget target; the floor (when none is given) in the labels' own terms."""
    if a.target_oracle_rate is not None:
        return Target("oracle_rate", a.target_oracle_rate)
    if a.target_cost is not None:
        return Target("cost", a.target_cost)
    if a.max_disagreement is not None:
        target = Target("max_disagreement", a.max_disagreement)
    elif a.max_accuracy_drop is not None:
        target = Target("max_accuracy_drop", a.max_accuracy_drop)
    elif labels == "oracle":
        target = Target("max_disagreement", DEFAULT_MAX_DISAGREEMENT)
    # under gold and estimated labels: accuracy (gold, or expected under the estimate) >= the oracle's
    else:
        target = Target("max_accuracy_drop", 0.0)
    target.check_labels(labels)
    return target


def _data(a: argparse.Namespace):
    if a.task not in task_names():
        raise ValueError(f"unknown --task {a.task!r}; known: {', '.join(task_names())}")
    semantic = a.task == SEMANTIC
    a.features = a.features or ("semantic" if semantic else "full")
    if semantic != (a.features in SEMANTIC_FEATURE_SETS):
        raise ValueError(
            f"--task semantic and --features {' or '.join(SEMANTIC_FEATURE_SETS)} go together (answers grouped by meaning)"
        )
    if not semantic and (a.no_embedding or a.grade):
        raise ValueError("--no-embedding and --grade apply to --task semantic only")
    committee = [c.strip() for c in a.committee.split(",") if c.strip()]
    data = load_routing_data(
        a.traces,
        committee,
        a.oracle,
        a.task,
        parse_overrides(a.params, "--params"),
        parse_overrides(a.price, "--price"),
        labels=a.labels,
        truth_voters=a.truth_voters,
    )
    if a.cost is None:  # what these traces can price (sources.json and the overrides)
        kinds = data.cost_kinds()
        if not kinds:
            raise ValueError(
                f"no cost model can price every model of {a.traces}: give each model's size (--params NAME=B) "
                "or prices (--price NAME=IN,OUT)"
            )
        a.cost = kinds[0]
    if a.truth_voters != "all" and data.labels != "estimated":
        raise ValueError("--truth-voters applies to --labels estimated only")
    if semantic:
        prepare_semantic(data, a.embedding_cache, embed=not a.no_embedding, grade=a.grade)
    return data


def cmd_calibrate(a: argparse.Namespace) -> int:
    data = _data(a)
    target = _target(a, data.labels)
    if not 0 < a.fit_fraction <= 1:
        raise ValueError(f"--fit-fraction must be in (0, 1], got {a.fit_fraction}")
    rows = np.arange(data.n)
    if a.fit_fraction < 1:
        rng = np.random.default_rng(a.seed)
        rows = np.sort(rng.permutation(data.n)[: int(round(a.fit_fraction * data.n))])
    if len(rows) < RECOMMENDED_QUESTIONS:
        print(
            f"pyramid calibrate: warning: fitting on {len(rows)} questions; with fewer than {RECOMMENDED_QUESTIONS} "
            "each stage's calibrator and threshold, and the rates the drift alarms watch, are noisy: record more "
            "(pyramid record --n)",
            file=sys.stderr,
        )
    art = fit_router(
        data, rows, target, a.cost, a.features, a.calibrator, not a.no_adaptive, a.seed, str(a.traces),
        not a.no_arbiter, max_depth=a.max_depth, weighted_vote=not a.plurality_vote,
    )  # fmt: skip
    if a.add and Path(a.out).is_file():  # one calibration per task: this task's replaces its old one
        kept = [x for t, x in load_calibrations(a.out).items() if t != art.task]
        save_calibration_set(a.out, [*kept, art])
    elif a.add:
        save_calibration_set(a.out, [art])
    else:
        art.save(a.out)
    fs = art.fit_summary
    stages = " -> ".join(f"{'+'.join(s['agents'])} (tau={s['threshold']:.3f})" for s in art.stages)
    if data.labels == "oracle":  # accuracy under oracle labels is agreement; the gap is the disagreement
        gap = fs["oracle_accuracy"] - fs["oof_accuracy"]
        quality = f"labels oracle: disagreement with the oracle {gap:.4f}, no arbiter"
    elif data.labels == "estimated":
        tr = fs["truth"]
        quality = (
            f"labels estimated ({len(tr['voters'])} voters): estimated accuracy {fs['oof_accuracy']:.4f} vs "
            f"the oracle's {fs['oracle_accuracy']:.4f}, no arbiter"
        )
        if "error_vs_gold" in tr:
            quality += (
                f" (estimate's largest accuracy error by gold {tr['error_vs_gold']['max_abs_accuracy_error']:.4f})"
            )
    else:
        quality = f"accuracy {fs['oof_accuracy']:.4f} vs oracle {fs['oracle_accuracy']:.4f}"
    if art.oracle_only:  # the operating point is the oracle alone; say so before the schedule kept beside it
        print(
            f"wrote {a.out}: the oracle alone (cost 1.000 of always-oracle): {fs['oracle_only']['why']}; the schedule "
            f"{stages} is kept for requests naming their own threshold ({quality} out-of-fold)"
        )
        return 0
    print(
        f"wrote {a.out}: schedule {stages}; on the {len(rows)} fitting questions (out-of-fold): {quality}, "
        f"oracle calls {fs['oof_oracle_call_rate']:.3f}, cost {fs['oof_mean_cost']:.3f} of always-oracle ({a.cost})"
    )
    return 0


def _groups(traces: str, idxs: list[int], name: str) -> tuple[str, list[str | None]]:
    """(``name``, each question's value of that questions.jsonl field); a field no question has is an error."""
    questions = TraceSet.open(traces).questions
    values = [questions[i].tags.get(name) for i in idxs]
    if all(v is None for v in values):
        fields = sorted({k for q in questions.values() for k in q.tags})
        raise ValueError(f"--by {name}: no question in {traces} has that field; fields: {', '.join(fields) or 'none'}")
    return name, values


def cmd_evaluate(a: argparse.Namespace) -> int:
    from .evaluation import evaluate
    from .report import markdown, plot

    t0 = time.perf_counter()
    data = _data(a)
    target = _target(a, data.labels)
    art = None
    if a.calibration:
        art = load_artifact(a.calibration, known_agents=[*data.committee, data.oracle])
        if art.committee != data.committee or art.oracle != data.oracle:
            raise ArtifactError(
                f"{a.calibration}: fitted for committee {art.committee} / oracle {art.oracle}, "
                f"not {data.committee} / {data.oracle}"
            )
    groups = _groups(a.traces, data.idxs, a.by) if a.by else None
    bar = None
    if not a.quiet:
        from tqdm import tqdm

        bar = tqdm(total=(1 if art else a.folds) * 2, desc="evaluate", file=sys.stderr, leave=False)

    def progress(msg: str) -> None:
        if bar is not None:
            bar.set_postfix_str(msg[:60])
            bar.update(1)

    result = evaluate(
        data,
        target,
        a.cost,
        a.features,
        a.calibrator,
        not a.no_adaptive,
        a.folds,
        a.seed,
        art,
        progress,
        not a.no_arbiter,
        max_depth=a.max_depth,
        weighted_vote=not a.plurality_vote,
        groups=groups,
    )
    if bar is not None:
        bar.close()
    result["elapsed_s"] = round(time.perf_counter() - t0, 2)
    # Write all outputs only after everything was computed.
    write_json_atomic(a.json, result)
    if a.report:
        Path(a.report).parent.mkdir(parents=True, exist_ok=True)
        Path(a.report).write_text(markdown(result), encoding="utf-8")
    if a.plot:
        plot(result, a.plot)
    op = result["operating_point"]
    cal = result["calibration"]
    gold = (
        "no gold"
        if op["accuracy"] is None
        else f"accuracy {op['accuracy']:.4f} vs oracle {op['oracle_accuracy']:.4f} "
        f"({op['accuracy'] - op['oracle_accuracy']:+.4f})"
    )
    print(
        f"{gold}, fidelity {op['fidelity']:.4f} (labels {data.labels}), "
        f"oracle calls {op['oracle_call_rate']:.3f}, cost {op['mean_cost']:.3f} of always-oracle "
        f"({op['cost_model']}, saving {op['cost_saving']:.1%}); AUROC {cal['auroc']:.3f}, ECE {cal['ece']:.4f}; "
        f"{result['elapsed_s']} s -> {a.json}"
    )
    for line in [no_saving_note(op), *data.notes]:
        if line:
            print(f"note: {line}")
    return 0


class DefaultsFormatter(argparse.HelpFormatter):
    """``--help`` states each option's default where it has one and its help text does not already say it
    (the ``pyramid`` commands' parsers use it)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or action.default in (None, False, argparse.SUPPRESS) or "default" in text.lower():
            return text
        return f"{text} (default: %(default)s)"


def build_parser(others: dict[str, str] | None = None) -> argparse.ArgumentParser:
    """``others``: more subcommands' help, listed by ``--help`` (their arguments are parsed elsewhere)."""
    p = argparse.ArgumentParser(
        prog="pyramid",
        description="Pyramid MoA: calibrate and evaluate escalation routers",
        formatter_class=DefaultsFormatter,
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser(
        "calibrate", help="fit calibrators and thresholds; write the artifact", formatter_class=DefaultsFormatter
    )
    _add_common(c)
    c.add_argument("--out", required=True, help="calibration JSON to write")
    c.add_argument("--fit-fraction", type=float, default=1.0, help="fit on this random fraction of the questions")
    c.add_argument(
        "--add",
        action="store_true",
        help="add this task's calibration to the calibration set --out (one per task; a deployment routes each "
        "request by its task), replacing the task's previous one",
    )
    c.set_defaults(fn=cmd_calibrate)
    e = sub.add_parser(
        "evaluate", help="cross-fitted evaluation with sweep and baselines", formatter_class=DefaultsFormatter
    )
    _add_common(e)
    e.add_argument("--calibration", help="score this artifact on the questions it was not fitted on")
    e.add_argument("--folds", type=int, default=5, help="cross-fitting folds: each is scored by a fit on the others")
    e.add_argument("--json", required=True, help="result JSON to write")
    e.add_argument("--plot", help="PNG: Pareto plot and reliability diagram")
    e.add_argument("--report", help="markdown report")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.add_argument(
        "--by",
        metavar="FIELD",
        help="also report the held-out figures per value of this questions.jsonl field (e.g. category)",
    )
    e.set_defaults(fn=cmd_evaluate)
    for name, text in (others or {}).items():
        sub.add_parser(name, help=text, add_help=False)
    return p


def main(argv: list[str] | None = None, others: dict[str, str] | None = None) -> int:
    """``others``: as for ``build_parser``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(others).parse_args(argv)
    try:
        return args.fn(args)
    # The user's mistakes: bad files, artifacts, targets, values (the library validates with ValueError)
    # and unknown registry names. Any other exception is a bug and keeps its traceback.
    except (TraceError, ArtifactError, TargetUnreachable, ValueError, UnknownName) as exc:
        print(f"pyramid {args.cmd}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
