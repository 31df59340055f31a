"""``pyramid record``: run the committee and the oracle of a live deployment over a question file and
write traces in the project's format (docs/TRACES.md), so ``pyramid calibrate`` can fit the router
for the deployment's own models.

    pyramid record --url HOST:8001 --questions gsm8k-train.jsonl --out traces/mine
    pyramid calibrate --traces traces/mine --committee A,B,C --oracle O --out calib.json

Every committee member and the oracle is asked every question directly (by its Triton model
name, with the engine text API the router uses: ``text_input``, ``max_tokens``, and
``return_log_probs`` for the engines the router reads log-probabilities from), so the traces hold
what each model answers when the router calls it. Who the models are, which return
log-probabilities, which return a parsed answer and the router's default ``max_tokens`` are read
from the router's model config (``--router``, default ``pyramid``); ``--committee`` / ``--oracle``
name them instead, e.g. for a repository rendered with ``--engines-only`` (no router yet). Model
configs are behind the deployment's admin key (docs/SECURITY.md): give it as ``$PYRAMID_ADMIN_KEY_FILE``
or ``$PYRAMID_ADMIN_KEY``, or name the models with the flags.

Questions (``--questions FILE``, the format recognised from its first line): the project's ``{"idx",
"question", "gold"}`` lines; GSM8K's own ``{"question", "answer"}`` lines (``gold`` what follows
``####``); plain prompts without gold, as ``{"question"}`` lines, OpenAI-style chat logs
(``{"messages": [...]}``: the question is the conversation up to its last user turn, as the OpenAI
gateway puts it to the router: that turn verbatim when it is the only one, else a ``System: / User: /
Assistant:`` transcript ending with it; a logged reply after it is left out), or a text file with one
prompt per line. Without an ``idx`` the line number from 0 is the question's idx. Questions without
gold are recorded with ``"gold": null`` and every source row says ``"gold_answers": false``;
``pyramid calibrate`` then fits on agreement with the oracle (``--labels oracle``) and refuses
``--labels gold`` naming the file.

Cost facts: each model's size and prices go into ``sources.json``, so that the ``next:`` command
printed at the end runs as printed: ``--params`` / ``--price`` first, then the calibration's
(``--calibration FILE``, else the router's ``cost_facts`` parameter, rendered from its artifact),
then what an engine's config says (TensorRT-LLM engines' ``params_b``). The ``next:`` command names
the calibration's cost model when every model has what it needs (else one that they all have), and
``--labels oracle`` when a question has no gold.

Output (``--out DIR``): ``questions.jsonl``, ``sources.json`` (the model behind each engine, its
role, size and prices as above) and
``traces/<model>.jsonl`` with one sample per question: ``text``, ``answer`` (the engine's own if it
parses one, else extracted as the router does), ``output_tokens`` (the engine's count, or chars/4
when it returns none), ``cum_log_prob`` when returned. Results are appended as they arrive, so
``--resume`` continues an interrupted run; at the end each trace file is rewritten sorted by idx. A
call that fails is left out (the trace format counts a missing record as a failed call), reported,
and makes the exit code 1; ``--resume`` retries it. Exit 2: bad flags or files.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pyramid_client import PyramidError, chat
from pyramid_client.cli import parse_args
from pyramid_client.client import make_transport
from pyramid_client.http_transport import split_url
from pyramid_client.keys import inference_key_from_env
from pyramid_client.retry import Attempts, RetryPolicy
from pyramid_client.wire import (
    DEFAULT_MAX_TOKENS,
    INTERNAL,
    NOT_FOUND,
    PERMISSION_DENIED,
    UNAVAILABLE,
    classify_error,
    config_parameters,
    key_headers,
)
from pyramid_moa.answers import get_task, normalize_number
from pyramid_moa.artifact import ArtifactError, load_artifact, write_text_atomic
from pyramid_moa.cli import DefaultsFormatter
from pyramid_moa.cost import COST_MODELS, CostModel, ModelCost, estimate_tokens
from pyramid_ops import access

from . import gsm8k
from .gsm8k import Progress, Question, UsageError, add_selection_args, choose, grade

LOG_PROB_POLICIES = ("auto", "always", "never")


@dataclass
class Deployment:
    """What ``record`` needs to know about the deployment's models."""

    committee: list[str]
    oracle: str
    logprob_models: set[str] = field(default_factory=set)
    parsed_answer_models: set[str] = field(default_factory=set)
    default_max_tokens: int | None = None
    source: str = "flags"  # "router <name>" when read from the router's config
    cost_facts: dict[str, Any] | None = None  # {"cost_model", "models": {name: ModelCost fields}}

    @property
    def models(self) -> list[str]:
        return [*self.committee, self.oracle]


def _csv(v: str | None) -> list[str]:
    return [x.strip() for x in (v or "").split(",") if x.strip()]


def _admin_key() -> access.Key | None:
    """The deployment's admin key ($PYRAMID_ADMIN_KEY_FILE or $PYRAMID_ADMIN_KEY): a model's config is
    behind it (docs/SECURITY.md), and ``record`` reads the router's and the engines' configs."""
    return access.from_env()


ADMIN_KEY_HINT = (
    "model configs are behind the deployment's admin key (docs/SECURITY.md): set "
    f"{access.ADMIN_KEY_FILE_ENV} to its file (make serve writes one under out/serve/ and prints its path)"
)


def _refused(model: str, msg: str, key: access.Key | None) -> PyramidError:
    """A restricted API's refusal, with what to do about it."""
    what = "the admin key given was not accepted" if key else ADMIN_KEY_HINT
    return PyramidError(f"model {model!r}: the server refused to show its config ({what})", PERMISSION_DENIED)


def _http_error_text(exc: urllib.error.HTTPError) -> str:
    """Triton's message in an HTTP error's body (``{"error": "..."}``), else the body."""
    try:
        body = exc.read().decode("utf-8", errors="replace")
        obj = json.loads(body)
    except (OSError, ValueError):
        return ""
    return str(obj.get("error", body)) if isinstance(obj, dict) else body


def model_config(protocol: str, url: str, model: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """A model's config as JSON (Triton's model-configuration endpoint); PyramidError if unavailable."""
    key = _admin_key()
    if protocol == "http":
        scheme, host, port, prefix = split_url(url)
        full = f"{scheme}://{host}:{port}{prefix}/v2/models/{quote(model, safe='')}/config"
        req = urllib.request.Request(full, headers=access.http_headers(key) if key else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 403:
                raise _refused(model, str(exc), key) from None
            code, _ = classify_error(_http_error_text(exc), exc.code)
            raise PyramidError(f"model {model!r}: HTTP {exc.code} from {full}", code) from None
        except (urllib.error.URLError, OSError) as exc:
            raise PyramidError(f"cannot reach {host}:{port}: {exc}", UNAVAILABLE) from None
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        headers = access.grpc_headers(key) if key else None
        return client.get_model_config(model, headers=headers, as_json=True, client_timeout=timeout_s)["config"]
    except grpcclient.InferenceServerException as exc:
        msg = str(exc.message() if hasattr(exc, "message") else exc)
        code, _ = classify_error(msg, str(exc.status() or "").replace("StatusCode.", "") or None)
        if code == PERMISSION_DENIED:
            raise _refused(model, msg, key) from None
        raise PyramidError(f"model {model!r}: {msg}", code) from None
    finally:
        client.close()


def discover(protocol: str, url: str, router: str) -> Deployment:
    """The committee, oracle, log-prob and parsed-answer engines and default max_tokens of ``router``."""
    p = config_parameters(model_config(protocol, url, router))
    if "agents" not in p or "oracle" not in p:
        raise PyramidError(f"model {router!r} is not a pyramid router (no 'agents' / 'oracle' parameters)", NOT_FOUND)
    mt = p.get("default_max_tokens", "")
    try:
        facts = json.loads(p["cost_facts"]) if p.get("cost_facts") else None
    except json.JSONDecodeError:
        facts = None
    return Deployment(
        _csv(p["agents"]),
        p["oracle"],
        set(_csv(p.get("logprob_models"))),
        set(_csv(p.get("parsed_answer_models"))),
        int(mt) if mt.isdigit() else None,
        f"router {router}",
        facts if isinstance(facts, dict) else None,
    )


def engine_info(protocol: str, url: str, model: str) -> dict[str, Any]:
    """``{"model", "params_b"}`` from an engine's config parameters (rendered for TensorRT-LLM engines)."""
    try:
        p = config_parameters(model_config(protocol, url, model))
    except PyramidError:
        return {}
    out: dict[str, Any] = {}
    if p.get("hf_model"):
        out["model"] = p["hf_model"]
    try:
        out["params_b"] = float(p["params_b"])
    except (KeyError, ValueError):
        pass
    return out


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(c, dict) and c.get("type") == "text" for c in content):
        return chat.join_parts([str(c.get("text", "")) for c in content])
    raise TypeError("content must be a string or a list of text parts")


def question_from_chat(messages: Any) -> str:
    """The router's question for a logged conversation: up to its last user turn, rendered by the OpenAI
    gateway's rule (``pyramid_client.chat``): a lone user turn verbatim, else a transcript of ``Role: text``
    blocks."""
    if not isinstance(messages, list) or not messages:
        raise TypeError("'messages' must be a non-empty list")
    last = max((i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "user"), default=None)
    if last is None:
        raise TypeError("the conversation has no user turn")
    turns = []
    for m in messages[: last + 1]:
        if not isinstance(m, dict) or m.get("role") not in chat.ROLES:
            raise TypeError(f"a message must have a role among {', '.join(chat.ROLES)}")
        turns.append((m["role"], m.get("name"), _content_text(m.get("content"))))
    if not turns[-1][2].strip():
        raise TypeError("the last user turn is empty")
    return chat.question(turns)


def _prompt_lines(p: Path, lines: list[str]) -> list[Question]:
    """Plain prompts: ``{"question"}`` or ``{"messages"}`` JSON lines, or (the first line not a JSON
    object) one prompt per line of text; no gold."""
    try:
        json_lines = isinstance(json.loads(next(ln for ln in lines if ln.strip())), dict)
    except json.JSONDecodeError:
        json_lines = False
    out: list[Question] = []
    for n, line in enumerate(ln for ln in lines if ln.strip()):
        if not json_lines:
            out.append(Question(n, line.strip(), None))
            continue
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise TypeError("not a JSON object")
            text = question_from_chat(obj["messages"]) if "messages" in obj else obj["question"]
            if not isinstance(text, str) or not text.strip():
                raise TypeError("'question' must be a non-empty string")
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise UsageError(f"{p}: prompt {n + 1}: not a prompt line ({type(exc).__name__}: {exc})") from None
        out.append(Question(n, text, None))
    return out


def load_questions(path: str | Path) -> list[Question]:
    """Questions with gold (the project's lines, GSM8K's ``{"question", "answer": "... #### N"}``) or
    plain prompts (see the module doc)."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UsageError(f"{p}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{p}: not UTF-8 text") from None
    first = next((ln for ln in lines if ln.strip()), "")
    if not first:
        raise UsageError(f"{p}: no questions")
    try:
        head = json.loads(first)
    except json.JSONDecodeError:
        head = None
    if not isinstance(head, dict) or "messages" in head or ("idx" not in head and "answer" not in head):
        return _prompt_lines(p, lines)
    if "idx" in head or "answer" not in head:
        return gsm8k.load_questions(p)
    out = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            text, answer = obj["question"], obj["answer"]
            if not isinstance(text, str) or not isinstance(answer, str):
                raise TypeError("'question' and 'answer' must be strings")
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise UsageError(f"{p}:{n + 1}: not a GSM8K line ({type(exc).__name__}: {exc})") from None
        gold = answer.rsplit("####", 1)[1].strip() if "####" in answer else None
        out.append(Question(n, text, normalize_number(gold) if gold else None))
    if not out:
        raise UsageError(f"{p}: no questions")
    return out


# --- one call --------------------------------------------------------------------------------------


def _sample(
    model: str, parts: Sequence[dict[str, Any]], parsed_answer: bool, task: str, question: str | None = None
) -> dict[str, Any]:
    """A trace sample from an engine's responses (a decoupled engine may send several); the answer is read
    as the task reads it, with the question where the task uses it (``choice``: its options)."""
    text = "".join(str(p.get("text_output", "")) for p in parts)
    tokens = [p.get("output_tokens") for p in parts]
    known = [int(t) for t in tokens if t is not None and int(t) >= 0]
    lps = [p.get("cum_log_probs") for p in parts]
    lp_known = [float(v) for v in lps if v is not None and v == v]  # drop NaN
    answer = None
    engine_answer = next((p["answer"] for p in reversed(parts) if "answer" in p), None)
    if parsed_answer and engine_answer is not None:
        answer = str(engine_answer) or None
    else:
        answer = get_task(task).extract_for(text, question)
    sample: dict[str, Any] = {
        "text": text,
        "answer": answer,
        "output_tokens": sum(known) if len(known) == len(parts) else estimate_tokens(text),
    }
    if lp_known and len(lp_known) == len(parts):
        sample["cum_log_prob"] = float(sum(lp_known))
    return sample


class Caller:
    """Calls engines directly over the client's transports, with the client's retry rule (``retry``)."""

    def __init__(self, protocol: str, url: str, timeout_s: float, retries: int) -> None:
        self.protocol, self.url, self.timeout_s = protocol, url, timeout_s
        self.policy = RetryPolicy(retries)
        self._transports: dict[str, Any] = {}
        key = inference_key_from_env()  # a server that keys inference (security.inference_key)
        self.headers = key_headers(protocol, key.value) if key is not None else None

    def transport(self, model: str) -> Any:
        if model not in self._transports:
            self._transports[model] = make_transport(self.protocol, self.url, model, True, self.headers)
        return self._transports[model]

    async def close(self) -> None:
        for t in self._transports.values():
            await t.close()

    async def call(self, model: str, inputs: dict[str, Any]) -> list[dict[str, Any]]:
        tries = Attempts(self.policy, time.monotonic() + self.timeout_s)
        async for _ in tries:
            with tries:
                parts: list[dict[str, Any]] = []
                async for out in self.transport(model).stream(inputs, uuid.uuid4().hex, tries.deadline, self.timeout_s):
                    tries.answered = True
                    parts.append(out)
                if not parts:
                    raise PyramidError("the engine sent no output", INTERNAL)
                return parts


# --- the run -----------------------------------------------------------------------------------------


def read_trace(path: Path) -> dict[int, dict[str, Any]]:
    """idx -> trace line of an existing (possibly interrupted) trace file; a torn last line is dropped."""
    out: dict[int, dict[str, Any]] = {}
    if not path.is_file():
        return out
    lines = path.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            out[int(obj["idx"])] = obj
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            if n == len(lines):
                print(f"pyramid record: {path}:{n}: dropping a torn last line (an interrupted run)", file=sys.stderr)
                continue
            raise UsageError(f"{path}:{n}: not a trace line") from None
    return out


@dataclass
class Failure:
    model: str
    idx: int
    error: PyramidError


async def record(
    deployment: Deployment,
    questions: Sequence[Question],
    out: Path,
    caller: Caller,
    max_tokens: int,
    log_probs: str = "auto",
    concurrency: int = 8,
    task: str = "gsm8k",
    progress: Progress | None = None,
) -> tuple[dict[str, dict[int, dict[str, Any]]], list[Failure]]:
    """Ask every model every question not yet in ``out``'s traces; append each result as it arrives."""
    traces_dir = out / "traces"
    traces_dir.mkdir(parents=True, exist_ok=True)
    done = {m: read_trace(traces_dir / f"{m}.jsonl") for m in deployment.models}
    from_router = deployment.source.startswith("router")
    want_lp = {
        m: log_probs == "always" or (log_probs == "auto" and (m in deployment.logprob_models or not from_router))
        for m in deployment.models
    }
    files = {m: open(traces_dir / f"{m}.jsonl", "a", encoding="utf-8") for m in deployment.models}  # noqa: SIM115
    failures: list[Failure] = []
    sem = asyncio.Semaphore(concurrency)

    async def one(q: Question, model: str) -> None:
        inputs: dict[str, Any] = {"text_input": q.question, "max_tokens": int(max_tokens)}
        if want_lp[model]:
            inputs["return_log_probs"] = True
        async with sem:
            try:
                parts = await caller.call(model, inputs)
            except PyramidError as exc:
                failures.append(Failure(model, q.idx, exc))
                if progress:
                    progress.update(False)
                return
        line = {
            "idx": q.idx,
            "samples": [_sample(model, parts, model in deployment.parsed_answer_models, task, q.question)],
        }
        done[model][q.idx] = line
        files[model].write(json.dumps(line) + "\n")
        files[model].flush()
        if progress:
            progress.update(True)

    try:
        await asyncio.gather(*(one(q, m) for q in questions for m in deployment.models if q.idx not in done[m]))
    finally:
        for f in files.values():
            f.close()
    for m in deployment.models:  # sorted by idx, one line per question
        rows = [done[m][i] for i in sorted(done[m])]
        write_text_atomic(traces_dir / f"{m}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    return done, failures


def write_metadata(
    out: Path,
    deployment: Deployment,
    questions: Sequence[Question],
    infos: dict[str, dict[str, Any]],
    params: dict[str, list[float]],
    prices: dict[str, list[float]],
    meta: dict[str, Any],
) -> CostModel:
    """questions.jsonl and sources.json; the cost facts written (flags over the calibration's over the
    engines')."""
    existing: dict[int, dict[str, Any]] = {}
    qpath = out / "questions.jsonl"
    if qpath.is_file():
        for line in qpath.read_text(encoding="utf-8").splitlines():
            if line.strip():
                obj = json.loads(line)
                existing[int(obj["idx"])] = obj
    for q in questions:
        existing[q.idx] = {"idx": q.idx, "question": q.question, "gold": q.gold}
    write_text_atomic(qpath, "".join(json.dumps(existing[i]) + "\n" for i in sorted(existing)))
    facts = (deployment.cost_facts or {}).get("models") or {}
    sources, costs = [], {}
    for m in deployment.models:
        info, fact = infos.get(m, {}), facts.get(m) or {}
        p_b = params[m][0] if m in params else fact.get("params_b") or info.get("params_b")
        pr = prices.get(m) or [fact.get("price_in_per_1k"), fact.get("price_out_per_1k")]
        row: dict[str, Any] = {
            "name": m,
            "model": info.get("model", m),
            "params_b": p_b,
            "license": "unknown: the license of the model behind this engine applies",
            "role": "oracle" if m == deployment.oracle else "agent",
            "recorded_by": "pyramid record",
            "gold_answers": all(e.get("gold") is not None for e in existing.values()),
            **meta,
        }
        if pr[0] is not None and pr[1] is not None:
            row["price_usd_per_1k_tokens"] = {"input": pr[0], "output": pr[1]}
        sources.append(row)
        costs[m] = ModelCost(p_b, pr[0], pr[1])
    write_text_atomic(out / "sources.json", json.dumps(sources, indent=1) + "\n")
    return CostModel(costs)


def cost_facts_of(path: str) -> dict[str, Any]:
    """The cost facts of a calibration artifact (as the router's ``cost_facts`` parameter holds them)."""
    art = load_artifact(path)
    return {"cost_model": art.target.get("cost_model"), "models": art.cost_model.to_dict()}


NEXT_OUT = "calib.json"  # what the README's next step, pyramid deploy-calibration, deploys


def next_command(out: Path, dep: Deployment, costs: CostModel, any_gold_missing: bool, task: str) -> str:
    """The ``pyramid calibrate`` command for these traces, with a cost model their facts allow."""
    wanted = (dep.cost_facts or {}).get("cost_model")
    kinds = [k for k in COST_MODELS if costs.available(k, dep.models)]
    kind = wanted if wanted in kinds else (kinds[0] if kinds else None)
    cmd = [
        "pyramid", "calibrate", "--traces", str(out), "--committee", ",".join(dep.committee), "--oracle", dep.oracle,
    ]  # fmt: skip
    if kind is not None:
        cmd += ["--cost", kind]
    if any_gold_missing:
        cmd += ["--labels", "oracle"]
    if task != "gsm8k":
        cmd += ["--task", task]
    cmd += ["--out", NEXT_OUT]
    text = "next: " + " ".join(shlex.quote(c) for c in cmd)
    if kind is None:
        text += (
            "\n  (no cost model has facts for every model: give their sizes or prices with --params NAME=B / "
            "--price NAME=IN,OUT, here or to calibrate)"
        )
    return text


def _overrides(items: list[str] | None, flag: str, n: int, names: Sequence[str]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for item in items or []:
        name, sep, vals = item.partition("=")
        try:
            nums = [float(x) for x in vals.split(",")]
        except ValueError:
            nums = []
        if not sep or len(nums) != n:
            raise UsageError(f"{flag} {item!r}: expected NAME={'IN,OUT' if n == 2 else 'BILLIONS'}")
        if name not in names:
            raise UsageError(f"{flag} {item!r}: {name!r} is not one of the recorded models {list(names)}")
        out[name] = nums
    return out


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        formatter_class=DefaultsFormatter,
        prog="pyramid record",
        description="Record the committee's and the oracle's answers of a live deployment as traces for "
        "pyramid calibrate",
    )
    ap.add_argument("--questions", required=True, help="questions.jsonl (project format) or GSM8K's jsonl")
    ap.add_argument("--out", required=True, help="trace directory to write (docs/TRACES.md)")
    ap.add_argument("--url", help="server HOST:PORT or grpc:// / http:// URL (default localhost:8001 gRPC)")
    ap.add_argument("--protocol", choices=["grpc", "http"])
    ap.add_argument("--router", default="pyramid", help="router model to read the committee from (default pyramid)")
    ap.add_argument("--committee", help="comma-separated agent model names (instead of the router's)")
    ap.add_argument("--oracle", help="oracle model name (with --committee)")
    add_selection_args(ap, 8, "calls")
    ap.add_argument(
        "--max-tokens", type=int, help=f"per call (default: the router's default_max_tokens, else {DEFAULT_MAX_TOKENS})"
    )
    ap.add_argument(
        "--log-probs",
        choices=LOG_PROB_POLICIES,
        default="auto",
        help="ask for cum_log_probs: auto (the router's logprob_models; all models without a router), always, never",
    )
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per call, retries included (default 300)")
    ap.add_argument("--retries", type=int, default=3, help="retries of a call while the server is unavailable")
    ap.add_argument("--params", action="append", metavar="NAME=B", help="model size in billions (sources.json)")
    ap.add_argument("--price", action="append", metavar="NAME=IN,OUT", help="USD per 1k tokens (sources.json)")
    ap.add_argument(
        "--calibration",
        metavar="FILE",
        help="cost facts (sizes, prices, cost model) from this artifact (default: the router's cost_facts)",
    )
    ap.add_argument("--task", default="gsm8k", help="answer extraction task (gsm8k, text)")
    ap.add_argument("--resume", action="store_true", help="continue into an existing --out directory")
    return ap


def main(argv: list[str] | None = None) -> int:
    a, protocol, url = parse_args(parser(), argv)
    out = Path(a.out)
    try:
        if a.retries < 0:
            raise UsageError(f"--retries must be >= 0, got {a.retries}")
        if (a.committee is None) != (a.oracle is None):
            raise UsageError("--committee and --oracle go together")
        if out.exists() and any(out.iterdir()) and not a.resume:
            raise UsageError(f"{out} is not empty: pass --resume to continue a run there, or another --out")
        chosen = choose(a, load_questions(a.questions))
    except UsageError as exc:
        print(f"pyramid record: error: {exc}", file=sys.stderr)
        return 2

    try:
        if a.committee is not None:
            dep = Deployment(_csv(a.committee), a.oracle.strip())
            if not dep.committee or not dep.oracle or len(set(dep.models)) != len(dep.models):
                print("pyramid record: error: --committee / --oracle must name distinct models", file=sys.stderr)
                return 2
        else:
            dep = discover(protocol, url, a.router)
        infos = {m: engine_info(protocol, url, m) for m in dep.models}
    except PyramidError as exc:
        print(f"pyramid record: error: {exc}", file=sys.stderr)
        return 1
    try:
        params = _overrides(a.params, "--params", 1, dep.models)
        prices = _overrides(a.price, "--price", 2, dep.models)
        if a.calibration:
            dep.cost_facts = cost_facts_of(a.calibration)
    except (ArtifactError, UsageError) as exc:
        print(f"pyramid record: error: {exc}", file=sys.stderr)
        return 2
    max_tokens = a.max_tokens or dep.default_max_tokens or DEFAULT_MAX_TOKENS
    print(
        f"recording {len(chosen)} questions x {len(dep.models)} models ({', '.join(dep.committee)} -> {dep.oracle}; "
        f"from {dep.source}) over {protocol} {url}, max_tokens {max_tokens}",
        file=sys.stderr,
    )
    meta = {"url": url, "protocol": protocol, "max_tokens": max_tokens, "recorded_at": time.strftime("%Y-%m-%d")}
    try:
        costs = write_metadata(out, dep, chosen, infos, params, prices, meta)
    except (OSError, json.JSONDecodeError, KeyError, ValueError) as exc:
        print(f"pyramid record: error: {out}: {exc}", file=sys.stderr)
        return 2
    progress = Progress(len(chosen) * len(dep.models), sys.stderr, enabled=not a.quiet)

    async def run():
        caller = Caller(protocol, url, a.timeout, a.retries)
        try:
            return await record(dep, chosen, out, caller, max_tokens, a.log_probs, a.concurrency, a.task, progress)
        finally:
            await caller.close()

    try:
        done, failures = asyncio.run(run())
    except UsageError as exc:
        print(f"pyramid record: error: {exc}", file=sys.stderr)
        return 2
    finally:
        progress.close()
    print(summary(dep, chosen, done, failures, a.task))
    for f in failures[:5]:
        print(f"error: {f.model} on idx {f.idx}: {f.error}", file=sys.stderr)
    if len(failures) > 5:
        print(f"... and {len(failures) - 5} more failed calls (--resume retries them)", file=sys.stderr)
    no_gold = any(q.gold is None for q in chosen) or any(
        json.loads(ln).get("gold") is None for ln in (out / "questions.jsonl").read_text(encoding="utf-8").splitlines()
    )
    recorded = sum(len(done[m]) for m in dep.models)
    if not recorded:
        print(
            f"pyramid record: error: no call succeeded ({len(failures)} failed): nothing to calibrate on; fix the "
            f"cause above and run again with --resume --out {out}",
            file=sys.stderr,
        )
        return 1
    print(next_command(out, dep, costs, no_gold, a.task), file=sys.stderr)
    return 1 if failures else 0


def summary(
    dep: Deployment,
    questions: Sequence[Question],
    done: dict[str, dict[int, dict[str, Any]]],
    failures: Sequence[Failure],
    task: str,
) -> str:
    idxs = [q.idx for q in questions]
    gold = {q.idx: q.gold for q in questions}
    lines = [f"{'model':<40} {'recorded':>9} {'failed':>7} {'accuracy':>9} {'out tok':>8} {'log-probs':>9}"]
    for m in dep.models:
        rows = [done[m][i]["samples"][0] for i in idxs if i in done[m]]
        graded = [grade(done[m][i]["samples"][0]["answer"], gold[i], task) for i in idxs if i in done[m] and gold[i]]
        acc = f"{sum(graded) / len(graded):.3f}" if graded else "n/a"
        toks = f"{sum(r['output_tokens'] or 0 for r in rows) / len(rows):.0f}" if rows else "n/a"
        lp = sum("cum_log_prob" in r for r in rows)
        nfail = sum(f.model == m for f in failures)
        role = " (oracle)" if m == dep.oracle else ""
        lines.append(f"{m + role:<40} {len(rows):>9} {nfail:>7} {acc:>9} {toks:>8} {lp:>9}")
    return "\n".join(lines)
