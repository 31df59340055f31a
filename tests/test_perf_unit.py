"""Unit tests of pyramid_bench.perf (the load-test library of scripts/perf.py, make perf) without a
server: concurrency ranges, --input-data, perf_analyzer CSV parsing and the row check, the sweep's
fill-in of left-out levels (with a fake perf_analyzer), the critical-path latency model and the
summary arithmetic."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pyramid_bench import perf

# The header perf_analyzer 2.60 writes with -f for a decoupled model over --streaming (a
# non-decoupled model's CSV has no "Response Throughput" column).
HEADER = (
    "Concurrency,Inferences/Second,Response Throughput,Client Send,Network+Server Send/Recv,Server Queue,"
    "Server Compute Input,Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,"
    "p95 latency,p99 latency"
)
ROW = "{c},{thr},{thr},0,65411,382,61,575,17,0,{p50},{p90},118388,{p99}"


def _csv(tmp_path: Path, levels: list[int], name: str = "run.csv", header: str = HEADER, tail: str = "") -> Path:
    lines = [header] + [ROW.format(c=c, thr=100.0 * c, p50=1000 * c, p90=2000 * c, p99=4000 * c) for c in levels]
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n" + tail, encoding="utf-8")
    return path


# --- concurrency ranges ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec,levels",
    [("1:16:3", [1, 4, 7, 10, 13, 16]), ("1:16:15", [1, 16]), ("4", [4]), ("1:4", [1, 2, 3, 4]), ("2:2:5", [2])],
)
def test_concurrency_levels_match_perf_analyzer(spec, levels):
    assert perf.concurrency_levels(spec) == levels


@pytest.mark.parametrize("spec", ["", "0", "4:1", "1:4:0", "1:x", "1:2:3:4", "-1:4", "1.5"])
def test_concurrency_levels_rejects_bad_ranges(spec):
    with pytest.raises(ValueError):
        perf.concurrency_levels(spec)


# --- input data -----------------------------------------------------------------------------


def test_input_data_has_one_step_per_question_with_both_inputs():
    qs = ["Janet’s ducks lay 16 eggs per day.", 'A "quoted" question\nwith a newline?']
    data = perf.input_data(qs, max_tokens=256)
    assert [step["text_input"] for step in data["data"]] == [[q] for q in qs]  # BYTES, shape [1]
    assert all(step["max_tokens"] == [256] and isinstance(step["max_tokens"][0], int) for step in data["data"])
    assert set(data["data"][0]) == {"text_input", "max_tokens"}
    assert json.loads(json.dumps(data)) == data  # what perf_analyzer reads back, unicode included


def test_input_data_refuses_no_questions():
    with pytest.raises(ValueError):
        perf.input_data([])


def test_genai_perf_input_is_jsonl_of_text():
    text = perf.genai_perf_input(["q1", "q 2 ’"])
    assert [json.loads(line) for line in text.splitlines()] == [{"text": "q1"}, {"text": "q 2 ’"}]


# --- CSV rows -------------------------------------------------------------------------------


def test_check_csv_returns_rows_in_level_order(tmp_path):
    path = _csv(tmp_path, [16, 1, 4])
    rows = perf.check_csv(path, [1, 4, 16])
    assert [r.concurrency for r in rows] == [1, 4, 16]
    assert rows[0] == perf.PaRow(1, 100.0, 1000.0, 2000.0, 118388.0, 4000.0)


def test_partial_csv_names_the_missing_levels(tmp_path):
    # perf_analyzer exits 0 with this when concurrency 4 never stabilises.
    path = _csv(tmp_path, [1])
    with pytest.raises(perf.IncompleteCsv) as e:
        perf.check_csv(path, [1, 4, 7])
    assert e.value.missing == [4, 7]
    assert "no row for concurrency 4, 7" in str(e.value)


def test_header_only_and_missing_csv_have_no_rows(tmp_path):
    assert perf.read_pa_csv(_csv(tmp_path, [])) == []
    assert perf.read_pa_csv(tmp_path / "absent.csv") == []
    with pytest.raises(perf.IncompleteCsv) as e:
        perf.check_csv(tmp_path / "absent.csv", [1])
    assert e.value.missing == [1]


def test_csv_without_response_throughput_and_with_a_metrics_section(tmp_path):
    header = HEADER.replace("Response Throughput,", "")
    lines = [header, "1,1948.55,3,182,15,24,263,72,2,453,682,747,874"]
    tail = "\nServer Metrics\nModel,GPU UUID\n"
    path = tmp_path / "unary.csv"
    path.write_text("\n".join(lines) + "\n" + tail, encoding="utf-8")
    (row,) = perf.check_csv(path, [1])
    assert (row.throughput, row.p50_us, row.p99_us) == (1948.55, 453.0, 874.0)


def test_a_csv_of_something_else_is_an_error(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(perf.PerfError):
        perf.read_pa_csv(path)


# --- the sweep, with a fake perf_analyzer -----------------------------------------------------

FAKE_PA = """#!{python}
# Fake perf_analyzer: writes a CSV row per level of --concurrency-range, except those listed in
# $FAKE_PA_DROP (comma-separated) when the run covers several levels (or always, with
# $FAKE_PA_DROP_ALWAYS); exits 0 like the real one.
import os, sys
args = sys.argv[1:]
if "--version" in args:
    sys.exit(print("Perf Analyzer Version 0.0.0 (fake)", file=sys.stderr))
val = lambda k: args[args.index(k) + 1] if k in args else None
parts = [int(p) for p in val("--concurrency-range").split(":")]
start, end, step = parts[0], (parts[1] if len(parts) > 1 else parts[0]), (parts[2] if len(parts) > 2 else 1)
levels = list(range(start, end + 1, step))
drop = {{int(x) for x in os.environ.get("FAKE_PA_DROP", "").split(",") if x}}
if len(levels) > 1 and os.environ.get("FAKE_PA_UNSTABLE_FIRST"):  # not even the first level: no CSV
    sys.exit(print("Failed to obtain stable measurement.") or 2)
if len(levels) > 1 or os.environ.get("FAKE_PA_DROP_ALWAYS"):
    levels = [c for c in levels if c not in drop]
with open(os.environ["FAKE_PA_LOG"], "a") as log:
    log.write(" ".join(args) + "\\n")
rows = [{header!r}] + [{row!r}.format(c=c, thr=10.0 * c, p50=100 * c, p90=200 * c, p99=400 * c) for c in levels]
open(val("-f"), "w").write("\\n".join(rows) + "\\n")
print("ok")
"""


@pytest.fixture
def fake_pa(tmp_path, monkeypatch):
    exe = tmp_path / "perf_analyzer"
    exe.write_text(FAKE_PA.format(python=sys.executable, header=HEADER, row=ROW), encoding="utf-8")
    exe.chmod(0o755)
    monkeypatch.setenv("FAKE_PA_LOG", str(tmp_path / "calls.log"))
    return exe


def test_sweep_fills_levels_left_out_of_a_partial_csv(tmp_path, fake_pa, monkeypatch):
    monkeypatch.setenv("FAKE_PA_DROP", "7,16")
    pa = perf.PerfAnalyzer(fake_pa, "127.0.0.1:1", tmp_path / "out", tmp_path / "inputs.json")
    rows = pa.sweep("sweep_pyramid", "pyramid", "1:16:3", streaming=True)
    assert [r.concurrency for r in rows] == [1, 4, 7, 10, 13, 16]
    assert [r.concurrency for r in rows if r.filled] == [7, 16]
    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert len(calls) == 3
    assert "--streaming" in calls[0] and "--stability-percentage 20" in calls[0] and "--request-count" not in calls[0]
    # fill-ins: one level each, exactly three 1 s windows without the stability check
    for call, c in zip(calls[1:], (7, 16)):
        assert f"--concurrency-range {c} " in call
        assert "--measurement-interval 1000 --stability-percentage 999 --max-trials 3" in call
    assert "measured by separate runs" in (tmp_path / "out" / "csv" / "sweep_pyramid.csv").read_text()


def test_sweep_whose_first_level_never_stabilised_fills_every_level(tmp_path, fake_pa, monkeypatch):
    monkeypatch.setenv("FAKE_PA_UNSTABLE_FIRST", "1")  # perf_analyzer exits 2 and writes no CSV
    pa = perf.PerfAnalyzer(fake_pa, "127.0.0.1:1", tmp_path / "out", tmp_path / "inputs.json")
    rows = pa.sweep("s", "m", "1:3", streaming=False)
    assert [(r.concurrency, r.filled) for r in rows] == [(1, True), (2, True), (3, True)]
    with pytest.raises(perf.PerfError, match="exited 2 without a CSV"):  # outside a sweep it is an error
        pa.run("t", "m", "1:3", False)


def test_sweep_fails_when_a_level_is_still_missing(tmp_path, fake_pa, monkeypatch):
    monkeypatch.setenv("FAKE_PA_DROP", "2")
    pa = perf.PerfAnalyzer(fake_pa, "127.0.0.1:1", tmp_path / "out", tmp_path / "inputs.json")
    monkeypatch.setenv("FAKE_PA_DROP_ALWAYS", "1")  # the fill-in run yields no row either
    with pytest.raises(perf.IncompleteCsv) as e:
        pa.sweep("s", "m", "1:2", streaming=False)
    assert e.value.missing == [2]


def test_a_failed_run_without_csv_is_an_error(tmp_path):
    exe = tmp_path / "perf_analyzer"
    exe.write_text("#!/bin/sh\necho 'Thread [0] had error: Stub process is not healthy.' >&2\nexit 99\n")
    exe.chmod(0o755)
    pa = perf.PerfAnalyzer(exe, "127.0.0.1:1", tmp_path / "out", tmp_path / "inputs.json")
    with pytest.raises(perf.PerfError, match="(?s)exited 99 without a CSV.*not healthy"):
        pa.count_run("r", "m", 1, True, 10)
    assert (tmp_path / "out" / "logs" / "r.log").is_file()


def test_find_perf_analyzer_skips_the_placeholder(tmp_path, fake_pa, monkeypatch):
    placeholder = tmp_path / "placeholder"
    placeholder.write_text("#!/bin/sh\necho 'perf_analyzer placeholder'\n")
    placeholder.chmod(0o755)
    monkeypatch.setattr(perf, "CACHE", tmp_path / "nowhere")
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setenv("PERF_ANALYZER", str(placeholder))
    assert perf.find_perf_analyzer() is None
    monkeypatch.setenv("PERF_ANALYZER", str(fake_pa))
    assert perf.find_perf_analyzer() == fake_pa


def _export(path: Path, requests: list[tuple[int, list[int]]]) -> Path:
    reqs = [
        {"timestamp": t, "request_inputs": {}, "response_timestamps": rs, "response_outputs": []} for t, rs in requests
    ]
    data = {"experiments": [{"experiment": {"mode": "concurrency", "value": 1}, "requests": reqs,
                             "window_boundaries": [0, 10**9]}], "version": "2.60", "service_kind": "triton"}  # fmt: skip
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_export_throughput_uses_first_send_to_last_response(tmp_path):
    ms = 1_000_000
    # 4 answered requests between 0 and 800 ms (one streamed two responses); one never answered
    path = _export(tmp_path / "e.json", [(0, [100 * ms]), (90 * ms, [300 * ms, 800 * ms]), (300 * ms, [500 * ms]),
                                         (500 * ms, [700 * ms]), (600 * ms, [])])  # fmt: skip
    n, rate = perf.export_throughput(path)
    assert n == 4 and rate == pytest.approx(4 / 0.8)
    with pytest.raises(perf.PerfError):
        perf.export_throughput(_export(tmp_path / "none.json", [(0, [])]))


EXPORTING_PA = """#!{python}
# Fake perf_analyzer: a CSV row with a quantised throughput, and a profile export with exact times.
import sys
args = sys.argv[1:]
val = lambda k: args[args.index(k) + 1]
open(val("-f"), "w").write({header!r} + "\\n" + {row!r} + "\\n")
open(val("--profile-export-file"), "w").write({export!r})
"""


def test_count_run_replaces_the_quantised_throughput(tmp_path):
    ms = 1_000_000
    reqs = [{"timestamp": 0, "response_timestamps": [430 * ms]}, {"timestamp": 1, "response_timestamps": [860 * ms]}]
    row = ROW.format(c=1, thr=2.0, p50=430000, p90=0, p99=0)  # 2 requests in a window rounded up to 1 s
    exe = tmp_path / "perf_analyzer"
    exe.write_text(
        EXPORTING_PA.format(
            python=sys.executable, header=HEADER, row=row, export=json.dumps({"experiments": [{"requests": reqs}]})
        )
    )
    exe.chmod(0o755)
    pa = perf.PerfAnalyzer(exe, "127.0.0.1:1", tmp_path / "out", tmp_path / "inputs.json")
    got = pa.count_run("gpu", "pyramid", 1, True, 2)
    assert got.throughput == pytest.approx(2 / 0.86) and got.throughput_pa == 2.0
    assert (got.concurrency, got.p50_us) == (1, 430000.0)
    with pytest.raises(perf.PerfError, match="2 answered requests .* asked for 1"):
        pa.count_run("gpu2", "pyramid", 1, True, 1)


# --- latency model and summary arithmetic ---------------------------------------------------

STAGES = [["A", "B"], ["C"]]  # stage 1 asks A and B at once, stage 2 the third agent
TOKENS = {"A": 100, "B": 60, "C": 200, "O": 80}
SPT = {"A": 0.01, "B": 0.01, "C": 0.01, "O": 0.03}


@pytest.mark.parametrize(
    "calls,expected",
    [
        (["A", "B"], (1.0, 0.0)),  # accepted after stage 1: the slower of A and B
        (["A", "B", "C"], (3.0, 0.0)),  # accepted after stage 2: stage 1, then C
        (["A", "B", "O"], (1.0, 2.4)),  # escalated straight after stage 1
        (["A", "B", "C", "O"], (3.0, 2.4)),  # escalated after stage 2
        (["O"], (0.0, 2.4)),  # force_tier=oracle
        (["C"], (0.0, 0.0)),  # stage 1 never ran, so stage 2 cannot have either
    ],
)
def test_critical_path(calls, expected):
    got = perf.critical_path_s(STAGES, calls, "O", TOKENS, SPT)
    assert got == pytest.approx(expected)


def test_critical_path_uses_each_models_own_speed_and_missing_tokens_as_zero():
    spt = {**SPT, "B": 0.05}  # B is now the slower agent: 60 x 0.05 = 3 s
    assert perf.critical_path_s(STAGES, ["A", "B"], "O", TOKENS, spt) == pytest.approx((3.0, 0.0))
    assert perf.critical_path_s(STAGES, ["A", "B"], "O", {"A": 10}, SPT) == pytest.approx((0.1, 0.0))


def test_tolerance_stats():
    expected = [1.0, 2.0, 4.0, 1.0]
    measured = [1.01, 2.04, 4.4, 0.99]  # +1%, +2%, +10%, -1%
    st = perf.tolerance_stats(measured, expected)
    assert st["n"] == 4 and st["within"] == 3
    assert st["excess_max"] == pytest.approx(0.10)
    assert st["excess_min"] == pytest.approx(-0.01)
    assert st["excess_median"] == pytest.approx(0.015)
    assert st["extra_ms_max"] == pytest.approx(400.0)
    assert st["expected_s_median"] == pytest.approx(1.5)
    assert perf.tolerance_stats([], []) == {"n": 0}
    with pytest.raises(ValueError):
        perf.tolerance_stats([1.0], [])


@pytest.mark.parametrize("q", [0, 5, 50, 90, 95, 99, 100])
def test_percentile_matches_numpy(q):
    xs = [3.0, 1.0, 4.0, 1.5, 9.0, 2.6, 5.3]
    assert perf.percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))


def _row(c: int, thr: float, p50_ms: float):
    return perf.PaRow(c, thr, p50_ms * 1000, 0.0, 0.0, 0.0)


def test_round_metrics_take_ratios_within_rounds_then_the_median():
    rounds = [
        {"pyramid": {1: _row(1, 200, 4.0), 16: _row(16, 300, 50)}, "direct": {1: _row(1, 2000, 0.5), 16: _row(16, 1000, 5)}},
        {"pyramid": {1: _row(1, 200, 3.0), 16: _row(16, 150, 50)}, "direct": {1: _row(1, 2000, 0.4), 16: _row(16, 600, 5)}},
        {"pyramid": {1: _row(1, 200, 9.0), 16: _row(16, 100, 50)}, "direct": {1: _row(1, 2000, 0.5), 16: _row(16, 500, 5)}},
    ]  # fmt: skip
    m = perf.round_metrics(rounds, "pyramid", "direct")
    assert m["overhead_ms_rounds"] == pytest.approx([3.5, 2.6, 8.5])
    assert m["overhead_ms"] == pytest.approx(3.5)
    assert m["ratio_rounds"] == pytest.approx([0.3, 0.25, 0.2])
    assert m["ratio"] == pytest.approx(0.25)
    # not the ratio of medians (150 / 600 happens to agree here; the overhead does not):
    assert m["routed_p50_ms"] - m["direct_p50_ms"] == pytest.approx(3.5)
    assert m["direct_rps"] == statistics.median([1000, 600, 500])


def test_verdicts():
    assert perf.verdict(0.8, 1.0, higher_is_better=False, unit=" ms") == "met"
    assert perf.verdict(3.47, 1.0, higher_is_better=False, unit=" ms") == "missed by 2.47 ms"
    assert perf.verdict(0.109, 0.30, higher_is_better=True, unit="%") == "missed by 19.1 points"
    assert perf.verdict(0.31, 0.30, higher_is_better=True, unit="%") == "met"


def test_targets_table_and_markdown_from_a_summary(tmp_path):
    sweep_row = {"concurrency": 1, "throughput": 200.0, "p50_us": 4000.0, "p90_us": 7000.0, "p95_us": 0.0,
                 "p99_us": 9000.0, "filled": False}  # fmt: skip
    metrics = {
        "overhead_ms": 3.4, "overhead_ms_rounds": [3.0, 3.4, 5.0], "ratio": 0.12, "ratio_rounds": [0.1, 0.12, 0.2],
        "routed_p50_ms": 3.8, "direct_p50_ms": 0.4, "routed_rps": 150.0, "direct_rps": 1250.0,
    }  # fmt: skip
    acc = perf.tolerance_stats([1.01, 2.02], [1.0, 2.0])
    esc = perf.tolerance_stats([4.1, 3.0], [4.0, 2.8])  # second one +7.1%
    s = {
        "machine": "x86_64, 2 cores", "date": "2026-11-28", "command": "make perf", "perf_analyzer": "pa",
        "load_start": [0.3, 0.5, 0.6], "quiet_at_start": True, "n_questions": 2, "direct_engine": "A",
        "schedule": "A+B -> A+B+C -> O", "escalated_share": 0.25, "pa_runs": 3, "pa_hung": ["r1"], "sweep_spec": "1", "round_window_ms": 1000,
        "zero_latency": {"sweep": {"pyramid": [sweep_row]}, "rounds": [{}, {}, {}], "vs_stream": metrics,
                         "vs_unary": metrics, "load_after_sweep": [1, 1, 1], "load_after_rounds": [1, 1, 1]},
        "gpu": {"accepted": acc, "escalated": esc, "spt_agent": 0.01, "spt_oracle": 0.03, "load_before": [0, 0, 0],
                "sweep": {"pyramid": [sweep_row]}},
        "genai_perf": {"skipped": "--no-genai-perf"},
        "cpu": {"zero_latency": {"seconds": 300.0, "own_cores": 1.9, "foreign_cpu_s": 3.0, "foreign_cores": 0.01,
                                 "steal_cores": 0.0}},
    }  # fmt: skip
    s["targets"] = perf.targets_table(s)
    verdicts = [row["verdict"] for row in s["targets"]]
    assert verdicts[0] == "missed by 2.40 ms"
    assert verdicts[1] == "missed by 18.0 points"
    assert verdicts[2] == "met"
    assert verdicts[3] == "missed by 2.1 points"
    md = perf.markdown(s, [perf.Target("pyramid", "pyramid", True, "`pyramid`")])
    assert "other processes 0.010 (3.0 CPU-s)" in md
    assert "**3.40 ms**" in md and "**12.0%**" in md and "| escalated | 2 | 1/2 |" in md
    assert not any(isinstance(v, float) and math.isnan(v) for v in acc.values())


HANGING_PA = """#!/bin/sh
# Hangs (like perf_analyzer waiting for a response that never comes) unless $1 marker exists.
marker={marker}
if [ ! -e "$marker" ] || [ "{always}" = 1 ]; then touch "$marker"; exec sleep 30; fi
for a in "$@"; do case "$prev" in -f) out=$a ;; esac; prev=$a; done
printf '%s\\n%s\\n' '{header}' '{row}' > "$out"
"""


@pytest.mark.parametrize("always", [0, 1])
def test_a_hung_run_is_killed_and_rerun_once(tmp_path, always):
    exe = tmp_path / "perf_analyzer"
    row = ROW.format(c=1, thr=5.0, p50=100, p90=200, p99=400)
    exe.write_text(HANGING_PA.format(marker=tmp_path / "m", always=always, header=HEADER, row=row))
    exe.chmod(0o755)
    pa = perf.PerfAnalyzer(exe, "127.0.0.1:1", tmp_path / "out", tmp_path / "inputs.json")
    if always:
        with pytest.raises(perf.PerfError, match="hung 2 times"):
            pa.run("r", "m", "1", True, timeout_s=0.5, request_count=10)
        assert [r.get("hung") for r in pa.runs] == [True, True]
        return
    (got,) = perf.check_csv(pa.run("r", "m", "1", True, timeout_s=0.5, request_count=10), [1])
    assert got.throughput == 5.0
    assert [r.get("hung", False) for r in pa.runs] == [True, False]
    assert "KILLED" not in (tmp_path / "out" / "logs" / "r.log").read_text()  # the log of the run that counted


def test_cpu_meter_counts_other_processes_and_not_its_own_children():
    meter = perf.CpuMeter()
    a = {"wall": 0.0, "busy": 100.0, "steal": 5.0, "own": 10.0}
    b = {"wall": 10.0, "busy": 118.0, "steal": 6.0, "own": 25.0}  # 18 CPU-s busy, 15 of them ours
    d = meter.delta(a, b)
    assert d == {"seconds": 10.0, "own_cores": 1.5, "foreign_cpu_s": 3.0, "foreign_cores": 0.3, "steal_cores": 0.1}
    # a reaped child's CPU time is ours (os.times' children_*), as for perf_analyzer runs and servers
    s0 = meter.snapshot()
    subprocess.run([sys.executable, "-c", "sum(i * i for i in range(3_000_000))"], check=True)
    s1 = meter.snapshot()
    assert s1["own"] - s0["own"] > 0.05
    assert meter.delta(s0, s1)["own_cores"] > 0


def test_the_ab_script_overrides_router_parameters_and_instances_only_where_named():
    """scripts/ab_floor.py: a parameter it is told to set changes in the rendered config and nowhere else;
    an unknown one is an error naming it."""
    from pyramid_bench.ab_floor import set_instances, set_param

    cfg = (Path(__file__).resolve().parents[1] / "model_repository" / "pyramid" / "config.pbtxt").read_text()
    out = set_param(cfg, "metrics", "false")
    assert 'key: "metrics" value: { string_value: "false" }' in out
    assert [a for a, b in zip(cfg.splitlines(), out.splitlines()) if a != b] == [
        'parameters { key: "metrics" value: { string_value: "true" } }'
    ]
    assert "instance_group [ { count: 3 kind: KIND_CPU } ]" in set_instances(cfg, 3)
    with pytest.raises(KeyError, match="no_such_parameter"):
        set_param(cfg, "no_such_parameter", "1")
