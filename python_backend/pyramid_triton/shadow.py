"""Shadow sampling: complete records of live traffic, for a label-free calibration.

For a uniform random share (``shadow_rate``) of the requests the router answers, after the response
has been sent (never on the client's critical path) the router calls every model the route did not
get an answer from (the committee members it did not ask, or whose call failed, and the oracle
unless it was called) with the same engine request, and appends one complete record to a trace
directory in the project's format (docs/TRACES.md): the question, every model's output (text,
answer, tokens, ``cum_log_prob`` where returned), the decision taken and the calibration artifact's
version. ``pyramid calibrate --traces DIR --labels oracle`` reads it directly; nothing needs gold.

Router parameters (the spec's ``router:`` block, ``protocol.ROUTER_PARAMS``):

* ``shadow_rate`` (default 0: off): the share of answered requests shadowed.
* ``shadow_dir``: the directory (required when ``shadow_rate`` > 0); relative paths are relative
  to the router's model directory. Created with mode 0700, files with 0600: prompts are user data
  (docs/SECURITY.md).
* ``shadow_max_bytes`` (default 256 MiB): the directory's size bound. Records go to a *segment*
  (a trace directory of its own, one per router process at a time) until it holds
  ``shadow_max_bytes / SEGMENTS`` bytes, then to a new one; the oldest segments are deleted while
  the directory holds more than ``shadow_max_bytes``.
* ``shadow_max_concurrent`` (default 8): the most shadow model calls in flight. A sampled request
  whose calls would exceed it is skipped and counted (``pyramid_shadow_total{outcome="skipped"}``),
  never queued: under load, shadow work is the first thing shed.

Append-only: each line is one ``write`` to a file opened with ``O_APPEND``; a record's trace lines
come first and its question line last, so a reader (``pyramid_moa.traces``, which knows a shadow
directory by ``SHADOW_MARKER``) takes a record as complete once its question line is there and a
crash loses at most the record being written.

Prompts are user data: the request log's redaction hook (``request_log_redact``, request_log.py), when
set, sees each record first as ``{"event": "pyramid.shadow", "question", "samples", "shadow"}`` and
returns it (changed as it likes) or None to drop it (counted ``dropped``); a hook that raises drops it.

Each question line carries the decision under ``"shadow"``: tier, escalated, confidence, agreement,
answer, committee answer, the deciding stage, the route's calls and failed models, the request's
threshold and forced tier, which models were called only for the shadow record (and which of
those failed), and ``calibration`` (the artifact's version: a hash of its content, when it was
fitted, its labels).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyramid_moa.artifact import CalibrationArtifact
from pyramid_moa.cost import estimate_tokens
from pyramid_moa.features import AgentOutput
from pyramid_moa.traces import SHADOW_MARKER

from .hot_reload import artifact_id
from .protocol import SHADOW_PARAMS as DEFAULTS
from .routing import Routed

SEGMENTS = 8  # a segment is closed at this share of shadow_max_bytes
FORMAT = {"format": "pyramid-moa/shadow", "version": 1}


def artifact_version(art: CalibrationArtifact) -> dict[str, Any]:
    """What identifies the calibration a decision was taken under."""
    return {
        "id": artifact_id(art.to_dict()),
        "created": art.fitted_on.get("created"),
        "labels": art.fitted_on.get("labels", "gold"),
    }


def sample_of(out: AgentOutput) -> dict[str, Any]:
    """A trace sample (docs/TRACES.md) from one model output."""
    s: dict[str, Any] = {
        "text": out.text,
        "answer": out.answer,
        "output_tokens": out.output_tokens if out.output_tokens is not None else estimate_tokens(out.text or ""),
    }
    if out.prompt_tokens is not None:
        s["prompt_tokens"] = out.prompt_tokens
    if out.cum_log_prob is not None:
        s["cum_log_prob"] = out.cum_log_prob
    return s


@dataclass
class ShadowRecord:
    idx: int
    question: dict[str, Any]  # the questions.jsonl line
    samples: dict[str, dict[str, Any]]  # model -> its trace sample (failed calls are left out)


def build_record(
    idx: int,
    question: str,
    routed: Routed,
    shadow_outputs: dict[str, AgentOutput],
    route_failed: list[str],
    calibration: dict[str, Any],
    threshold: float | None = None,
    force_tier: str | None = None,
    router: str = "",
    now: Callable[[], float] = time.time,
) -> ShadowRecord:
    """The record of one shadowed request: the route's outputs and the shadow calls' outputs."""
    r = routed.result
    outputs = {n: o for n, o in routed.outputs.items() if not o.failed}
    outputs.update({n: o for n, o in shadow_outputs.items() if not o.failed})
    decision = {
        "tier": r.tier,
        "escalated": r.escalated,
        "confidence": r.confidence,
        "agreement": r.agreement,
        "answer": r.answer,
        "committee_answer": r.committee_answer,
        "stage": r.decisions[-1].stage if r.decisions else None,
        "calls": list(r.calls),
        "failed": sorted(route_failed),
        "provisional": routed.provisional,
        "threshold": threshold,
        "force_tier": force_tier,
        "shadow_calls": sorted(shadow_outputs),
        "shadow_failed": sorted(n for n, o in shadow_outputs.items() if o.failed),
    }
    line = {
        "idx": idx,
        "question": question,
        "gold": None,
        "shadow": {"ts": round(now(), 3), "router": router, "decision": decision, "calibration": calibration},
    }
    return ShadowRecord(idx, line, {n: sample_of(o) for n, o in outputs.items()})


def redact(rec: ShadowRecord, hook: Callable[[dict[str, Any]], Any] | None) -> ShadowRecord | None:
    """``rec`` through the redaction hook (None: dropped; no hook: unchanged)."""
    if hook is None:
        return rec
    d = {"event": "pyramid.shadow", "question": rec.question["question"], "samples": rec.samples,
         "shadow": rec.question["shadow"]}  # fmt: skip
    try:
        out = hook(d)
    except Exception:  # noqa: BLE001 - user code: a failing hook drops the record, unwritten
        return None
    if out is None:
        return None
    q = {**rec.question, "question": out.get("question", d["question"]), "shadow": out.get("shadow", d["shadow"])}
    return ShadowRecord(rec.idx, q, dict(out.get("samples", rec.samples)))


class Ids:
    """Record ids unique across processes and restarts: microseconds since the epoch x 1000 plus the
    process id's last three digits, strictly increasing within a process."""

    def __init__(self, clock: Callable[[], int] = time.time_ns, pid: int | None = None) -> None:
        self.clock, self.pid, self.last = clock, (os.getpid() if pid is None else pid) % 1000, 0

    def next(self) -> int:
        idx = (self.clock() // 1000) * 1000 + self.pid
        if idx <= self.last:
            idx = self.last + 1000
        self.last = idx
        return idx


def _append(path: Path, text: str) -> int:
    """One ``write`` of ``text`` at the end of ``path`` (created 0600); bytes written."""
    data = text.encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    return len(data)


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class SegmentWriter:
    """Appends records to the current segment of ``root``; rotates and prunes by size."""

    def __init__(
        self,
        root: Path,
        router: str,
        sources: list[dict[str, Any]],
        max_bytes: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError(f"shadow_max_bytes must be positive, got {max_bytes}")
        self.root, self.router, self.sources = Path(root), router, sources
        self.max_bytes, self.segment_bytes, self.clock = max_bytes, max(1, max_bytes // SEGMENTS), clock
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)
        marker = self.root / SHADOW_MARKER
        if not marker.exists():
            _append(marker, json.dumps(FORMAT) + "\n")
        self.segment: Path | None = None
        self._bytes = 0
        self._seq = 0

    def use_sources(self, sources: list[dict[str, Any]]) -> None:
        """Other models' facts (a new calibration): the next segment is written with them."""
        if sources != self.sources:
            self.sources, self.segment = sources, None

    def _new_segment(self) -> None:
        self._seq += 1
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(self.clock()))
        seg = self.root / f"{stamp}-{self.router}-{os.getpid()}-{self._seq:04d}"
        (seg / "traces").mkdir(parents=True, mode=0o700)
        os.chmod(seg, 0o700)
        text = json.dumps(self.sources, indent=1) + "\n"
        tmp = seg / ".sources.json.tmp"
        _append(tmp, text)
        os.replace(tmp, seg / "sources.json")  # complete or absent: a reader skips a segment without it
        self.segment, self._bytes = seg, len(text)
        self._prune()

    def _prune(self) -> None:
        """Delete the oldest segments (never the current one) while the directory is over its bound."""
        segs = sorted((p for p in self.root.iterdir() if p.is_dir()), key=lambda p: p.name)
        sizes = {p: _size(p) for p in segs}
        total = sum(sizes.values())
        for p in segs:
            if total <= self.max_bytes:
                break
            if p == self.segment:
                continue
            shutil.rmtree(p, ignore_errors=True)
            total -= sizes[p]

    def write(self, rec: ShadowRecord) -> int:
        """Append one record (trace lines, then its question line); bytes written."""
        if self.segment is None or self._bytes >= self.segment_bytes:
            self._new_segment()
        assert self.segment is not None
        n = 0
        for model, sample in rec.samples.items():
            n += _append(
                self.segment / "traces" / f"{model}.jsonl", json.dumps({"idx": rec.idx, "samples": [sample]}) + "\n"
            )
        n += _append(self.segment / "questions.jsonl", json.dumps(rec.question, ensure_ascii=False) + "\n")
        self._bytes += n
        return n


def sources_of(art: CalibrationArtifact, models: list[str], oracle: str, router: str) -> list[dict[str, Any]]:
    """sources.json rows: each model's role and, from the artifact's cost model, its size and prices."""
    rows = []
    for m in models:
        mc = art.cost_model.models.get(m)
        row: dict[str, Any] = {
            "name": m,
            "model": m,
            "params_b": mc.params_b if mc else None,
            "role": "oracle" if m == oracle else "agent",
            "license": "unknown: the license of the model behind this engine applies",
            "recorded_by": f"pyramid shadow sampling (router {router})",
        }
        if mc is not None and mc.price_in_per_1k is not None and mc.price_out_per_1k is not None:
            row["price_usd_per_1k_tokens"] = {"input": mc.price_in_per_1k, "output": mc.price_out_per_1k}
        rows.append(row)
    return rows


@dataclass
class Shadow:
    """Sampling and the bound on shadow calls in flight; the writer; what happened, counted."""

    rate: float
    writer: SegmentWriter
    max_concurrent: int
    rng: random.Random = field(default_factory=random.Random)
    ids: Ids = field(default_factory=Ids)
    in_flight: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"shadow_rate must be within [0, 1], got {self.rate}")
        if self.max_concurrent < 1:
            raise ValueError(f"shadow_max_concurrent must be at least 1, got {self.max_concurrent}")

    @classmethod
    def from_params(
        cls, params: Any, model: str, art: CalibrationArtifact, models: list[str], oracle: str
    ) -> Shadow | None:
        """From the router's ``config.ModelParams``; None when off; ValueError naming a bad parameter."""
        d = DEFAULTS
        rate = params.get_typed("shadow_rate", d)
        if not rate:
            return None
        root = params.get_path("shadow_dir", None)
        if root is None:
            raise ValueError(f"model {model!r}: shadow_rate is {rate} but shadow_dir is not set")
        writer = SegmentWriter(
            root,
            model,
            sources_of(art, models, oracle, model),
            params.get_typed("shadow_max_bytes", d),
        )
        return cls(rate, writer, params.get_typed("shadow_max_concurrent", d))

    def sampled(self) -> bool:
        return self.rng.random() < self.rate

    def admit(self, calls: int) -> bool:
        """Reserve ``calls`` shadow calls; False (nothing reserved) if that would pass the bound."""
        if self.in_flight + calls > self.max_concurrent:
            return False
        self.in_flight += calls
        return True

    def release(self, calls: int) -> None:
        self.in_flight -= calls
