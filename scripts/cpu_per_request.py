"""CPU per routed request, per process and per router thread (docs/CAPACITY.md).

Serves the ``make perf`` deployment (``deploy/replay.yaml``, zero-latency replay engines, the committed
calibration) with the bare-BLS floor beside the router, runs perf_analyzer at one concurrency for a fixed
number of requests against ``pyramid`` and the floor in turn, and reads each process's CPU time, and for
the two BLS models each thread's, from ``/proc`` before and after every run. Prints a table and writes
``cpu.json`` under ``--out``.

Usage: python scripts/cpu_per_request.py [--requests 4000] [--concurrency 16] [--rounds 2] [--out out/cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from pyramid_bench.perf import (
    FLOOR_MODEL,
    INSTALL_HINT,
    PerfAnalyzer,
    admin_headers,
    find_perf_analyzer,
    floor_deployment,
)

ROOT = Path(__file__).resolve().parents[1]

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(stat: str) -> float:
    """utime + stime of a ``/proc/.../stat`` line, in seconds."""
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def processes(server_pid: int) -> dict[int, str]:
    """``{pid: role}`` of tritonserver and its stub processes (role: "tritonserver" or the model's name)."""
    out = {server_pid: "tritonserver"}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            argv = (p / "cmdline").read_bytes().split(b"\0")
            status = (p / "status").read_text()
        except OSError:
            continue
        ppid = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("PPid:")), 0)
        if ppid == server_pid and argv and argv[0].endswith(b"triton_python_backend_stub") and len(argv) > 1:
            out[int(p.name)] = Path(argv[1].decode()).parents[1].name  # .../<model>/1/model.py
    return out


def snapshot(pids: dict[int, str]) -> dict[str, dict[str, float]]:
    """``{role: {"process": s, "<tid>": s, ...}}``: CPU seconds so far."""
    snap: dict[str, dict[str, float]] = {}
    for pid, role in pids.items():
        entry: dict[str, float] = {}
        try:
            entry["process"] = cpu_seconds(Path(f"/proc/{pid}/stat").read_text())
            for t in Path(f"/proc/{pid}/task").iterdir():
                entry[t.name] = cpu_seconds((t / "stat").read_text())
        except OSError:
            continue
        snap[role] = entry
    return snap


def per_request(a: dict, b: dict, n: int, role: str, main_tid: str) -> dict:
    """ms of CPU per request for ``role``'s process, its main thread, and its other threads, busiest first."""
    before, after = a.get(role, {}), b.get(role, {})
    threads = {t: after[t] - before.get(t, 0.0) for t in after if t != "process"}
    others = sorted((v for t, v in threads.items() if t != main_tid), reverse=True)
    ms = 1000.0 / n
    return {
        "process_ms": round((after.get("process", 0.0) - before.get("process", 0.0)) * ms, 3),
        "main_thread_ms": round(threads.get(main_tid, 0.0) * ms, 3),
        "other_threads_ms": [round(v * ms, 3) for v in others if v * ms >= 0.005],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--calibration", default=str(ROOT / "deploy" / "replay.calibration.json"))
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "cpu")
    a = ap.parse_args(argv)
    pa_bin = find_perf_analyzer()
    if pa_bin is None:
        print(f"error: perf_analyzer not found; {INSTALL_HINT}", file=sys.stderr)
        return 2
    from pyramid_ops.server import TritonServer

    repo = floor_deployment(ROOT / "deploy" / "replay.yaml", ROOT / "data" / "gsm8k", a.calibration, a.out)
    rows = []
    with TritonServer(repo, log_path=a.out / "tritonserver.log") as server:
        assert server.proc is not None
        pa = PerfAnalyzer(pa_bin, server.grpc_url, a.out, a.out / "inputs.json", headers=admin_headers(server))
        pids = processes(server.proc.pid)
        main_tids = {role: str(pid) for pid, role in pids.items()}
        for target in ("pyramid", FLOOR_MODEL):
            pa.count_run(f"warmup_{target}", target, 1, True, 100, 10.0)
        for k in range(a.rounds):
            for target in ("pyramid", FLOOR_MODEL):
                before = snapshot(pids)
                row = pa.count_run(f"round{k + 1}_{target}", target, a.concurrency, True, a.requests, 20.0)
                after = snapshot(pids)
                roles = {role: per_request(before, after, a.requests, role, main_tids[role]) for role in after}
                engines = sum(
                    v["process_ms"] for r, v in roles.items() if r not in ("tritonserver", "pyramid", FLOOR_MODEL)
                )
                rows.append(
                    {
                        "round": k + 1,
                        "target": target,
                        "req_per_s": round(row.throughput, 1),
                        "bls_model": roles[target],
                        "tritonserver_ms": roles["tritonserver"]["process_ms"],
                        "engines_ms": round(engines, 3),
                    }
                )
                b = roles[target]
                print(
                    f"round {k + 1} {target}: {row.throughput:.0f} req/s; per request: {target} stub "
                    f"{b['process_ms']:.3f} ms (threads {b['other_threads_ms'][:3]}..., main {b['main_thread_ms']:.3f}), "
                    f"tritonserver {roles['tritonserver']['process_ms']:.3f} ms, engines {engines:.3f} ms",
                    flush=True,
                )
    (a.out / "cpu.json").write_text(
        json.dumps({"concurrency": a.concurrency, "requests": a.requests, "rows": rows}, indent=2), encoding="utf-8"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
