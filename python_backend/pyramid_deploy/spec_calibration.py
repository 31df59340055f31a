"""Calibrate a replay deployment from its own traces: ``pyramid calibrate`` driven by the spec.

A replay spec names the traces its engines serve, the committee and the oracle; its ``calibrate``
block holds the rest of the fit's options (task, cost model, target, fit fraction ...) as the
``pyramid calibrate`` flags they are, without the dashes (``fit_fraction: 0.5`` is
``--fit-fraction 0.5``; ``no_embedding: true`` is ``--no-embedding``). So the models and the traces
are written once, in the spec, and the Makefile has one rule for every replay profile of a recorded
set (``make serve PROFILE=replay-nq``). The task is the block's, else the router's (unless ``auto``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pyramid_moa.cli import build_parser

from .render import SpecError, _model_entry, load_spec


def _calibrate_flags() -> set[str]:
    """The long options ``pyramid calibrate`` takes (read from its parser: one home for them)."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {s for a in sub.choices["calibrate"]._actions for s in a.option_strings if s.startswith("--")}


# Set from the spec's own keys, never from its calibrate block.
FROM_SPEC = {"--traces", "--committee", "--oracle", "--out"}


def calibrate_argv(spec_path: str | Path, out: str | Path) -> list[str]:
    """The ``pyramid calibrate`` command line (after ``pyramid``) that fits ``spec_path``'s calibration."""
    spec_path = Path(spec_path).resolve()
    spec = load_spec(spec_path)
    where = f"{spec_path}: calibrate"
    engine = spec.get("engine") or {}
    if engine.get("kind") != "replay" or "traces" not in engine:
        raise SpecError(f"{where}: only a replay spec (engine kind replay, with traces) calibrates from its traces")
    traces = Path(str(engine["traces"]))
    traces = traces if traces.is_absolute() else (spec_path.parent / traces).resolve()
    if not (traces / "questions.jsonl").is_file():
        raise SpecError(f"{where}: the spec's traces {traces} hold no questions.jsonl (not fetched?)")
    entries = [_model_entry(e, where) for e in [*spec["agents"], spec["oracle"]]]
    for e in entries:
        if e.get("source", e["name"]) != e["name"]:
            raise SpecError(
                f"{where}: {e['name']!r} replays source {e['source']!r}: calibrate on the sources and relabel "
                "(pyramid relabel_calibration) instead"
            )
    names = [e["name"] for e in entries]
    argv = ["calibrate", "--traces", str(traces), "--committee", ",".join(names[:-1]), "--oracle", names[-1]]
    block: dict[str, Any] = dict(spec.get("calibrate") or {})
    task = block.pop("task", None) or (spec.get("router") or {}).get("task")
    if task and task != "auto":
        argv += ["--task", str(task)]
    known = _calibrate_flags() - FROM_SPEC - {"--task", "--help"}
    for key, value in block.items():
        flag = "--" + str(key).replace("_", "-")
        if flag not in known:
            raise SpecError(
                f"{where}: unknown option {key!r}; known: {', '.join(sorted(k[2:].replace('-', '_') for k in known))}"
            )
        if value is True:
            argv.append(flag)
        elif value is False or value is None:
            continue
        else:
            for v in value if isinstance(value, list) else [value]:
                argv += [flag, str(v)]
    return [*argv, "--out", str(out)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("spec", type=Path, help="a replay deployment spec (deploy/replay-*.yaml)")
    ap.add_argument("--out", type=Path, required=True, help="calibration JSON to write")
    ap.add_argument("--print", action="store_true", help="print the pyramid calibrate command line, do not run it")
    a = ap.parse_args(argv)
    try:
        cmd = calibrate_argv(a.spec, a.out)
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if a.print:
        print("pyramid " + " ".join(cmd))
        return 0
    from pyramid_moa.cli import main as pyramid

    a.out.parent.mkdir(parents=True, exist_ok=True)
    return pyramid(cmd)


if __name__ == "__main__":
    sys.exit(main())
