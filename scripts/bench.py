#!/usr/bin/env python3
"""`make bench`: the issue's benchmark setups on the shared GSM8K traces, plus decision latency.

Runs `pyramid evaluate` for Setup A (open 7B committee -> ToRA-70B, FLOPs) and
Setup B (three gpt-3.5-turbo prompts -> GPT-4, dollars), the oracle-rate
targeting checks, and the in-process routing-decision micro-benchmark; writes
JSON per run and prints a markdown summary (pasted into BENCHMARKS.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

# Setup members as named in shared/data/gsm8k/README.md ("Ready-made benchmark setups").
SETUPS = {
    "A": {
        "committee": "metamath_7b,abelrepo_7b,tora_7b",
        "oracle": "tora_70b",
        "cost": "flops",
        # Open models have no price in the traces: assumed per-1k-token prices (not measured), so the
        # dollar view can be shown beside FLOPs. Change them here to match your provider.
        "extra": [
            "--price",
            "metamath_7b=0.0002,0.0002",
            "--price",
            "abelrepo_7b=0.0002,0.0002",
            "--price",
            "tora_7b=0.0002,0.0002",
            "--price",
            "tora_70b=0.0009,0.0009",
        ],
    },
    # Setup A with ToRA-Code-34B (MIT) as a possible middle tier: the search decides where it goes.
    "A34": {
        "committee": "metamath_7b,abelrepo_7b,tora_7b,tora_code_34b",
        "oracle": "tora_70b",
        "cost": "flops",
        "extra": [],
    },
    "B": {
        "committee": "fgenie_chatgpt_pal,faithfulcot_gpt-3.5-turbo_COT,reread_gpt-3.5-turbo_re2_cot",
        "oracle": "mot_gpt4_cot1_greedy",
        "cost": "usd",
        "extra": [],
    },
}


def run(traces: str, out: Path, name: str, setup: dict, *flags: str) -> dict:
    path = out / f"{name}.json"
    cmd = [
        sys.executable,
        "-m",
        "pyramid_moa",
        "evaluate",
        "--quiet",
        "--traces",
        traces,
        "--committee",
        setup["committee"],
        "--oracle",
        setup["oracle"],
        "--cost",
        setup["cost"],
        *setup["extra"],
        *flags,
        "--json",
        str(path),
    ]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL)
    r = json.loads(path.read_text())
    r["wall_s"] = time.perf_counter() - t0
    return r


def row(label: str, r: dict) -> str:
    op, c = r["operating_point"], r["calibration"]
    ref = r["baselines"].get("agreement_router")
    ref_s = f"{ref['accuracy']:.4f} @ {ref['cost_saving']:.1%}" if ref else "unreachable"
    usd = op.get("mean_cost_usd")
    flops = op.get("mean_cost_flops")
    return (
        f"| {label} | {op['accuracy']:.4f} | {op['oracle_accuracy']:.4f} | {op['oracle_call_rate']:.3f} | "
        f"{'n/a' if flops is None else f'{1 - flops:.1%}'} | {'n/a' if usd is None else f'{1 - usd:.1%}'} | "
        f"{c['auroc']:.3f} | {c['ece']:.4f} | {r['apgr']:.3f} | {r['mcnemar_p']:.2f} | {ref_s} | {r['elapsed_s']:.1f} |"
    )


def main() -> int:
    traces = sys.argv[1] if len(sys.argv) > 1 else "../shared/data/gsm8k"
    out = Path(sys.argv[2] if len(sys.argv) > 2 else "out/bench")
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        "| run | accuracy | oracle acc | oracle calls | FLOPs saving | USD saving | AUROC | ECE | APGR | McNemar p "
        "| agreement-only ref (acc @ saving) | eval s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    chosen = []
    for name, setup in SETUPS.items():
        parity = run(traces, out, f"{name}_parity", setup)
        lines.append(row(f"{name}: oracle parity (pyramid search, arbiter)", parity))
        for k, sched in enumerate(parity["schedules"]):
            stages = " -> ".join(f"{'+'.join(s['agents'])} (tau {s['threshold']:.3f})" for s in sched)
            chosen.append(f"| {name} | {k + 1} | {stages} -> {setup['oracle']} |")
        lines.append(
            row(
                f"{name}: one stage, no arbiter",
                run(traces, out, f"{name}_plain", setup, "--no-adaptive", "--no-arbiter"),
            )
        )
    lines += [
        "",
        "Schedule chosen in each outer fold (stages cumulative):",
        "",
        "| setup | fold | schedule |",
        "|---|---|---|",
    ]
    lines += chosen
    lines += ["", "| oracle-rate target | setup | requested | realised | error (points) |", "|---|---|---|---|---|"]
    for name, setup in SETUPS.items():
        for rate in (0.2, 0.3, 0.4):
            r = run(traces, out, f"{name}_rate{int(rate * 100)}", setup, "--target-oracle-rate", str(rate))
            b = r["budget_targeting_error"]
            lines.append(f"| {rate} | {name} | {b['requested']:.3f} | {b['realised']:.3f} | {100 * b['error']:+.1f} |")
    print("\n".join(lines))
    bench = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "tests/test_bench_decision.py",
            "--benchmark-enable",
            "--benchmark-columns=min,median,mean,max",
            "-p",
            "no:cacheprovider",
        ],
        capture_output=True,
        text=True,
    )
    print("\nRouting decision micro-benchmark (pytest-benchmark, one decision: features + calibrator + policy):")
    print("\n".join(x for x in bench.stdout.splitlines() if "test_routing_decision_speed" in x or "Name" in x))
    return bench.returncode


if __name__ == "__main__":
    sys.exit(main())
