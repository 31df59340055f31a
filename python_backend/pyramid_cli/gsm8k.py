"""``pyramid run-gsm8k``: send GSM8K questions through a deployment and summarise what came back.

The pure parts (loading and sampling questions, grading, the summary arithmetic, the table and
the progress line) take plain values, so they are tested without a server; ``run_questions``
drives an ``AsyncPyramidClient`` with bounded concurrency. Grading is the offline evaluator's
(``pyramid_moa.answers``), which is why this command lives here and not in the client.

Summary figures, over the questions sent:

- ``accuracy``: correct / sent (a request that failed counts as wrong; ``errors`` says how many);
- ``oracle_call_rate``: answered requests where the router escalated (the oracle was called);
- ``mean_cost``: per cost model, the mean over answered requests of the cost relative to one oracle
  call on that question (the server's ``costs``), i.e. relative to always-oracle; None where the
  deployment does not know that cost model. (``pyramid evaluate`` reports sum(cost) / sum(oracle
  cost) instead; the two agree when the oracle's cost varies little between questions.)
- ``degraded`` / ``provisional``: answered requests so marked;
- ``latency_ms``: client-side request latency, p50 / p95 / mean over answered requests.

Exit codes of ``run_gsm8k_main``: 0 ok; 1 any question failed (the summary is printed all the
same); 2 usage errors (bad flags, unreadable questions or calibration file).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from pyramid_bench.perf import percentile
from pyramid_client import AsyncPyramidClient, PyramidError, PyramidResult
from pyramid_client.cli import add_connection_args, add_routing_args, env_inference_key, parse_args, routing_kwargs
from pyramid_moa.answers import get_task
from pyramid_moa.artifact import write_json_atomic
from pyramid_moa.cli import DefaultsFormatter
from pyramid_moa.cost import COST_MODELS

DEFAULT_QUESTIONS = Path("data") / "gsm8k" / "questions.jsonl"
REPO_ROOT = Path(__file__).resolve().parents[2]


class UsageError(ValueError):
    """A bad flag or input file (exit 2); the message names the cause."""


@dataclass(frozen=True)
class Question:
    idx: int
    question: str
    gold: str | None


@dataclass
class Outcome:
    """One question sent: its result, or the error it got."""

    question: Question
    result: PyramidResult | None = None
    error: PyramidError | None = None
    correct: bool = False
    responses: int = 0

    def to_dict(self) -> dict[str, Any]:
        r = self.result
        d: dict[str, Any] = {"idx": self.question.idx, "gold": self.question.gold, "correct": self.correct}
        if r is not None:
            d.update(
                answer=r.answer, tier=r.tier, escalated=r.escalated, confidence=r.confidence, agreement=r.agreement,
                degraded=r.degraded, provisional=r.provisional, cost=r.cost, costs=r.costs, calls=r.calls,
                failed_agents=r.failed_agents, latency_ms=round(r.latency_s * 1000, 3),
                server_latency_ms=r.server_latency_ms, request_id=r.request_id,
            )  # fmt: skip
        if self.error is not None:
            d["error"] = {"code": self.error.code, "message": self.error.message, "attempts": self.error.attempts}
        return d


def default_questions_path() -> Path:
    """data/gsm8k/questions.jsonl under the working directory, else under this source tree."""
    if DEFAULT_QUESTIONS.is_file():
        return DEFAULT_QUESTIONS
    return REPO_ROOT / DEFAULT_QUESTIONS


def load_questions(path: str | Path) -> list[Question]:
    """``{"idx": int, "question": str, "gold": str|null, ...}`` per line (docs/TRACES.md)."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UsageError(f"{p}: cannot read: {exc.strerror or exc}") from None
    out: list[Question] = []
    seen: set[int] = set()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            idx, text = obj["idx"], obj["question"]
            if not isinstance(idx, int) or isinstance(idx, bool) or not isinstance(text, str):
                raise TypeError("'idx' must be an int and 'question' a string")
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise UsageError(f"{p}:{n}: not a question line ({type(exc).__name__}: {exc})") from None
        if idx in seen:
            raise UsageError(f"{p}:{n}: duplicate idx {idx}")
        seen.add(idx)
        gold = obj.get("gold")
        out.append(Question(idx, text, None if gold is None else str(gold)))  # the task reads it (grade)
    if not out:
        raise UsageError(f"{p}: no questions")
    return out


def fitted_indices(calibration: str | Path) -> set[int]:
    """The question ids a calibration artifact was fitted on (``fitted_on.idx``)."""
    p = Path(calibration)
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
        return {int(i) for i in obj["fitted_on"]["idx"]}
    except OSError as exc:
        raise UsageError(f"{p}: cannot read: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"{p}: not a calibration artifact with fitted_on.idx ({type(exc).__name__}: {exc})") from None


def select(
    questions: Sequence[Question],
    n: int | None,
    seed: int | None = None,
    exclude: Iterable[int] = (),
    only: Iterable[int] | None = None,
) -> list[Question]:
    """``n`` questions (all if None): those in ``only`` if given, minus ``exclude``; the first ``n``
    in file order, or a random sample drawn with ``seed``, returned in idx order."""
    pool = list(questions)
    if only is not None:
        want = list(dict.fromkeys(only))
        by_idx = {q.idx: q for q in pool}
        missing = [i for i in want if i not in by_idx]
        if missing:
            raise UsageError(f"no question with idx {', '.join(map(str, missing[:5]))}")
        pool = [by_idx[i] for i in want]
    ex = set(exclude)
    pool = [q for q in pool if q.idx not in ex]
    if n is None:
        return pool
    if n <= 0:
        raise UsageError(f"--n must be > 0, got {n}")
    if n > len(pool):
        raise UsageError(f"--n {n}, but only {len(pool)} questions are eligible")
    if seed is None:
        return pool[:n]
    return sorted(random.Random(seed).sample(pool, n), key=lambda q: q.idx)


def grade(answer: str | None, gold: str | None, task: str = "gsm8k") -> bool:
    """The offline evaluator's rule: the task's own grade against the gold as the task reads it."""
    t = get_task(task)
    return gold is not None and bool(t.grade(answer, t.gold_of(gold)))


def summarize(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    n = len(outcomes)
    ok = [o for o in outcomes if o.result is not None]
    results = [o.result for o in ok]
    correct = sum(o.correct for o in outcomes)
    mean_cost: dict[str, float | None] = {}
    for kind in COST_MODELS:
        vals = [r.costs.get(kind) for r in results]
        known = [v for v in vals if v is not None]
        mean_cost[kind] = sum(known) / len(known) if known and len(known) == len(vals) else None
    primary = [r.cost for r in results]
    latencies = [r.latency_s * 1000 for r in results]
    return {
        "n": n,
        "answered": len(ok),
        "errors": n - len(ok),
        "error_codes": dict(Counter(o.error.code for o in outcomes if o.error is not None)),
        "correct": correct,
        "accuracy": correct / n if n else None,
        "oracle_calls": sum(r.escalated for r in results),
        "oracle_call_rate": sum(r.escalated for r in results) / len(ok) if ok else None,
        "mean_cost": mean_cost,
        "mean_cost_primary": (sum(primary) / len(primary) if primary and all(c is not None for c in primary) else None),
        "degraded": sum(r.degraded for r in results),
        "provisional": sum(r.provisional for r in results),
        "latency_ms": {
            "p50": percentile(latencies, 50),
            "p95": percentile(latencies, 95),
            "mean": sum(latencies) / len(latencies) if latencies else None,
        },
    }


def _fmt(v: float | None, spec: str = ".3f") -> str:
    return "n/a" if v is None else format(v, spec)


def format_summary(s: dict[str, Any]) -> str:
    costs = ", ".join(f"{_fmt(v)} ({k})" for k, v in s["mean_cost"].items() if v is not None)
    if not costs:
        costs = (
            _fmt(s["mean_cost_primary"]) + " (calibration's cost model)"
            if s["mean_cost_primary"] is not None
            else "n/a"
        )
    lat = s["latency_ms"]
    lines = [
        f"questions: {s['n']}  answered: {s['answered']}  errors: {s['errors']}"
        + (f" ({', '.join(f'{k} x{v}' for k, v in sorted(s['error_codes'].items()))})" if s["error_codes"] else ""),
        f"accuracy: {_fmt(s['accuracy'], '.4f')} ({s['correct']}/{s['n']})",
        f"oracle-call rate: {_fmt(s['oracle_call_rate'])} ({s['oracle_calls']}/{s['answered']})",
        f"mean cost vs always-oracle: {costs}",
        f"degraded: {s['degraded']}  provisional: {s['provisional']}",
        f"latency ms: p50 {_fmt(lat['p50'], '.1f')}  p95 {_fmt(lat['p95'], '.1f')}  mean {_fmt(lat['mean'], '.1f')}",
    ]
    return "\n".join(lines)


TABLE_COLUMNS = ("idx", "tier", "confidence", "agreement", "answer", "gold", "correct", "flags")


def table_rows(outcomes: Sequence[Outcome]) -> list[list[str]]:
    rows = []
    for o in outcomes:
        r = o.result
        if r is None:
            code = o.error.code if o.error is not None else "?"
            rows.append([str(o.question.idx), "error", "", "", code, o.question.gold or "", "no", ""])
            continue
        flags = ("D" if r.degraded else "") + ("P" if r.provisional else "")
        rows.append(
            [
                str(o.question.idx),
                r.tier,
                f"{r.confidence:.3f}",
                f"{r.agreement:.2f}",
                r.answer if r.answer is not None else "-",
                o.question.gold if o.question.gold is not None else "-",
                "yes" if o.correct else "no",
                flags,
            ]
        )
    return rows


def format_table(outcomes: Sequence[Outcome], max_answer: int = 14) -> str:
    """A fixed-width table, one row per question; ``flags``: D degraded, P provisional."""
    rows = [[c if len(c) <= max_answer else c[: max_answer - 1] + "~" for c in row] for row in table_rows(outcomes)]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(TABLE_COLUMNS)]
    numeric = {0, 2, 3}

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    out = [line(TABLE_COLUMNS), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    return "\n".join(out)


def progress_line(done: int, total: int, elapsed_s: float, errors: int = 0, width: int = 30) -> str:
    frac = done / total if total else 1.0
    filled = int(round(frac * width))
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    err = f"  errors {errors}" if errors else ""
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {frac:4.0%}  {rate:.1f} q/s{err}"


class Progress:
    """A one-line ``\\r`` progress bar on a terminal; silent when disabled or not a TTY."""

    def __init__(self, total: int, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.stream = sys.stderr if stream is None else stream
        isatty = getattr(self.stream, "isatty", lambda: False)
        self.enabled = enabled and bool(isatty())
        self.total, self.done, self.errors = total, 0, 0
        self.t0 = time.perf_counter()
        self._last = 0.0

    def update(self, ok: bool = True) -> None:
        self.done += 1
        self.errors += 0 if ok else 1
        now = time.perf_counter()
        if self.enabled and (now - self._last > 0.1 or self.done == self.total):
            self._last = now
            self.stream.write("\r" + progress_line(self.done, self.total, now - self.t0, self.errors))
            self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r\x1b[2K")  # clear the line
            self.stream.flush()


async def run_questions(
    client: Any,
    questions: Sequence[Question],
    concurrency: int = 4,
    on_done: Callable[[Outcome], None] | None = None,
    task: str | None = None,
    **ask_kwargs: Any,
) -> list[Outcome]:
    """Ask every question through ``client`` (an ``AsyncPyramidClient``), at most ``concurrency``
    at a time; outcomes in the order of ``questions``. A request error is recorded, not raised.
    ``task``: the answer task the router is asked to use (None: the deployment's default) and the
    answers are graded by (gsm8k when None)."""
    if concurrency < 1:
        raise UsageError(f"--concurrency must be >= 1, got {concurrency}")
    sem = asyncio.Semaphore(concurrency)

    async def one(q: Question) -> Outcome:
        async with sem:
            try:
                r = await client.ask(q.question, request_id=f"gsm8k-{q.idx}", task=task, **ask_kwargs)
                o = Outcome(q, r, None, grade(r.answer, q.gold, task or "gsm8k"), 1)
            except PyramidError as exc:
                o = Outcome(q, None, exc, False)
        if on_done is not None:
            on_done(o)
        return o

    return list(await asyncio.gather(*(one(q) for q in questions)))


# --- the command ------------------------------------------------------------------------------------


def add_selection_args(ap: argparse.ArgumentParser, concurrency: int, what: str) -> None:
    """``--n``, ``--seed``, ``--idx`` (which questions: ``choose``), ``--concurrency`` (``what`` in
    flight) and ``--quiet`` (no ``Progress``)."""
    ap.add_argument("--n", type=int, help="number of questions (default: all eligible)")
    ap.add_argument("--seed", type=int, help="sample the questions at random with this seed (default: the first N)")
    ap.add_argument("--idx", help="comma-separated question ids to choose from (default: all)")
    ap.add_argument("--concurrency", type=int, default=concurrency, help=f"{what} in flight (default {concurrency})")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")


def choose(args: argparse.Namespace, questions: Sequence[Question], exclude: Iterable[int] = ()) -> list[Question]:
    """The questions ``add_selection_args``' flags select (``select``); UsageError on a bad flag."""
    if args.concurrency < 1:
        raise UsageError(f"--concurrency must be >= 1, got {args.concurrency}")
    only = None
    if args.idx:
        try:
            only = [int(x) for x in args.idx.split(",") if x.strip()]
        except ValueError:
            raise UsageError(f"--idx must be comma-separated integers, got {args.idx!r}") from None
    return select(questions, args.n, args.seed, exclude, only)


def gsm8k_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        formatter_class=DefaultsFormatter,
        prog="pyramid run-gsm8k",
        description="Send GSM8K questions through a Pyramid MoA deployment; print accuracy, oracle-call rate, "
        "cost relative to always-oracle and latency",
    )
    ap.add_argument("--questions", help="questions.jsonl (default data/gsm8k/questions.jsonl)")
    ap.add_argument(
        "--exclude-fitted", metavar="CALIBRATION", help="skip the questions this calibration artifact was fitted on"
    )
    add_selection_args(ap, 4, "requests")
    add_connection_args(ap)
    add_routing_args(ap)
    ap.add_argument("--table", action="store_true", help="print a table of the per-question decisions")
    ap.add_argument("--json", metavar="FILE", help="write the summary and every result to FILE")
    return ap


def run_gsm8k_main(argv: list[str] | None = None) -> int:
    args, protocol, url = parse_args(gsm8k_parser(), argv)
    try:
        questions = load_questions(args.questions or default_questions_path())
        exclude = fitted_indices(args.exclude_fitted) if args.exclude_fitted else set()
        chosen = choose(args, questions, exclude)
    except UsageError as exc:
        print(f"pyramid run-gsm8k: error: {exc}", file=sys.stderr)
        return 2

    progress = Progress(len(chosen), sys.stderr, enabled=not args.quiet)

    async def run() -> list[Outcome]:
        key = env_inference_key()  # a server that keys inference
        async with AsyncPyramidClient(
            url, args.model, args.timeout, args.retries, protocol=protocol, inference_key=key
        ) as client:
            return await run_questions(
                client, chosen, args.concurrency, on_done=lambda o: progress.update(o.error is None),
                **routing_kwargs(args),
            )  # fmt: skip

    try:
        outcomes = asyncio.run(run())
    except ValueError as exc:
        print(f"pyramid run-gsm8k: error: {exc}", file=sys.stderr)
        return 2
    finally:
        progress.close()
    summary = summarize(outcomes)
    if args.table:
        print(format_table(outcomes))
        print()
    print(format_summary(summary))
    errors = [o for o in outcomes if o.error is not None]
    for o in errors[:5]:
        print(f"error on idx {o.question.idx}: {o.error}", file=sys.stderr)
    if len(errors) > 5:
        print(f"... and {len(errors) - 5} more errors", file=sys.stderr)
    if args.json:
        write_json_atomic(
            Path(args.json),
            {
                "summary": summary,
                "url": url,
                "protocol": protocol,
                "model": args.model,
                "request": {k: v for k, v in routing_kwargs(args).items() if v is not None},
                "results": [o.to_dict() for o in outcomes],
            },
        )
    return 1 if errors else 0
