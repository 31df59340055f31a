"""Soak: many concurrent clients against a real tritonserver for a bounded time; nothing lost.

Each of ``--clients`` asyncio clients sends GSM8K questions back to back for ``--seconds``, each
with its own request id. Every answer is checked against the offline router's decision on the same
question (the replay profile serves recorded outputs, so the expected answer is known): a response
for another request, a wrong decision, an error or a request without an answer is counted. The
router process's RSS is sampled once a second (its stub is found as a child of the server's own
PID). Stops by itself; loopback only.

Usage: python scripts/soak.py [--clients 64] [--seconds 120] [--out out/soak]
Writes summary.json and summary.md (and prints the markdown); exits 1 if anything was lost,
mismatched or failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class SoakResult:
    clients: int
    seconds: float
    sent: int = 0
    answered: int = 0
    mismatched: int = 0  # a response for another request id, or another decision than offline
    errors: dict[str, int] = field(default_factory=dict)
    unanswered: int = 0
    rss_mb: list[float] = field(default_factory=list)  # router process, once a second
    p50_ms: float = 0.0
    p99_ms: float = 0.0

    @property
    def ok(self) -> bool:
        return self.sent == self.answered and not self.mismatched and not self.errors and not self.unanswered

    def summary(self) -> dict:
        d = asdict(self)
        rss = self.rss_mb
        d.update(
            ok=self.ok,
            throughput_rps=self.answered / self.seconds if self.seconds else 0.0,
            rss_start_mb=rss[0] if rss else None,
            rss_end_mb=rss[-1] if rss else None,
            rss_max_mb=max(rss) if rss else None,
            rss_growth_mb=(rss[-1] - rss[0]) if rss else None,
        )
        return d


def router_rss_mb(server_pid: int, model: str = "pyramid") -> float | None:
    from pyramid_ops.supervisor import stub_processes

    for m, pid in stub_processes(server_pid).values():
        if m == model:
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
            except OSError:
                return None
    return None


async def soak(
    grpc_url: str, server_pid: int | None, cases: list[tuple[str, str, str]], clients: int, seconds: float
) -> SoakResult:
    """``cases``: (question, expected answer, expected tier)."""
    from pyramid_client import AsyncPyramidClient, PyramidError

    from .perf import percentile

    res = SoakResult(clients, seconds)
    latencies: list[float] = []
    stop = time.monotonic() + seconds
    counter = iter(range(10**9))

    async def client_loop(k: int) -> None:
        async with AsyncPyramidClient(grpc_url, timeout_s=30, retries=0) as c:
            while time.monotonic() < stop:
                n = next(counter)
                q, answer, tier = cases[n % len(cases)]
                rid = f"soak-{k}-{n}"
                res.sent += 1
                try:
                    r = await c.ask(q, request_id=rid)
                except PyramidError as exc:
                    res.errors[exc.code] = res.errors.get(exc.code, 0) + 1
                    continue
                res.answered += 1
                latencies.append(r.latency_s * 1000)
                if r.request_id != rid or (r.answer or "") != answer or r.tier != tier:
                    res.mismatched += 1

    async def sampler() -> None:
        while time.monotonic() < stop:
            if server_pid is not None:
                rss = router_rss_mb(server_pid)
                if rss is not None:
                    res.rss_mb.append(round(rss, 1))
            await asyncio.sleep(1.0)

    t0 = time.monotonic()
    await asyncio.gather(*(client_loop(k) for k in range(clients)), sampler())
    res.seconds = time.monotonic() - t0
    res.unanswered = res.sent - res.answered - sum(res.errors.values())
    if latencies:
        res.p50_ms = percentile(latencies, 50)
        res.p99_ms = percentile(latencies, 99)
    return res


def expected_cases(calibration: str | Path, traces: str | Path) -> list[tuple[str, str, str]]:
    """(question, answer, tier) of the offline router on every question all models have a record for."""
    from pyramid_moa.artifact import load_artifact
    from pyramid_moa.features import AgentOutput
    from pyramid_moa.traces import TraceSet

    art = load_artifact(calibration)
    router = art.router()
    ts = TraceSet.open(traces)
    names = [*art.committee, art.oracle]
    cases = []
    for idx in sorted(ts.questions):
        if not all(ts.samples(m).get(idx) for m in names):
            continue

        def call(agent: str, idx: int = idx) -> AgentOutput:
            return ts.output(agent, idx)

        q = ts.questions[idx].question
        r = router.route(q, call)
        cases.append((q, r.answer or "", r.tier))
    return cases


def markdown(s: dict, command: str) -> str:
    errors = ", ".join(f"{k} {v}" for k, v in s["errors"].items()) or "0"
    return "\n".join(
        [
            f"Soak ({s['machine']}, {s['date']}, `{command}`)",
            "",
            "| clients | seconds | requests | answered | mismatched | errors | unanswered | req/s | p50 ms | p99 ms "
            "| router RSS start / end / max MB | growth MB |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
            f"| {s['clients']} | {s['seconds']:.0f} | {s['sent']} | {s['answered']} | {s['mismatched']} | {errors} "
            f"| {s['unanswered']} | {s['throughput_rps']:.0f} | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} "
            f"| {s['rss_start_mb']} / {s['rss_end_mb']} / {s['rss_max_mb']} | {s['rss_growth_mb']:+.1f} |",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--spec", default=str(ROOT / "deploy" / "replay.yaml"))
    ap.add_argument("--calibration", default=str(ROOT / "out" / "calibration" / "replay.json"))
    ap.add_argument("--traces", default=str(ROOT / "data" / "gsm8k"))
    ap.add_argument("--out", default=str(ROOT / "out" / "soak"))
    a = ap.parse_args(argv)

    from pyramid_ops.server import TritonServer

    from .perf import render_spec

    cases = expected_cases(a.calibration, a.traces)
    with tempfile.TemporaryDirectory() as tmp:
        repo = render_spec(Path(a.spec), Path(a.traces), a.calibration, Path(tmp) / "repo", None)
        with TritonServer(repo, log_path=Path(tmp) / "server.log") as server:
            res = asyncio.run(soak(server.grpc_url, server.proc.pid, cases, a.clients, a.seconds))
    s = res.summary()
    s["machine"] = f"{platform.machine()}, Python {platform.python_version()}"
    s["date"] = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(s, indent=1) + "\n", encoding="utf-8")
    md = markdown(s, f"python scripts/soak.py --clients {a.clients} --seconds {a.seconds:g}")
    (out / "summary.md").write_text(md, encoding="utf-8")
    print(md)
    return 0 if res.ok else 1


if __name__ == "__main__":
    sys.exit(main())
