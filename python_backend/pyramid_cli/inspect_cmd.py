"""``pyramid inspect PATH ...``: what a trace directory or a calibration holds, before calibrating on it or
deploying it.

* A trace directory (``pyramid record`` output, a shadow directory, ``data/gsm8k``): each source with its
  size and prices (which cost models can price it), its answered questions, and how many questions have
  gold; the cost models every source can price.
* A calibration (one artifact or a set; a model repository's router directory reads its live one, the
  deployed file when there is one): per task, the committee and oracle, the labels it was fitted on and
  on how many questions, its cost model, the schedule (each stage's members and threshold) and what the
  fit expects (oracle-call rate, fidelity), which the router's drift alarms watch.

Reads files only (no server, no ``tritonclient``); exit 2 with the cause when a path is neither.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pyramid_moa.artifact import ArtifactError, CalibrationArtifact, load_calibrations
from pyramid_moa.cli import DefaultsFormatter
from pyramid_moa.cost import COST_MODELS
from pyramid_moa.traces import TraceError, TraceSet


def priceable(ts: TraceSet, names: list[str] | None = None) -> list[str]:
    """The cost models that can price every named source (all sources when None)."""
    names = list(ts.sources) if names is None else names
    out = []
    for kind in COST_MODELS:
        if kind == "flops" and all(ts.sources[n].params_b for n in names):
            out.append(kind)
        if kind == "usd" and all(
            ts.sources[n].price_in_per_1k is not None and ts.sources[n].price_out_per_1k is not None for n in names
        ):
            out.append(kind)
    return out


def describe_traces(ts: TraceSet) -> dict[str, Any]:
    rows = []
    for name, s in sorted(ts.sources.items()):
        try:
            answered = len(ts.samples(name))
        except (TraceError, OSError):
            answered = None
        rows.append({
            "source": name,
            "model": s.model,
            "params_b": s.params_b,
            "usd_per_1k": None if s.price_in_per_1k is None else [s.price_in_per_1k, s.price_out_per_1k],
            "answered": answered,
            "license": s.license,
        })  # fmt: skip
    return {
        "kind": "traces",
        "path": str(ts.root),
        "questions": len(ts.questions),
        "with_gold": sum(q.gold is not None for q in ts.questions.values()),
        "cost_models": priceable(ts),
        "sources": rows,
    }


def describe_calibration(path: Path, cals: dict[str, CalibrationArtifact]) -> dict[str, Any]:
    tasks = []
    for task, art in cals.items():
        expected = art.fit_summary.get("expected", {}) or {}
        tasks.append({
            "task": task,
            "committee": art.committee,
            "oracle": art.oracle,
            "labels": art.fitted_on.get("labels", "gold"),
            "fitted_on_questions": art.fitted_on.get("n_questions", len(art.fitted_on.get("idx", []))),
            "cost_model": art.target.get("cost_model"),
            "target": {k: v for k, v in art.target.items() if k != "cost_model"},
            "stages": [{"agents": st["agents"], "threshold": st["threshold"]} for st in art.stages],
            "expected": expected,
        })  # fmt: skip
    return {"kind": "calibration", "path": str(path), "tasks": tasks}


def describe(path: Path) -> dict[str, Any]:
    if path.is_dir() and (path / "config.pbtxt").is_file():  # a router's directory: its live calibration
        from pyramid_triton.hot_reload import live_path

        path = live_path(path / "calibration.json")
    if path.is_dir():
        return describe_traces(TraceSet.open(path))
    return describe_calibration(path, load_calibrations(path))


def _fmt_num(v: Any) -> str:
    return "-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))


def render_text(d: dict[str, Any]) -> str:
    if d["kind"] == "traces":
        lines = [
            f"{d['path']}: {d['questions']} questions, {d['with_gold']} with gold; "
            f"cost models that price every source: {', '.join(d['cost_models']) or 'none (give --params / --price)'}",
            f"  {'source':<44} {'params_b':>8} {'usd/1k in,out':>16} {'answered':>8}  license",
        ]
        for r in d["sources"]:
            usd = "-" if r["usd_per_1k"] is None else ",".join(f"{x:g}" for x in r["usd_per_1k"])
            lines.append(
                f"  {r['source']:<44} {_fmt_num(r['params_b']):>8} {usd:>16} {_fmt_num(r['answered']):>8}  {r['license']}"
            )
        return "\n".join(lines)
    lines = [f"{d['path']}: calibration of {len(d['tasks'])} task(s)"]
    for t in d["tasks"]:
        exp = ", ".join(f"{k} {_fmt_num(v)}" for k, v in t["expected"].items()) or "none stated"
        lines += [
            f"  task {t['task']}: {', '.join(t['committee'])} -> {t['oracle']}",
            f"    labels {t['labels']} on {t['fitted_on_questions']} questions; cost model {t['cost_model']}; "
            f"target {json.dumps(t['target'])}",
            f"    expects: {exp}",
        ]
        for k, st in enumerate(t["stages"]):
            lines.append(f"    stage {k}: {', '.join(st['agents'])}  threshold {st['threshold']:.4f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        formatter_class=DefaultsFormatter,
        prog="pyramid inspect",
        description="What a trace directory or a calibration holds (sources, cost facts; schedule, thresholds, "
        "expected rates)",
    )
    ap.add_argument("paths", nargs="+", help="trace directories, calibration files, or a router's model directory")
    ap.add_argument("--json", action="store_true", help="one JSON object per path")
    a = ap.parse_args(argv)
    for p in a.paths:
        try:
            d = describe(Path(p))
        except (ArtifactError, TraceError, OSError) as exc:
            print(f"pyramid inspect: error: {exc}", file=sys.stderr)
            return 2
        print(json.dumps(d) if a.json else render_text(d))
    return 0


if __name__ == "__main__":
    sys.exit(main())
