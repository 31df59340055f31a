#!/usr/bin/env python3
"""Requests against a served deploy/gpu-1gpu-smoke.yaml repository (scripts/gpu_check.sh stage "serve").

usage: python3 scripts/gpu_smoke.py HTTP_URL [--json OUT]

Standard library only (it runs with the container's python3), over Triton's HTTP generate endpoint:

1. each engine ensemble directly, as the router calls it (text_input, max_tokens, return_log_probs):
   text_output present, 1 <= output_tokens <= max_tokens, cum_log_probs finite and not 0 (TensorRT-LLM
   returns 0 for greedy decoding when no sampling parameter is set; the preprocessing always sets one);
2. an engine without return_log_probs answers, with no cum_log_probs (or NaN, or 0);
3. a prompt over max_input_len tokens: an error naming text_input;
4. the router: a routed answer (tier, agreement, agent_answers JSON with no failed agent), then
   force_tier=oracle (escalated, the oracle among the calls), then 8 concurrent requests.
Prints one line per check; exit 0 when all pass, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

AGENTS = ["tiny-agent-1", "tiny-agent-2", "tiny-agent-3"]
ORACLE = "tiny-oracle"
QUESTION = (
    "Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins for her "
    "friends every day with four. She sells the remainder for $2 per egg. How much does she make every day?"
)


def generate(url: str, model: str, body: dict, timeout: float = 120.0) -> tuple[int, dict]:
    req = urllib.request.Request(
        f"{url}/v2/models/{model}/generate", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read())
        except json.JSONDecodeError:
            return exc.code, {"error": f"HTTP {exc.code}"}


def _one(v):
    return v[0] if isinstance(v, list) and v else v


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("url", help="http://HOST:PORT")
    ap.add_argument("--json", help="write every response here")
    a = ap.parse_args(argv)
    url = a.url.rstrip("/")
    results: list[tuple[str, bool, str]] = []
    log: dict = {}

    def check(name: str, ok: bool, detail: str) -> None:
        results.append((name, ok, detail))
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)

    for m in [*AGENTS, ORACLE]:
        status, out = generate(url, m, {"text_input": QUESTION, "max_tokens": 16, "return_log_probs": True})
        log[m] = out
        text, n, lp = _one(out.get("text_output")), _one(out.get("output_tokens")), _one(out.get("cum_log_probs"))
        ok = status == 200 and isinstance(text, str) and isinstance(n, int) and 1 <= n <= 16
        check(f"engine {m}", ok, f"HTTP {status}, output_tokens {n}, text {str(text)[:40]!r}, error {out.get('error')}")
        lp_ok = isinstance(lp, (int, float)) and math.isfinite(lp) and lp != 0.0
        check(f"engine {m} log-probs", lp_ok, f"cum_log_probs {lp!r}")

    status, out = generate(url, AGENTS[0], {"text_input": QUESTION, "max_tokens": 4})
    lp = _one(out.get("cum_log_probs"))
    # Absent (Triton 24.11+ leaves an output the engine did not produce out of an ensemble's response),
    # NaN, or 0 (older backends): all mean "not asked for".
    quiet = lp is None or lp != lp or lp == 0.0
    check("engine without return_log_probs", status == 200 and quiet, f"HTTP {status}, cum_log_probs {lp!r}")

    status, out = generate(url, AGENTS[0], {"text_input": "seven " * 2000, "max_tokens": 4})
    check("prompt too long", status != 200 and "text_input" in str(out.get("error")), str(out.get("error"))[:120])

    status, out = generate(url, "pyramid", {"text_input": QUESTION, "max_tokens": 16})
    log["pyramid"] = out
    details = json.loads(_one(out.get("agent_answers")) or "{}") if status == 200 else {}
    calls = details.get("calls", [])
    ok = status == 200 and _one(out.get("tier")) in ("committee", "oracle") and not details.get("failed") and calls
    ok = bool(ok) and set(calls) <= {*AGENTS, ORACLE}
    check("router", ok, f"HTTP {status}, tier {out.get('tier')}, calls {calls}, error {out.get('error')}")

    status, out = generate(url, "pyramid", {"text_input": QUESTION, "max_tokens": 16, "force_tier": "oracle"})
    details = json.loads(_one(out.get("agent_answers")) or "{}") if status == 200 else {}
    ok = status == 200 and _one(out.get("escalated")) is True and ORACLE in details.get("calls", [])
    check(
        "router force_tier=oracle", ok, f"HTTP {status}, escalated {out.get('escalated')}, calls {details.get('calls')}"
    )

    with ThreadPoolExecutor(8) as pool:
        outs = list(
            pool.map(lambda i: generate(url, "pyramid", {"text_input": f"{QUESTION} ({i})", "max_tokens": 8}), range(8))
        )
    bad = [o for s, o in outs if s != 200 or "tier" not in o]
    check("router, 8 concurrent", not bad, f"{8 - len(bad)}/8 answered" + (f"; e.g. {bad[0]}" if bad else ""))

    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump(log, f, indent=1)
    failed = [r for r in results if not r[1]]
    print(f"{len(results) - len(failed)}/{len(results)} checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
