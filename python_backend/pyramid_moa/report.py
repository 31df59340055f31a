"""Human-readable outputs of an evaluation: Pareto plot, reliability diagram, markdown."""

from __future__ import annotations

import math
from pathlib import Path


def plot(result: dict, path: str | Path) -> None:
    """Accuracy vs cost (ours, its sweep, baselines) and the reliability diagram, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 5))
    sw = result["sweep"]
    y = "accuracy" if result["operating_point"]["accuracy"] is not None else "fidelity"  # no gold: fidelity
    ax.plot(
        [s["mean_cost"] for s in sw],
        [s[y] for s in sw],
        "-",
        color="tab:blue",
        alpha=0.6,
        label="ours: τ sweep",
    )
    op = result["operating_point"]
    ax.plot(op["mean_cost"], op[y], "*", ms=16, color="tab:blue", label="ours: operating point")
    for name, b in result["baselines"].items():
        if b is None:
            continue
        ax.plot(b["mean_cost"], b[y], "o", ms=6)
        ax.annotate(
            name.replace("agent:", ""),
            (b["mean_cost"], b[y]),
            fontsize=7,
            xytext=(3, 3),
            textcoords="offset points",
        )
    ax.axhline(op["oracle_accuracy"] if y == "accuracy" else 1.0, color="gray", ls=":", lw=1)
    ax.set_xlabel(f"mean cost relative to always-oracle ({op['cost_model']}, committee included)")
    ax.set_ylabel(y if y == "accuracy" else "fidelity (agreement with the oracle; no gold)")
    ax.set_title("Accuracy vs cost (held-out)")
    ax.legend(fontsize=8, loc="lower right")
    rel = result["calibration"]["reliability"]
    ax2.plot([0, 1], [0, 1], ":", color="gray")
    ax2.plot([r["mean_p"] for r in rel], [r["freq"] for r in rel], "o-")
    for r in rel:
        ax2.annotate(str(r["n"]), (r["mean_p"], r["freq"]), fontsize=7, xytext=(3, -9), textcoords="offset points")
    c = result["calibration"]
    ax2.set_title(f"Reliability (ECE {c['ece']:.3f}, AUROC {c['auroc']:.3f})")
    ax2.set_xlabel("predicted P(committee correct)")
    ax2.set_ylabel("observed frequency")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _row(name: str, p: dict) -> str:
    kinds = [k for k in ("flops", "usd") if f"mean_cost_{k}" in p]
    costs = " | ".join(f"{p[f'mean_cost_{k}']:.3f}" for k in kinds)
    acc = "n/a" if p["accuracy"] is None else f"{p['accuracy']:.4f}"
    return f"| {name} | {acc} | {p['fidelity']:.4f} | {p['oracle_call_rate']:.3f} | {costs} | {p['cost_saving']:.1%} |"


def markdown(result: dict) -> str:
    op = result["operating_point"]
    kinds = [k for k in ("flops", "usd") if f"mean_cost_{k}" in op]
    s = result["setup"]
    cal = result["calibration"]
    lines = [
        "# Pyramid MoA evaluation",
        "",
        f"Committee: {', '.join(s['committee'])}; oracle: {s['oracle']}; features `{s['feature_set']}`, "
        f"calibrator `{s['calibrator']}`, adaptive {s['adaptive']}; target {s['target']['kind']}={s['target']['value']}.",
        "",
        f"Protocol: {result['protocol']}.",
        "",
        f"Cost is relative to calling the oracle on every question, committee calls included; saving is in the "
        f"`{op['cost_model']}` model. Prompt tokens: {s['prompt_tokens']}.",
        "",
        f"Accuracy is against gold (n/a without it); fidelity is agreement with the oracle's answer. The fit's "
        f"labels: {s.get('labels', 'gold')}.",
        "",
        "| policy | accuracy | fidelity | oracle calls | " + " | ".join(f"cost ({k})" for k in kinds) + " | saving |",
        "|---|---|---|---|" + "---|" * len(kinds) + "---|",
        _row("**ours**", op),
    ]
    for name, b in result["baselines"].items():
        lines.append(
            _row(name, b)
            if b is not None
            else f"| {name} | target unreachable on a fitting fold | | | " + "| " * len(kinds) + "|"
        )
    gold = (
        "No gold: accuracy not measured"
        if op["accuracy"] is None
        else f"Oracle accuracy {op['oracle_accuracy']:.4f}; ours {op['accuracy']:.4f} "
        f"({op['accuracy'] - op['oracle_accuracy']:+.4f}); McNemar p = {result['mcnemar_p']:.3g}"
    )
    lines += [
        "",
        f"{gold}; fidelity {op['fidelity']:.4f} (disagreement {op['disagreement']:.4f}); "
        f"APGR = {result['apgr'] if result['apgr'] is None else round(result['apgr'], 3)}.",
        "",
        f"Calibration ({cal['of']}): ECE {cal['ece']:.4f}, Brier {cal['brier']:.4f}, AUROC {cal['auroc']:.4f}.",
        "",
        f"Budget targeting: requested {result['budget_targeting_error']['requested']:.4f}, realised "
        f"{result['budget_targeting_error']['realised']:.4f} ({result['budget_targeting_error']['kind']}).",
        "",
        "Schedules fitted per fold (agents per stage, threshold):",
        "",
    ]
    for k, sch in enumerate(result["schedules"]):
        if sch and sch[0].get("oracle_only"):
            lines.append(f"- fold {k + 1}: the oracle alone (no schedule meets the target for less)")
            continue
        lines.append(
            f"- fold {k + 1}: " + " → ".join(f"{'+'.join(st['agents'])} (τ={st['threshold']:.3f})" for st in sch)
        )
    note = no_saving_note(op)
    if note:
        lines += ["", note]
    if result.get("by"):
        lines += ["", *by_group_table(result["by"])]
    for n in s.get("notes", []):
        lines += ["", f"Note: {n}."]
    return "\n".join(lines) + "\n"


def no_saving_note(op: dict) -> str:
    """The sentence a report carries when some fold's fit found no saving at the target."""
    k, n = op.get("oracle_only_folds", 0), op.get("n_folds", 0)
    if not k:
        return ""
    if k == n:
        return "No saving exists at this target: every fold's fit chose the oracle alone (cost 1.0)."
    return f"No saving at this target on {k} of {n} folds: there the oracle alone answered (cost 1.0)."


def _f(v: float | None, fmt: str = ".4f") -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def by_group_table(by: dict) -> list[str]:
    """``evaluate``'s ``by`` figures as a markdown table, one row per value of the field."""
    lines = [
        f"Per {by['field']} (the same cross-fitted routers, held-out questions; no fit per group):",
        "",
        f"| {by['field']} | n | accuracy | oracle | majority vote | oracle calls | cost | AUROC |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for value, p in by["groups"].items():
        lines.append(
            f"| {value} | {p['n_questions']} | {_f(p['accuracy'])} | {_f(p['oracle_accuracy'])} | "
            f"{_f(p['committee_majority_accuracy'])} | {_f(p['oracle_call_rate'], '.3f')} | {_f(p['mean_cost'], '.3f')} | "
            f"{_f(p['auroc'], '.3f')} |"
        )
    return lines
