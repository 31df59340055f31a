"""OpenAI response bodies (``chat.completion``, ``text_completion`` and their stream chunks) and the
routing metadata every response carries: a ``pyramid`` object in the body and ``x-pyramid-*`` headers.

Pure functions of an ``Answer``: no I/O, so the shapes are unit-tested without a server.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from pyramid_client import PyramidResult

HEADER_PREFIX = "x-pyramid-"


@dataclass
class Answer:
    """What one request produced, whichever model answered it."""

    text: str
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int
    completion_tokens: int
    pyramid: dict[str, Any] = field(default_factory=dict)

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


def _num(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def tier_usage(tokens: dict[str, list[int]], oracle: str) -> dict[str, dict[str, int]]:
    """Per tier: calls, prompt and completion tokens of the calls the route made."""
    out = {t: {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0} for t in ("committee", "oracle")}
    for model, (prompt, completion) in tokens.items():
        u = out["oracle" if model == oracle else "committee"]
        u["calls"] += 1
        u["prompt_tokens"] += int(prompt)
        u["completion_tokens"] += int(completion)
    return out


def router_metadata(model: str, r: PyramidResult, oracle: str) -> dict[str, Any]:
    """The ``pyramid`` object of a routed answer (provisional or final). ``router_budget``: the router's
    oracle-rate controller's target, window rate, offset and applied thresholds, when it held this request
    (``budget`` is the API key's own budget, set by the gateway). ``task``: the answer task that routed it,
    ``task_source`` (``request``, ``default`` or ``auto``: detected from the prompt, then ``task_detected``, the
    kind of prompt found, and ``task_reason``), ``task_fallback`` (``oracle`` / ``default``) where one applied;
    left out when the router does not say."""
    meta = {
        "model": model,
        "tier": r.tier,
        "escalated": r.escalated,
        "confidence": _num(r.confidence),
        "agreement": _num(r.agreement),
        "provisional": r.provisional,
        "degraded": r.degraded,
        "answer": r.answer,
        "agent_answers": r.agent_answers,
        "failed_agents": r.failed_agents,
        "calls": r.calls,
        "cost": _num(r.cost),
        "costs": {k: _num(v) for k, v in r.costs.items()},
        "usage": tier_usage(r.tokens, oracle),
        "latency_ms": r.server_latency_ms,
        "request_id": r.request_id,
    }
    if r.budget is not None:
        meta["router_budget"] = r.budget
    t = getattr(r, "task", None)
    if isinstance(t, dict) and t.get("name"):
        meta["task"], meta["task_source"] = t["name"], t.get("source")
        for key in ("detected", "reason", "fallback"):
            if t.get(key) is not None:
                meta[f"task_{key}"] = t[key]
    return meta


def headers(meta: dict[str, Any]) -> dict[str, str]:
    """The essentials of ``meta`` as ``x-pyramid-*`` headers (absent values left out)."""
    out: dict[str, str] = {}
    for key in ("model", "tier", "escalated", "confidence", "agreement", "provisional", "degraded", "cost"):
        v = meta.get(key)
        if v is None:
            continue
        out[HEADER_PREFIX + key] = str(v).lower() if isinstance(v, bool) else str(v)
    if meta.get("calls"):
        out[HEADER_PREFIX + "calls"] = ",".join(meta["calls"])
    if meta.get("request_id"):
        out["x-request-id"] = meta["request_id"]
    return out


def _base(obj: str, rid: str, model: str, created: int) -> dict[str, Any]:
    return {"id": rid, "object": obj, "created": created, "model": model}


def chat_completion(rid: str, model: str, created: int, a: Answer) -> dict[str, Any]:
    body = _base("chat.completion", rid, model, created)
    body["choices"] = [
        {
            "index": 0,
            "message": {"role": "assistant", "content": a.text, "refusal": None},
            "logprobs": None,
            "finish_reason": a.finish_reason,
        }
    ]
    body["usage"] = a.usage()
    body["pyramid"] = a.pyramid
    return body


def text_completion(rid: str, model: str, created: int, a: Answer) -> dict[str, Any]:
    body = _base("text_completion", rid, model, created)
    body["choices"] = [{"index": 0, "text": a.text, "logprobs": None, "finish_reason": a.finish_reason}]
    body["usage"] = a.usage()
    body["pyramid"] = a.pyramid
    return body


def chunk(
    chat: bool,
    rid: str,
    model: str,
    created: int,
    *,
    text: str | None = None,
    role: bool = False,
    finish_reason: str | None = None,
    choices: bool = True,
    **extra: Any,
) -> dict[str, Any]:
    """One stream chunk. ``choices=False``: an empty ``choices`` list (the usage chunk). With neither
    ``text`` nor ``role`` the delta is empty: the provisional-answer extension chunk, which a plain client
    reads as no text (an empty ``choices`` list would do for the openai SDKs, but not for genai-perf 0.0.16,
    which fails on it)."""
    body = _base("chat.completion.chunk" if chat else "text_completion", rid, model, created)
    if not choices:
        body["choices"] = []
    elif chat:
        delta: dict[str, Any] = {}
        if role:
            delta["role"] = "assistant"
        if text is not None:
            delta["content"] = text
        body["choices"] = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
    else:
        body["choices"] = [{"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}]
    body.update(extra)
    return body


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent event (``data: ...`` and a blank line)."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


DONE = sse("[DONE]")
