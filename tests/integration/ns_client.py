"""A pyramid client that runs where the router is reachable (inside the router's network namespace:
``ip netns exec NS python ns_client.py URL``), driven over stdin/stdout by tests/integration/test_multihost.py.

Reads one JSON object per line, ``{"id": ..., "q": question, "kw": {ask keyword arguments}}``, answers
each with one JSON line: the ``PyramidResult`` fields used by the tests and the client-side latency,
or ``{"id": ..., "error": code, "message": ...}``. No retries: what the router says is what is seen.
"""

from __future__ import annotations

import json
import sys
import time


def main() -> int:
    from pyramid_client import PyramidClient, PyramidError

    url = sys.argv[1]
    with PyramidClient(url, retries=0, timeout_s=30) as client:
        print(json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            if not line.strip():
                continue
            cmd = json.loads(line)
            t0 = time.monotonic()
            try:
                r = client.ask(cmd["q"], **cmd.get("kw", {}))
                out = {
                    "answer": r.answer,
                    "tier": r.tier,
                    "escalated": r.escalated,
                    "degraded": r.degraded,
                    "provisional": r.provisional,
                    "failed": r.failed_agents,
                    "calls": r.calls,
                    "confidence": r.confidence,
                }
            except PyramidError as exc:
                out = {"error": exc.code, "message": exc.message}
            out.update(id=cmd.get("id"), latency_s=time.monotonic() - t0)
            print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
