"""Load tests with perf_analyzer and genai-perf: the runner, the measurement rounds and the summaries
(``scripts/perf.py``, ``make perf``, drives them against real servers; tests/test_perf_unit.py tests
them without one).

- ``PerfAnalyzer``: one perf_analyzer run per call (``csv/<name>.csv``, ``logs/<name>.log``); a
  concurrency ``sweep`` whose left-out levels are measured again on their own; ``window_run``
  (a fixed number of time windows, no stability check); ``count_run`` (``--request-count``, the
  throughput recomputed from the profile export); a run that hangs is killed and started again.
- ``zero_latency_phase``: a sweep per target, then interleaved rounds at concurrency 1 and 16
  (``round_metrics``: router overhead and throughput ratio taken within a round, then the median).
- The GPU-like latency model's expectation (``critical_path_s``, ``tolerance_stats``), the verdicts
  against the targets and the report (``targets_table``, ``markdown``, ``plot``).
- ``render_spec``: the replay deployment these run against, on the given traces, optionally with
  per-model ``seconds_per_token``.

No router library here: what needs the calibration and the traces stays in the script.
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pyramid_client.wire import DEFAULT_MAX_TOKENS
from pyramid_ops import access

CACHE = Path(os.environ.get("PYRAMID_CACHE") or Path.home() / ".cache" / "pyramid-moa") / "perf_analyzer"
INSTALL_HINT = "run 'make setup-perf' (scripts/install_perf_analyzer.sh)"

# Targets of issue 5.
TARGET_OVERHEAD_MS = 1.0  # router overhead p50 at concurrency 1
TARGET_RATIO = 0.30  # routed / direct single-engine throughput at concurrency 16
TARGET_GPU_TOLERANCE = 0.05  # end-to-end latency within 5% of the route's critical path
# Targets of issue 16: the router against the bare-BLS floor (pyramid_bench.floor).
TARGET_FLOOR_EXCESS_MS = 0.5  # router overhead p50 at c=1 at most the floor's plus this
TARGET_FLOOR_RATIO = 0.80  # routed throughput at c=16 at least this share of the floor's

# GPU-like latency model (assumptions, not measurements): decode on one H100 is memory-bandwidth
# bound, one token reads every weight once. An 8B model in BF16 is 16 GB over 3.35 TB/s HBM3:
# 4.8 ms/token at best, about 8-12 ms/token as served single-stream (kernels, sampling,
# scheduling): 10 ms. A 70B model in BF16 on 4 x H100 (tensor parallel) reads 35 GB per GPU per
# token: 10.4 ms at best, plus all-reduces, about 25-35 ms/token as served: 30 ms. The replay
# engine models output tokens only (no prefill time).
AGENT_SPT = 0.010
ORACLE_SPT = 0.030


class PerfError(RuntimeError):
    """A measurement failed; the message says which and where its log is."""


class IncompleteCsv(PerfError):
    """perf_analyzer wrote fewer rows than concurrency levels asked for."""

    def __init__(self, path: Path, missing: list[int]) -> None:
        super().__init__(f"{path}: no row for concurrency {', '.join(map(str, missing))}")
        self.path = path
        self.missing = missing


# ---------------------------------------------------------------------------------------------
# Pure helpers (unit-tested in tests/test_perf_unit.py)


def concurrency_levels(spec: str) -> list[int]:
    """perf_analyzer's ``--concurrency-range start[:end[:step]]`` as the list of levels it visits."""
    parts = spec.split(":")
    if not 1 <= len(parts) <= 3 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"concurrency range must be start[:end[:step]] of positive integers, got {spec!r}")
    start, end, step = (int(parts[0]), int(parts[1]) if len(parts) > 1 else 0, int(parts[2]) if len(parts) > 2 else 1)
    end = end or start
    if start < 1 or step < 1 or end < start:
        raise ValueError(f"concurrency range needs 1 <= start <= end and step >= 1, got {spec!r}")
    return list(range(start, end + 1, step))


def input_data(questions: Sequence[str], max_tokens: int = DEFAULT_MAX_TOKENS) -> dict:
    """perf_analyzer ``--input-data`` JSON: one step per question (BYTES ``text_input`` of shape [1],
    INT32 ``max_tokens``); both the router and the engines take these two inputs."""
    if not questions:
        raise ValueError("no questions for --input-data")
    return {"data": [{"text_input": [q], "max_tokens": [int(max_tokens)]} for q in questions]}


def genai_perf_input(questions: Sequence[str]) -> str:
    """genai-perf ``--input-file`` JSONL: one ``{"text": question}`` per line."""
    return "".join(json.dumps({"text": q}) + "\n" for q in questions)


@dataclass(frozen=True)
class PaRow:
    """One row of a perf_analyzer CSV (latencies in microseconds)."""

    concurrency: int
    throughput: float
    p50_us: float
    p90_us: float
    p95_us: float
    p99_us: float
    filled: bool = False  # measured on its own after the sweep left it out
    throughput_pa: float | None = None  # perf_analyzer's own figure where ``throughput`` is recomputed


def read_pa_csv(path: Path) -> list[PaRow]:
    """Rows of a perf_analyzer ``-f`` CSV (the latency table; anything after a blank line, such as
    server metrics, is ignored). A missing or header-only file gives no rows."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    table = []
    for line in lines:
        if not line.strip():
            break
        table.append(line)
    rows = []
    for rec in csv.DictReader(table):
        try:
            rows.append(
                PaRow(
                    int(rec["Concurrency"]),
                    float(rec["Inferences/Second"]),
                    float(rec["p50 latency"]),
                    float(rec["p90 latency"]),
                    float(rec["p95 latency"]),
                    float(rec["p99 latency"]),
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PerfError(f"{path}: not a perf_analyzer latency CSV ({exc!r} in {rec})") from None
    return rows


def missing_levels(rows: Sequence[PaRow], levels: Sequence[int]) -> list[int]:
    have = {r.concurrency for r in rows}
    return [c for c in levels if c not in have]


def check_csv(path: Path, levels: Sequence[int]) -> list[PaRow]:
    """The CSV's rows, in ``levels`` order; ``IncompleteCsv`` if a level has no row."""
    rows = read_pa_csv(path)
    missing = missing_levels(rows, levels)
    if missing:
        raise IncompleteCsv(Path(path), missing)
    by_c = {r.concurrency: r for r in rows}
    return [by_c[c] for c in levels]


def export_throughput(path: Path) -> tuple[int, float]:
    """(requests, requests per second) from a perf_analyzer ``--profile-export-file``: answered
    requests over the time from the first request sent to the last response received.

    perf_analyzer's own throughput for a ``--request-count`` run divides by a window that ends at
    its next once-a-second poll (300 requests done in 0.86 s are reported as 300/s, not 349/s);
    the per-request timestamps of the export are exact (nanoseconds)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    reqs = [r for e in data.get("experiments", []) for r in e.get("requests", []) if r.get("response_timestamps")]
    if not reqs:
        raise PerfError(f"{path}: no answered requests in the profile export")
    first = min(r["timestamp"] for r in reqs)
    last = max(max(r["response_timestamps"]) for r in reqs)
    if last <= first:
        raise PerfError(f"{path}: responses do not come after the requests")
    return len(reqs), len(reqs) / ((last - first) / 1e9)


def critical_path_s(
    stages: Sequence[Sequence[str]],
    calls: Sequence[str],
    oracle: str,
    tokens: dict[str, int],
    spt: dict[str, float],
) -> tuple[float, float]:
    """(committee seconds, oracle seconds) a request's route should take with sleeping engines.

    ``stages``: the agents each committee stage asks *newly* (``Router.new_agents``), run one
    after the other; the agents of a stage run concurrently, so a stage takes as long as its
    slowest called agent (``spt[a] * tokens[a]``). A stage none of whose agents was called was not
    run, and no later stage was either. The oracle's time counts when it was called.
    """
    called = set(calls)
    committee = 0.0
    for agents in stages:
        ran = [a for a in agents if a in called]
        if not ran:
            break
        committee += max(spt[a] * tokens.get(a, 0) for a in ran)
    return committee, (spt[oracle] * tokens.get(oracle, 0) if oracle in called else 0.0)


def tolerance_stats(measured: Sequence[float], expected: Sequence[float], tol: float = TARGET_GPU_TOLERANCE) -> dict:
    """How far measured latencies exceed expected ones: excess = measured / expected - 1."""
    if len(measured) != len(expected):
        raise ValueError("measured and expected differ in length")
    if not measured:
        return {"n": 0}
    excess = [m / e - 1.0 for m, e in zip(measured, expected)]
    extra_ms = [(m - e) * 1000.0 for m, e in zip(measured, expected)]
    return {
        "n": len(excess),
        "within": sum(x <= tol for x in excess),
        "excess_median": statistics.median(excess),
        "excess_p95": percentile(excess, 95),
        "excess_max": max(excess),
        "excess_min": min(excess),
        "extra_ms_median": statistics.median(extra_ms),
        "extra_ms_max": max(extra_ms),
        "expected_s_median": statistics.median(expected),
    }


def percentile(xs: Sequence[float], q: float) -> float | None:
    """Linear-interpolation percentile (numpy's default), ``q`` in [0, 100], without numpy; None
    when ``xs`` is empty. (Also the latency summary of ``pyramid run-gsm8k``.)"""
    if not xs:
        return None
    s = sorted(xs)
    k = (len(s) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def round_metrics(rounds: Sequence[dict[str, dict[int, PaRow]]], routed: str, direct: str) -> dict:
    """Per-round overhead (routed p50 - direct p50 at c=1, ms) and throughput ratio (routed /
    direct at c=16), and their medians over rounds. ``rounds[r][target][c]`` is a ``PaRow``."""
    overheads = [(r[routed][1].p50_us - r[direct][1].p50_us) / 1000.0 for r in rounds]
    ratios = [r[routed][16].throughput / r[direct][16].throughput for r in rounds]
    return {
        "overhead_ms": statistics.median(overheads),
        "overhead_ms_rounds": overheads,
        "ratio": statistics.median(ratios),
        "ratio_rounds": ratios,
        "routed_p50_ms": statistics.median(r[routed][1].p50_us / 1000.0 for r in rounds),
        "direct_p50_ms": statistics.median(r[direct][1].p50_us / 1000.0 for r in rounds),
        "routed_rps": statistics.median(r[routed][16].throughput for r in rounds),
        "direct_rps": statistics.median(r[direct][16].throughput for r in rounds),
    }


def verdict(value: float, target: float, higher_is_better: bool, unit: str = "") -> str:
    """'met' or 'missed by X' (X in the value's unit, or points of a ratio when unit is '%')."""
    ok = value >= target if higher_is_better else value <= target
    if ok:
        return "met"
    gap = abs(value - target)
    return f"missed by {gap * 100:.1f} points" if unit == "%" else f"missed by {gap:.2f}{unit}"


# ---------------------------------------------------------------------------------------------
# perf_analyzer and genai-perf


def find_perf_analyzer() -> Path | None:
    """The real perf_analyzer: ``$PERF_ANALYZER``, the cache's wrapper, or one on PATH that says
    ``Perf Analyzer Version`` (not PyPI's binary-less 0.1.0 placeholder); None if there is none."""
    candidates = [os.environ.get("PERF_ANALYZER"), str(CACHE / "bin" / "perf_analyzer"), shutil.which("perf_analyzer")]
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK) and perf_analyzer_version(Path(c)):
            return Path(c)
    return None


def perf_analyzer_version(binary: Path) -> str | None:
    try:
        r = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in (r.stdout + r.stderr).splitlines():
        if line.startswith("Perf Analyzer Version"):
            return line.strip()
    return None


@dataclass
class PerfAnalyzer:
    """Runs perf_analyzer against one server; every run writes ``csv/<name>.csv`` and ``logs/<name>.log``."""

    binary: Path
    url: str
    out: Path
    input_path: Path
    runs: list[dict] = field(default_factory=list)
    # Request headers (``-H name:value``): the admin key, which perf_analyzer needs for the model's config
    # (behind the key: docs/SECURITY.md); a gRPC header is sent as metadata.
    headers: dict[str, str] = field(default_factory=dict)

    def command(
        self,
        model: str,
        csv_path: Path,
        concurrency: str,
        streaming: bool,
        request_count: int | None = None,
        window_ms: int = 1000,
        stability: int = 20,
        max_trials: int = 8,
        export: Path | None = None,
    ) -> list[str]:
        """``request_count``: one window of that many requests; otherwise time windows of
        ``window_ms``, until the last 3 agree within ``stability`` % (999: no check, exactly
        ``max_trials`` windows when that is 3), at most ``max_trials``."""
        cmd = [str(self.binary), "-m", model, "-u", self.url, "-i", "grpc", "--input-data", str(self.input_path)]
        cmd += ["--concurrency-range", concurrency, "-f", str(csv_path)]
        for name, value in self.headers.items():
            cmd += ["-H", f"{name}:{value}"]
        if streaming:
            cmd.append("--streaming")
        if export is not None:
            cmd += ["--profile-export-file", str(export)]
        if request_count:
            cmd += ["--request-count", str(request_count)]
        else:
            cmd += ["--measurement-interval", str(window_ms), "--stability-percentage", str(stability)]
            cmd += ["--max-trials", str(max_trials)]
        return cmd

    def run(
        self,
        name: str,
        model: str,
        concurrency: str,
        streaming: bool,
        timeout_s: float = 600,
        attempts: int = 2,
        allow_unstable: bool = False,
        **kw,
    ) -> Path:
        """One perf_analyzer run; its CSV path (not checked here; it may not exist when
        ``allow_unstable`` and the first level never stabilised). PerfError if it fails.

        A run still going after ``timeout_s`` is killed and started again (up to ``attempts`` in
        all): perf_analyzer 2.60 occasionally never finishes a ``--request-count`` run here (seen
        once in about 100 runs: gRPC streaming to an engine at concurrency 16, every request
        answered by the server, perf_analyzer idle and waiting). Such runs are listed in ``runs``
        with ``hung: true``."""
        (self.out / "csv").mkdir(parents=True, exist_ok=True)
        (self.out / "logs").mkdir(parents=True, exist_ok=True)
        csv_path = self.out / "csv" / f"{name}.csv"
        cmd = self.command(model, csv_path, concurrency, streaming, **kw)
        log = self.out / "logs" / f"{name}.log"
        for attempt in range(1, attempts + 1):
            csv_path.unlink(missing_ok=True)
            t0 = time.perf_counter()
            try:
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
            except subprocess.TimeoutExpired as exc:  # subprocess.run has killed it
                out = _text(exc.stdout) + "\n" + _text(exc.stderr)
                log.write_text(" ".join(cmd) + f"\n\nKILLED after {timeout_s:.0f} s\n\n" + out, encoding="utf-8")
                self.runs.append({"name": name, "attempt": attempt, "hung": True, "seconds": round(timeout_s, 1)})
                print(f"perf: perf_analyzer {name} hung; killed after {timeout_s:.0f} s", file=sys.stderr, flush=True)
                continue
            log.write_text(" ".join(cmd) + "\n\n" + r.stdout + "\n" + r.stderr, encoding="utf-8")
            self.runs.append(
                {"name": name, "attempt": attempt, "rc": r.returncode, "seconds": round(time.perf_counter() - t0, 2)}
            )
            unstable = "Failed to obtain stable measurement" in r.stdout + r.stderr
            if r.returncode != 0 and not csv_path.is_file() and not (allow_unstable and unstable):
                tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-6:])
                raise PerfError(f"perf_analyzer {name} exited {r.returncode} without a CSV (log {log}):\n{tail}")
            return csv_path
        raise PerfError(f"perf_analyzer {name} hung {attempts} times (killed after {timeout_s:.0f} s each; log {log})")

    def sweep(self, name: str, model: str, levels_spec: str, streaming: bool, **kw) -> list[PaRow]:
        """One sweep run (time windows with the stability check, ``**kw`` to ``command``); each
        level it left out is measured on its own (``window_run``: three windows, no stability check)
        and marked ``filled``. The rows in level order, or IncompleteCsv if a level is still missing."""
        levels = concurrency_levels(levels_spec)
        window_ms = kw.get("window_ms", 1000)
        timeout = 60 + 2 * len(levels) * (kw.get("max_trials", 8) + 1) * window_ms / 1000.0
        path = self.run(name, model, levels_spec, streaming, timeout_s=timeout, allow_unstable=True, **kw)
        rows = read_pa_csv(path)
        missing = missing_levels(rows, levels)
        for c in missing:
            row = self.window_run(f"{name}_fill_c{c}", model, c, streaming, window_ms)
            rows.append(PaRow(**{**asdict(row), "filled": True}))
        if missing and path.is_file():
            with path.open("a", encoding="utf-8") as f:
                f.write(f"# not stable, measured by separate runs ({name}_fill_c*.csv): {missing}\n")
        by_c = {r.concurrency: r for r in rows}
        still = missing_levels(rows, levels)
        if still:
            raise IncompleteCsv(path, still)
        return [by_c[c] for c in levels]

    def window_run(
        self, name: str, model: str, c: int, streaming: bool, window_ms: int = 1000, windows: int = 3
    ) -> PaRow:
        """Exactly ``windows`` time windows at concurrency ``c`` (no stability check: this VM's
        speed drifts): throughput and latencies over them."""
        timeout = 30 + 2 * (windows + 1) * window_ms / 1000.0
        path = self.run(
            name, model, str(c), streaming, timeout_s=timeout, window_ms=window_ms, stability=999, max_trials=windows
        )
        return check_csv(path, [c])[0]

    def count_run(
        self, name: str, model: str, c: int, streaming: bool, n: int, expected_s: float | None = None
    ) -> PaRow:
        """``n`` requests at concurrency ``c`` in one window; throughput recomputed from the profile
        export (``export_throughput``; perf_analyzer's own figure kept as ``throughput_pa``). Killed
        and rerun if it takes more than 30 s + 5 x ``expected_s`` (600 s when not given)."""
        timeout = 30 + 5 * expected_s if expected_s else 600
        export = self.out / "logs" / f"{name}.export.json"
        path = self.run(name, model, str(c), streaming, timeout_s=timeout, request_count=n, export=export)
        row = check_csv(path, [c])[0]
        answered, rate = export_throughput(export)
        if answered != n:
            raise PerfError(f"perf_analyzer {name}: {answered} answered requests in {export}, asked for {n}")
        return PaRow(**{**asdict(row), "throughput": rate, "throughput_pa": row.throughput})


@dataclass(frozen=True)
class Target:
    key: str  # short name in file names and tables
    model: str
    streaming: bool
    label: str


def _text(b: bytes | str | None) -> str:
    if b is None:
        return ""
    return b if isinstance(b, str) else b.decode("utf-8", "replace")


def run_genai_perf(
    exe: Path,
    tokenizer: Path,
    url: str,
    metrics_url: str,
    input_file: Path,
    out: Path,
    streaming: bool,
    n: int,
    headers: dict[str, str] | None = None,
) -> dict:
    """One genai-perf profile of ``pyramid`` (TensorRT-LLM text API over KServe gRPC); its metrics.
    ``headers``: sent with each request (``-H``; the admin key, for the model's config)."""
    art = out / ("streaming" if streaming else "non_streaming")
    shutil.rmtree(art, ignore_errors=True)
    cmd = [str(exe), "profile", "-m", "pyramid", "--backend", "tensorrtllm", "--endpoint-type", "kserve"]
    cmd += ["-u", url, "--server-metrics-url", metrics_url, "--tokenizer", str(tokenizer)]
    cmd += ["--input-file", str(input_file), "--concurrency", "1", "--request-count", str(n)]
    cmd += ["--warmup-request-count", "10", "--artifact-dir", str(art)]
    if streaming:
        cmd.append("--streaming")
    if headers:  # after "--", genai-perf hands arguments to the perf_analyzer it runs
        cmd.append("--")
        for name, value in headers.items():
            cmd += ["-H", f"{name}:{value}"]
    out.mkdir(parents=True, exist_ok=True)
    log = out / f"genai_perf_{art.name}.log"
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    log.write_text(" ".join(cmd) + "\n\n" + r.stdout + "\n" + r.stderr, encoding="utf-8")
    exports = sorted(art.rglob("profile_export_genai_perf.json"))
    if r.returncode != 0 or not exports:
        tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-8:])
        return {"ok": False, "rc": r.returncode, "log": str(log), "error": tail}
    data = json.loads(exports[0].read_text(encoding="utf-8"))
    pick = {
        k: data[k]
        for k in ("request_latency", "time_to_first_token", "request_throughput", "output_sequence_length")
        if k in data
    }
    return {"ok": True, "rc": 0, "log": str(log), "export": str(exports[0]), "metrics": pick, "command": cmd}


# ---------------------------------------------------------------------------------------------
# The run


def wait_for_quiet(max_load: float, wait_s: float) -> tuple[float, bool]:
    """Wait (up to ``wait_s``) until the 1-minute load average is below ``max_load``."""
    deadline = time.monotonic() + wait_s
    while True:
        load = os.getloadavg()[0]
        if load <= max_load:
            return load, True
        if time.monotonic() >= deadline:
            return load, False
        print(f"perf: 1-min load {load:.2f} > {max_load}; waiting (other jobs running?)", file=sys.stderr, flush=True)
        time.sleep(15)


class CpuMeter:
    """CPU used on this machine by anything but this run, between two points: the machine's busy
    time (``/proc/stat``) minus this process's and its reaped children's (``os.times``: the
    servers, their stubs and every perf_analyzer run, once they have exited). Also the steal time
    (the hypervisor running something else on our vCPUs). Exact, not sampled."""

    def __init__(self) -> None:
        self.tick = os.sysconf("SC_CLK_TCK")
        self.cores = len(os.sched_getaffinity(0))

    def snapshot(self) -> dict[str, float]:
        try:
            f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        except (OSError, ValueError, IndexError):
            f = [0] * 8
        user, nice, system, _idle, _iowait, irq, softirq, steal = (f + [0] * 8)[:8]
        t = os.times()
        return {
            "wall": time.monotonic(),
            "busy": (user + nice + system + irq + softirq) / self.tick,
            "steal": steal / self.tick,
            "own": t.user + t.system + t.children_user + t.children_system,
        }

    def delta(self, a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
        wall = max(b["wall"] - a["wall"], 1e-9)
        foreign = max(0.0, (b["busy"] - a["busy"]) - (b["own"] - a["own"]))
        return {
            "seconds": round(wall, 1),
            "own_cores": round((b["own"] - a["own"]) / wall, 2),
            "foreign_cpu_s": round(foreign, 1),
            "foreign_cores": round(foreign / wall, 3),
            "steal_cores": round((b["steal"] - a["steal"]) / wall, 3),
        }


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def render_spec(spec_path: Path, traces: Path, calibration: str, repo: Path, spt: dict[str, float] | None) -> Path:
    """``spec_path`` with the engines on ``traces`` and, if given, per-model ``seconds_per_token``."""
    import yaml

    from pyramid_deploy.render import render

    spec = yaml.safe_load(spec_path.read_text(encoding="utf-8"))
    spec.pop("calibration", None)
    spec["engine"]["traces"] = str(traces.resolve())
    spec["engine"]["seconds_per_token"] = 0.0
    if spt:
        entries = [a if isinstance(a, dict) else {"name": a} for a in spec["agents"]]
        spec["agents"] = [{**a, "seconds_per_token": spt[a["name"]]} for a in entries]
        o = spec["oracle"] if isinstance(spec["oracle"], dict) else {"name": spec["oracle"]}
        spec["oracle"] = {**o, "seconds_per_token": spt[o["name"]]}
    out = repo.parent / f"{repo.name}.yaml"
    out.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return render(out, repo, calibration=calibration).out


FLOOR_MODEL = "pyramid_floor"


def add_floor(repo: Path, calibration: str | Path, traces: Path, default_max_tokens: int = DEFAULT_MAX_TOKENS) -> str:
    """Add the bare-BLS floor (``pyramid_bench.floor``) to a rendered repository whose engines replay
    ``traces``: its plan per question is the route ``calibration``'s router takes offline on them (a
    model without a record for a question counts as a failed call, as the replay engine answers).
    Returns the floor's model name."""
    from pyramid_deploy.render import PACKAGE_ROOT, TEMPLATES, _write_model
    from pyramid_moa.artifact import load_artifact
    from pyramid_moa.traces import TraceSet

    from .floor import PLAN_FILE, route_plans

    router = load_artifact(calibration).router()
    ts = TraceSet.open(traces)

    plans = route_plans(router, ((q.question, lambda m, i=i: ts.output(m, i)) for i, q in ts.questions.items()))
    dest = repo / FLOOR_MODEL
    values = {"model_name": FLOOR_MODEL, "python_path": str(PACKAGE_ROOT), "plan": PLAN_FILE}
    _write_model(TEMPLATES / "floor", dest, values | {"default_max_tokens": default_max_tokens}, "the floor")
    (dest / PLAN_FILE).write_text(json.dumps(plans), encoding="utf-8")
    return FLOOR_MODEL


def floor_deployment(spec: Path, traces: Path, calibration: str | Path, out: Path, seed: int = 0) -> Path:
    """What the quick router-vs-floor tools serve (``scripts/ab_floor.py``, ``scripts/cpu_per_request.py``):
    ``spec`` rendered under ``out/repository`` with zero-latency engines on ``traces`` and the floor beside
    the router, and ``out/inputs.json``: every question of ``traces``, shuffled by ``seed``. The repository."""
    from pyramid_moa.traces import TraceSet

    out.mkdir(parents=True, exist_ok=True)
    repo = render_spec(spec, traces, str(calibration), out / "repository", None)
    add_floor(repo, calibration, traces)
    questions = [q.question for q in TraceSet.open(traces).questions.values()]
    random.Random(seed).shuffle(questions)
    (out / "inputs.json").write_text(json.dumps(input_data(questions)), encoding="utf-8")
    return repo


def zero_latency_phase(
    grpc_url: str,
    pa_bin: Path,
    out: Path,
    targets: list[Target],
    sweep_spec: str,
    rounds_n: int,
    window_ms: int,
    headers: dict[str, str] | None = None,
) -> dict:
    """Warm-up, a ``sweep_spec`` sweep per target, then ``rounds_n`` interleaved rounds at concurrency
    1 and 16 (runs of three ``window_ms`` windows, the order of the targets rotated per round);
    ``targets`` must have the keys ``pyramid``, ``direct_stream`` and ``direct_unary``."""
    pa = PerfAnalyzer(pa_bin, grpc_url, out, out / "inputs.json", headers=dict(headers or {}))
    res: dict = {"load_before": loadavg()}
    for t in targets:  # warm every path (first calls import, allocate shm, ...)
        pa.count_run(f"warmup_{t.key}", t.model, 1, t.streaming, 100, 10.0)
    sweep = {}
    for t in targets:
        sweep[t.key] = pa.sweep(f"sweep_{t.key}", t.model, sweep_spec, t.streaming)
        print(f"perf: sweep {t.key}: " + ", ".join(f"c={r.concurrency} {r.throughput:.0f}/s" for r in sweep[t.key]))
    res["sweep"] = {k: [asdict(r) for r in v] for k, v in sweep.items()}
    res["load_after_sweep"] = loadavg()

    rounds: list[dict[str, dict[int, PaRow]]] = []
    for k in range(rounds_n):
        rnd: dict[str, dict[int, PaRow]] = {t.key: {} for t in targets}
        order = targets[k % len(targets) :] + targets[: k % len(targets)]
        for c in (1, 16):
            for t in order:
                rnd[t.key][c] = pa.window_run(f"round{k + 1}_c{c}_{t.key}", t.model, c, t.streaming, window_ms)
        rounds.append(rnd)
        print(
            f"perf: round {k + 1}: overhead {(rnd['pyramid'][1].p50_us - rnd['direct_stream'][1].p50_us) / 1000:.2f} ms,"
            f" ratio {rnd['pyramid'][16].throughput / rnd['direct_stream'][16].throughput:.1%}",
            flush=True,
        )
    res["rounds"] = [{t: {c: asdict(r) for c, r in v.items()} for t, v in rnd.items()} for rnd in rounds]
    res["vs_stream"] = round_metrics(rounds, "pyramid", "direct_stream")
    res["vs_unary"] = round_metrics(rounds, "pyramid", "direct_unary")
    if any(t.key == "floor" for t in targets):  # the router against the bare-BLS floor, and the floor's own cost
        res["vs_floor"] = round_metrics(rounds, "pyramid", "floor")
        res["floor_vs_stream"] = round_metrics(rounds, "floor", "direct_stream")
    res["load_after_rounds"] = loadavg()
    res["perf_analyzer_runs"] = pa.runs
    return res


def count_sweep(
    pa_bin: Path,
    grpc_url: str,
    out: Path,
    targets: list[Target],
    levels_spec: str,
    n: int,
    expected_s: float,
    headers: dict[str, str] | None = None,
) -> tuple[dict[str, list[dict]], list[dict]]:
    """``n`` requests per level of ``levels_spec`` per target (``PerfAnalyzer.count_run``: for long
    requests); (rows per target key, the perf_analyzer runs)."""
    pa = PerfAnalyzer(pa_bin, grpc_url, out, out / "inputs.json", headers=dict(headers or {}))
    sweep: dict[str, list[dict]] = {}
    for t in targets:
        rows = [
            pa.count_run(f"gpu_c{c}_{t.key}", t.model, c, t.streaming, n, expected_s)
            for c in concurrency_levels(levels_spec)
        ]
        sweep[t.key] = [asdict(r) for r in rows]
        print(f"perf: GPU-like sweep {t.key}: " + ", ".join(f"c={r.concurrency} {r.throughput:.2f}/s" for r in rows))
    return sweep, pa.runs


def admin_headers(server) -> dict[str, str]:
    """gRPC headers with ``server``'s admin key (a ``TritonServer``): perf_analyzer and genai-perf read the
    model's config, which is behind it (docs/SECURITY.md)."""
    return access.grpc_headers(server.admin_key) if server.admin_key is not None else {}


def genai_perf_setup(gdir: Path, questions: Sequence[str]) -> tuple[Path, Path, Path] | str:
    """(genai-perf, its local tokenizer, the questions written as its input file in ``gdir``), or why it
    cannot run (not installed)."""
    exe, tok = CACHE / "bin" / "genai-perf", CACHE / "tokenizer"
    if not exe.is_file() or not (tok / "tokenizer.json").is_file():
        return f"genai-perf is not installed in {CACHE}; {INSTALL_HINT}"
    gdir.mkdir(parents=True, exist_ok=True)
    inp = gdir / "gsm8k.jsonl"
    inp.write_text(genai_perf_input(questions), encoding="utf-8")
    return exe, tok, inp


def genai_phase(server, out: Path, questions: list[str], n: int) -> dict:
    """genai-perf against ``pyramid`` on ``server`` (a ``TritonServer``), non-streaming and streaming."""
    gdir = out / "genai_perf"
    setup = genai_perf_setup(gdir, questions)
    if isinstance(setup, str):
        return {"skipped": setup}
    exe, tok, inp = setup
    metrics_url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    res = {}
    for streaming in (False, True):
        key = "streaming" if streaming else "non_streaming"
        res[key] = run_genai_perf(
            exe, tok, server.grpc_url, metrics_url, inp, gdir, streaming, n, admin_headers(server)
        )
        print(f"perf: genai-perf {key}: {'ok' if res[key]['ok'] else 'FAILED, see ' + res[key]['log']}", flush=True)
    res["version"] = "0.0.16"
    return res


# ---------------------------------------------------------------------------------------------
# Report


def plot(summary: dict, targets: list[Target], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    panels = (
        ("zero-latency replay engines", summary["zero_latency"]["sweep"], {t.key: t.label for t in targets}),
        (
            f"GPU-like latency model (agents {summary['gpu']['spt_agent'] * 1000:.0f} ms/token, "
            f"oracle {summary['gpu']['spt_oracle'] * 1000:.0f} ms/token)",
            summary["gpu"].get("sweep", {}),
            {"pyramid": "pyramid (gRPC stream)", "direct_unary": "one engine direct (unary gRPC)"},
        ),
    )
    for ax, (title, sweep, labels) in zip(axes, panels):
        labels = {k: v.replace("`", "") for k, v in labels.items()}
        for key, rows in sweep.items():
            x = [r["throughput"] for r in rows]
            y = [r["p50_us"] / 1000 for r in rows]
            y99 = [r["p99_us"] / 1000 for r in rows]
            (line,) = ax.plot(x, y, marker="o", label=f"{labels.get(key, key)} p50")
            ax.plot(x, y99, linestyle=":", color=line.get_color(), alpha=0.7, label=f"{labels.get(key, key)} p99")
            for r, xi, yi in zip(rows, x, y):
                ax.annotate(f"c={r['concurrency']}", (xi, yi), fontsize=7, textcoords="offset points", xytext=(3, 3))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("throughput (requests/s)")
        ax.set_ylabel("latency (ms)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"perf_analyzer, GSM8K questions, {summary['machine']}, {summary['date']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(s: dict, targets: list[Target]) -> str:
    z, g = s["zero_latency"], s["gpu"]
    vs, vu = z["vs_stream"], z["vs_unary"]
    lines = [
        f"perf_analyzer load test ({s['machine']}, {s['date']}, `{s['command']}`)",
        "",
        f"- {s['perf_analyzer']}; genai-perf {s['genai_perf'].get('version', 'not run')}; tritonserver 2.51",
        f"- load average (1/5/15 min) at start {s['load_start']}"
        + ("" if s["quiet_at_start"] else " (**above --max-load: other jobs were running**)")
        + f"; after the sweeps {z['load_after_sweep']}; after the rounds {z['load_after_rounds']}",
        f"- inputs: {s['n_questions']} GSM8K questions (`inputs.json`), max_tokens {DEFAULT_MAX_TOKENS}; direct engine "
        f"`{s['direct_engine']}`; schedule {s['schedule']}; offline escalation share of these questions "
        f"{s['escalated_share']:.1%}",
        "- CPU during the run, in cores busy on average (of "
        f"{s['machine'].split(', ')[1]}): "
        + "; ".join(
            f"{phase} phase {c['seconds']:.0f} s: this run {c['own_cores']:.2f}, other processes "
            f"{c['foreign_cores']:.3f} ({c['foreign_cpu_s']:.1f} CPU-s), hypervisor steal {c['steal_cores']:.3f}"
            for phase, c in s["cpu"].items()
        ),
        f"- perf_analyzer runs: {s['pa_runs']}"
        + (f"; hung and rerun: {', '.join(s['pa_hung'])}" if s["pa_hung"] else ""),
        "",
        f"Concurrency sweep, zero-latency engines (`--concurrency-range {s['sweep_spec']}`, 1 s windows, stable "
        "within 20%; * = not stable there, measured on its own in 3 windows without the check):",
        "",
        "| target | c | req/s | p50 ms | p90 ms | p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for t in targets:
        for r in z["sweep"][t.key]:
            star = "*" if r["filled"] else ""
            lines.append(
                f"| {t.label} | {r['concurrency']}{star} | {r['throughput']:.1f} | {r['p50_us'] / 1000:.2f} | "
                f"{r['p90_us'] / 1000:.2f} | {r['p99_us'] / 1000:.2f} |"
            )
    lines += [
        "",
        f"Side by side, {len(z['rounds'])} interleaved rounds (each run: 3 time windows of "
        f"{s['round_window_ms']} ms, no stability check; the order of the targets rotated per round):",
        "",
        "| | vs direct engine, gRPC stream | vs direct engine, unary gRPC |",
        "|---|---|---|",
        f"| direct p50 at c=1 | {vs['direct_p50_ms']:.2f} ms | {vu['direct_p50_ms']:.2f} ms |",
        f"| pyramid p50 at c=1 | {vs['routed_p50_ms']:.2f} ms | {vu['routed_p50_ms']:.2f} ms |",
        f"| **router overhead p50** (median of rounds; range) | **{vs['overhead_ms']:.2f} ms** "
        f"({_span(vs['overhead_ms_rounds'], '{:.2f}')}) | {vu['overhead_ms']:.2f} ms ({_span(vu['overhead_ms_rounds'], '{:.2f}')}) |",
        f"| direct req/s at c=16 | {vs['direct_rps']:.0f} | {vu['direct_rps']:.0f} |",
        f"| pyramid req/s at c=16 | {vs['routed_rps']:.0f} | {vu['routed_rps']:.0f} |",
        f"| **routed / direct throughput** (median; range) | **{vs['ratio']:.1%}** ({_span(vs['ratio_rounds'], '{:.0%}')}) "
        f"| {vu['ratio']:.1%} ({_span(vu['ratio_rounds'], '{:.0%}')}) |",
        "",
    ]
    if "vs_floor" in z:
        vf, fs = z["vs_floor"], z["floor_vs_stream"]
        lines += [
            "The bare-BLS floor (`pyramid_bench.floor`: per question exactly the router's engine calls, no routing "
            "work, one output tensor), in the same rounds:",
            "",
            "| | p50 at c=1 | req/s at c=16 |",
            "|---|---|---|",
            f"| floor | {fs['routed_p50_ms']:.2f} ms (over the direct engine: {fs['overhead_ms']:.2f} ms, "
            f"{_span(fs['overhead_ms_rounds'], '{:.2f}')}) | {fs['routed_rps']:.0f} ({fs['ratio']:.1%} of direct) |",
            f"| pyramid | {vf['routed_p50_ms']:.2f} ms (**over the floor: {vf['overhead_ms']:.2f} ms**, "
            f"{_span(vf['overhead_ms_rounds'], '{:.2f}')}) | {vf['routed_rps']:.0f} (**{vf['ratio']:.1%} of the "
            f"floor**, {_span(vf['ratio_rounds'], '{:.0%}')}) |",
            "",
        ]
    acc, esc = g["accepted"], g["escalated"]
    lines += [
        f"GPU-like latency model (agents {g['spt_agent'] * 1000:.0f} ms/token, oracle {g['spt_oracle'] * 1000:.0f} "
        "ms/token, recorded output tokens), sequential requests through `PyramidClient` (load before "
        f"{g['load_before']}); expected = sum over the committee stages run of the slowest newly asked agent, "
        "plus the oracle if escalated:",
        "",
        "| requests | n | within 5% | median expected | excess median | excess p95 | excess max | extra ms median / max |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, st in (("not escalated", acc), ("escalated", esc)):
        if st.get("n"):
            lines.append(
                f"| {name} | {st['n']} | {st['within']}/{st['n']} | {st['expected_s_median']:.2f} s | "
                f"{st['excess_median']:+.2%} | {st['excess_p95']:+.2%} | {st['excess_max']:+.2%} | "
                f"{st['extra_ms_median']:.1f} / {st['extra_ms_max']:.1f} |"
            )
    if g.get("calls_mismatch"):
        lines.append(f"\nRoutes that differ from the offline router: {g['calls_mismatch']}")
    if g.get("sweep"):
        lines += [
            "",
            "perf_analyzer at this latency (`--request-count` per level; req/s from the profile export's timestamps):",
            "",
        ]
        lines += ["| target | c | req/s | p50 ms | p99 ms |", "|---|---|---|---|---|"]
        for key, rows in g["sweep"].items():
            for r in rows:
                lines.append(
                    f"| {key} | {r['concurrency']} | {r['throughput']:.2f} | {r['p50_us'] / 1000:.0f} | {r['p99_us'] / 1000:.0f} |"
                )
    gp = s["genai_perf"]
    lines += ["", "genai-perf against `pyramid` (`--backend tensorrtllm --endpoint-type kserve`, concurrency 1):", ""]
    if "skipped" in gp:
        lines.append(f"- skipped: {gp['skipped']}")
    else:
        for key in ("non_streaming", "streaming"):
            r = gp[key]
            if not r["ok"]:
                lines.append(f"- {key}: FAILED (rc {r['rc']}, log {r['log']})")
                continue
            m = r["metrics"]
            lat = m.get("request_latency", {})
            ttft = m.get("time_to_first_token", {})
            thr = m.get("request_throughput", {})
            extra = f", time to first response p50 {ttft['p50']:.2f} ms" if ttft and key == "streaming" else ""
            lines.append(
                f"- {key}: request latency p50 {lat.get('p50', float('nan')):.2f} ms, p99 "
                f"{lat.get('p99', float('nan')):.2f} ms{extra}, {thr.get('avg', float('nan')):.1f} req/s"
            )
    lines += ["", "Targets:", "", "| target | measured | verdict |", "|---|---|---|"]
    for row in s["targets"]:
        lines.append(f"| {row['target']} | {row['measured']} | {row['verdict']} |")
    return "\n".join(lines) + "\n"


def _span(xs: Sequence[float], fmt: str) -> str:
    return f"{fmt.format(min(xs))}-{fmt.format(max(xs))}"


def targets_table(s: dict) -> list[dict]:
    vs = s["zero_latency"]["vs_stream"]
    g = s["gpu"]
    rows = [
        {
            "target": "router overhead p50 <= 1 ms at c=1 (vs direct engine, same gRPC stream transport)",
            "measured": f"{vs['overhead_ms']:.2f} ms",
            "verdict": verdict(vs["overhead_ms"], TARGET_OVERHEAD_MS, False, " ms"),
        },
        {
            "target": "routed throughput >= 30% of direct single-engine at c=16",
            "measured": f"{vs['ratio']:.1%}",
            "verdict": verdict(vs["ratio"], TARGET_RATIO, True, "%"),
        },
    ]
    vf = s["zero_latency"].get("vs_floor")
    if vf is not None:
        rows += [
            {
                "target": f"router overhead p50 <= floor + {TARGET_FLOOR_EXCESS_MS:g} ms at c=1",
                "measured": f"floor + {vf['overhead_ms']:.2f} ms",
                "verdict": verdict(vf["overhead_ms"], TARGET_FLOOR_EXCESS_MS, False, " ms"),
            },
            {
                "target": f"routed throughput >= {TARGET_FLOOR_RATIO:.0%} of the floor's at c=16",
                "measured": f"{vf['ratio']:.1%}",
                "verdict": verdict(vf["ratio"], TARGET_FLOOR_RATIO, True, "%"),
            },
        ]
    for key, what in (
        ("accepted", "non-escalated: within 5% of slowest agent(s)"),
        ("escalated", "escalated: within 5% of slowest agent(s) + oracle"),
    ):
        st = g[key]
        if not st.get("n"):
            continue
        rows.append(
            {
                "target": f"GPU-like model, {what}",
                "measured": f"{st['within']}/{st['n']} within; worst {st['excess_max']:+.2%}",
                "verdict": verdict(st["excess_max"], TARGET_GPU_TOLERANCE, False, "%"),
            }
        )
    return rows
