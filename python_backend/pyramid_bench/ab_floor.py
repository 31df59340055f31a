"""A quick A/B of the router against the bare-BLS floor: one server, interleaved rounds at c=16.

How BENCHMARKS.md ("closing the gap to the floor") measured each lever: the ``make perf`` deployment
(``deploy/replay.yaml``, zero-latency replay engines, the committed calibration) with the floor beside
the router; the router's code taken from ``--python-backend`` (a copy of ``python_backend/`` with one
change in it; default: this checkout's), its config parameters overridden by ``--param``, both models'
instance counts by ``--instances``. Each round runs perf_analyzer on ``pyramid`` and on the floor (the
order alternating), three 1 s windows each, and reports router/floor throughput; the median over rounds
is the figure. Rounds on this kind of VM spread by 3-10 points: compare changes, not single runs.

Usage: python scripts/ab_floor.py [--python-backend DIR] [--param metrics=false] [--instances 2] [--rounds 4]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
from pathlib import Path

from .perf import (
    FLOOR_MODEL,
    INSTALL_HINT,
    PerfAnalyzer,
    admin_headers,
    find_perf_analyzer,
    floor_deployment,
)

ROOT = Path(__file__).resolve().parents[2]


def set_param(config: str, key: str, value: str) -> str:
    """``config`` (a rendered config.pbtxt) with parameter ``key`` set to ``value``; KeyError if absent."""
    pattern = re.compile(r'(key: "' + re.escape(key) + r'" value: \{ string_value: ")[^"]*(")')
    if not pattern.search(config):
        raise KeyError(f"the router's config has no parameter {key!r}")
    return pattern.sub(lambda m: m.group(1) + value.replace("\\", "\\\\").replace('"', '\\"') + m.group(2), config)


def set_instances(config: str, n: int) -> str:
    return re.sub(r"instance_group \[ \{ count: \d+", f"instance_group [ {{ count: {n}", config)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python-backend", type=Path, help="the router's code (a python_backend/ copy); default: this one")
    ap.add_argument("--param", action="append", default=[], help="router config parameter KEY=VALUE (repeatable)")
    ap.add_argument(
        "--instances", type=int, default=0, help="instance_count of the router and the floor (0: as rendered)"
    )
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--calibration", default=str(ROOT / "deploy" / "replay.calibration.json"))
    a = ap.parse_args(argv)
    pa_bin = find_perf_analyzer()
    if pa_bin is None:
        print(f"error: perf_analyzer not found; {INSTALL_HINT}", file=sys.stderr)
        return 2
    from pyramid_ops.server import TritonServer

    out = Path(tempfile.mkdtemp(prefix="ab-floor-"))
    repo = floor_deployment(ROOT / "deploy" / "replay.yaml", ROOT / "data" / "gsm8k", a.calibration, out)
    router_cfg = repo / "pyramid" / "config.pbtxt"
    config = router_cfg.read_text(encoding="utf-8")
    try:
        if a.python_backend is not None:
            config = set_param(config, "python_path", str(a.python_backend.resolve()))
        for kv in a.param:
            key, sep, value = kv.partition("=")
            if not sep:
                raise KeyError(f"--param {kv!r} is not KEY=VALUE")
            config = set_param(config, key, value)
    except KeyError as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 2
    if a.instances:
        config = set_instances(config, a.instances)
        floor_cfg = repo / FLOOR_MODEL / "config.pbtxt"
        floor_cfg.write_text(set_instances(floor_cfg.read_text(encoding="utf-8"), a.instances), encoding="utf-8")
    router_cfg.write_text(config, encoding="utf-8")
    targets = ["pyramid", FLOOR_MODEL]
    rps: dict[str, list[float]] = {t: [] for t in targets}
    with TritonServer(repo, log_path=out / "tritonserver.log") as server:
        pa = PerfAnalyzer(pa_bin, server.grpc_url, out, out / "inputs.json", headers=admin_headers(server))
        for t in targets:
            pa.count_run(f"warmup_{t}", t, 1, True, 100, 10.0)
        for k in range(a.rounds):
            for t in targets if k % 2 == 0 else targets[::-1]:
                rps[t].append(pa.window_run(f"round{k + 1}_{t}", t, a.concurrency, True).throughput)
            print(
                f"round {k + 1}: pyramid {rps['pyramid'][-1]:.0f}/s, floor {rps[FLOOR_MODEL][-1]:.0f}/s, "
                f"ratio {rps['pyramid'][-1] / rps[FLOOR_MODEL][-1]:.1%}",
                flush=True,
            )
    ratios = [p / f for p, f in zip(rps["pyramid"], rps[FLOOR_MODEL])]
    print(
        f"median ratio {statistics.median(ratios):.1%} ({min(ratios):.0%}-{max(ratios):.0%}); "
        f"pyramid {statistics.median(rps['pyramid']):.0f}/s, floor {statistics.median(rps[FLOOR_MODEL]):.0f}/s "
        f"(files in {out})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
