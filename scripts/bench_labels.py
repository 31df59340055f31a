#!/usr/bin/env python3
"""Label-free calibration against the gold-labelled one on benchmark setups A and B (issue 13).

For each setup (``scripts/bench.py``'s), runs ``pyramid evaluate`` (5-fold cross-fitting) with
``--labels gold`` and ``--labels oracle`` at each one's default target, across a sweep of its
floor target (``--max-accuracy-drop`` / ``--max-disagreement``) and across matched
``--target-oracle-rate`` budgets; every run is scored against gold. Prints a markdown table (pasted
into BENCHMARKS.md) and writes each run's JSON under OUT.

    .venv/bin/python scripts/bench_labels.py ../shared/data/gsm8k out/bench-labels

``--estimated`` (issue 25): gold vs oracle vs estimated labels (each at its default target) on A, B
and a committee no issue names (C: three 13B models, MetaMath-70B as a weaker oracle), the estimated
labels both from every source in the traces and from the committee and the oracle alone; one run at
a time; prints the routing table and the estimate's accuracy of each model against the true one.

    .venv/bin/python scripts/bench_labels.py ../shared/data/gsm8k out/bench-estimated --estimated
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import SETUPS  # noqa: E402

DEFAULT_DISAGREEMENT = "0.02"  # pyramid_moa.cli.DEFAULT_MAX_DISAGREEMENT
RUNS = [
    # (label, labels, flags)
    ("gold, default (max-accuracy-drop 0)", "gold", []),
    (f"oracle, default (max-disagreement {DEFAULT_DISAGREEMENT})", "oracle", []),
    *[(f"gold, max-accuracy-drop {e}", "gold", ["--max-accuracy-drop", e]) for e in ("0.01", "0.02")],
    *[
        (f"oracle, max-disagreement {e}", "oracle", ["--max-disagreement", e])
        for e in ("0.005", "0.01", "0.015", "0.03", "0.05")
    ],
    *[
        (f"{lab}, oracle rate {r}", lab, ["--target-oracle-rate", r])
        for r in ("0.2", "0.3", "0.4", "0.5")
        for lab in ("gold", "oracle")
    ],
]
# The bar: gold accuracy within 1 point of the oracle at >= this saving.
BAR = {"A": ("flops", 0.25), "B": ("usd", 0.45)}
# Issue 25's bar: within 1 point of the oracle at >= 90% of the gold-labelled fit's saving.
BAR_ESTIMATED = {"A": 0.32, "B": 0.50}
# A committee no issue names, with a weaker oracle (MetaMath-70B, 0.824 on GSM8K).
EXTRA_SETUPS = {
    "C": {"committee": "abelrepo_13b,metamath_13b,tora_13b", "oracle": "metamath_70b", "cost": "flops", "extra": []}
}
ESTIMATED_RUNS = [
    ("gold (max-accuracy-drop 0)", "gold", []),
    ("oracle (max-disagreement 0.02)", "oracle", []),
    ("estimated, every source (max-accuracy-drop 0)", "estimated", ["--truth-voters", "all"]),
    ("estimated, committee + oracle only", "estimated", ["--truth-voters", "routed"]),
]


def run(traces: str, out: Path, name: str, setup: dict, labels: str, flags: list[str]) -> dict:
    path = out / f"{name}.json"
    cmd = [
        sys.executable, "-m", "pyramid_moa", "evaluate", "--quiet", "--traces", traces,
        "--committee", setup["committee"], "--oracle", setup["oracle"], "--cost", setup["cost"],
        *setup["extra"], "--labels", labels, *flags, "--json", str(path),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(path.read_text())


def estimated(traces: str, out: Path) -> int:
    """Issue 25's comparison (see the module doc)."""
    t0 = time.time()
    setups = {**{k: SETUPS[k] for k in ("A", "B")}, **EXTRA_SETUPS}
    rows = [
        "| setup | labels (target) | gold accuracy | oracle | gap (points) | oracle calls | saving | issue's bar |",
        "|---|---|---|---|---|---|---|---|",
    ]
    truth_rows = [
        "| setup | voters | model | estimated accuracy | true accuracy | error (points) |",
        "|---|---|---|---|---|---|",
    ]
    for name, setup in setups.items():
        for k, (label, labels, flags) in enumerate(ESTIMATED_RUNS):
            r = run(traces, out, f"{name}_est_{k}", setup, labels, flags)
            if "error" in r:
                rows.append(f"| {name} | {label} | unreachable: {r['error'][:80]} | | | | | |")
                continue
            op = r["operating_point"]
            gap = op["accuracy"] - op["oracle_accuracy"]
            need = BAR_ESTIMATED.get(name)
            bar = (
                ""
                if need is None or labels != "estimated"
                else ("met" if gap >= -0.01 and op["cost_saving"] >= need else "not met")
            )
            rows.append(
                f"| {name} | {label} | {op['accuracy']:.4f} | {op['oracle_accuracy']:.4f} | {100 * gap:+.2f} | "
                f"{op['oracle_call_rate']:.3f} | {op['cost_saving']:.1%} ({op['cost_model']}) | {bar} |"
            )
            err = r.get("truth", {}).get("error_vs_gold")
            if err:
                voters = f"{len(r['truth']['voters'])} ({flags[-1]})"
                for model in [*setup["committee"].split(","), setup["oracle"]]:
                    a = err["accuracy"][model]
                    truth_rows.append(
                        f"| {name} | {voters} | {model} | {a['estimated']:.4f} | {a['true']:.4f} | {100 * a['error']:+.2f} |"
                    )
                truth_rows.append(
                    f"| {name} | {voters} | all {len(err['accuracy'])} voters: largest error, posterior ECE / Brier | | | "
                    f"{100 * err['max_abs_accuracy_error']:.2f}; {err['posterior_ece']:.4f} / {err['posterior_brier']:.4f} |"
                )
    print("\n".join(rows) + "\n\n" + "\n".join(truth_rows))
    print(f"\n{len(setups) * len(ESTIMATED_RUNS)} runs in {time.time() - t0:.0f} s")
    return 0


def main() -> int:
    args = [a for a in sys.argv[1:] if a != "--estimated"]
    traces = args[0] if args else "../shared/data/gsm8k"
    out = Path(args[1] if len(args) > 1 else "out/bench-labels")
    out.mkdir(parents=True, exist_ok=True)
    if "--estimated" in sys.argv[1:]:
        return estimated(traces, out)
    t0 = time.time()
    jobs = []
    for setup_name in ("A", "B"):
        for k, (label, labels, flags) in enumerate(RUNS):
            jobs.append((setup_name, label, labels, flags, f"{setup_name}_{k:02d}"))
    with ThreadPoolExecutor(2) as pool:
        results = list(
            pool.map(lambda j: run(traces, out, j[4], SETUPS[j[0]], j[2], j[3]), jobs)  # two cores: two at once
        )
    lines = [
        "| setup | labels, target | gold accuracy | oracle | gap (points) | fidelity | oracle calls | saving | "
        "issue's bar |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (setup_name, label, _labels, _flags, _), r in zip(jobs, results):
        kind, need = BAR[setup_name]
        if "error" in r:
            lines.append(f"| {setup_name} | {label} | unreachable: {r['error'][:80]} | | | | | | |")
            continue
        op = r["operating_point"]
        gap = op["accuracy"] - op["oracle_accuracy"]
        saving = 1 - op[f"mean_cost_{kind}"]
        ok = gap >= -0.01 and saving >= need
        lines.append(
            f"| {setup_name} | {label} | {op['accuracy']:.4f} | {op['oracle_accuracy']:.4f} | {100 * gap:+.2f} | "
            f"{op['fidelity']:.4f} | {op['oracle_call_rate']:.3f} | {saving:.1%} ({kind}) | "
            f"{'met' if ok else 'not met'} |"
        )
    print("\n".join(lines))
    print(f"\n{len(jobs)} runs in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
