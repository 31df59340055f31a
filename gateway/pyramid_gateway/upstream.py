"""The gateway's side of Triton: one long-lived gRPC channel per purpose, reused by every request.

* The router (``pyramid``) is called through ``pyramid_client.AsyncPyramidClient`` (its public API:
  ``ask`` / ``ask_stream``, typed ``PyramidResult``), which keeps one asyncio gRPC channel.
* Model discovery, readiness and direct engine calls go through one ``tritonclient.grpc.aio``
  client: the engines speak the text API (``text_input`` -> ``text_output``, ``output_tokens``), not
  the router's outputs, so the router client cannot parse them.

Which engines the router uses (its ``agents`` / ``oracle`` parameters) is given (``Deployment``, from
flags or a rendered repository's router config), or else read from the router's model config. The
latter works only where model-config is open: ``make serve`` puts it behind the admin key
(pyramid_ops.access), which the gateway, facing clients, should not hold.

Cancellation: a request task cancelled (client disconnect) cancels its gRPC call; Triton then sees
the request cancelled (the router abandons the route, see README "Cancellation").
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pyramid_client import AsyncPyramidClient, PyramidError
from pyramid_client.types import error_from_message
from pyramid_client.wire import DEFAULT_MAX_TOKENS, NOT_FOUND, UNAVAILABLE, config_parameters, key_headers

TIERS = ("committee", "oracle")


@dataclass(frozen=True)
class Target:
    """What an OpenAI model name calls: the router (optionally forced to a tier) or one engine."""

    name: str
    triton_model: str
    kind: str  # "router" | "engine"
    force_tier: str | None = None
    tier: str | None = None  # an engine's role in the pyramid: committee | oracle
    streams: bool = False  # an engine that accepts stream=true (one response per generated piece)


@dataclass(frozen=True)
class Deployment:
    """The router's engines and its default ``max_tokens`` (for direct engine calls)."""

    committee: tuple[str, ...]
    oracle: str
    default_max_tokens: int = DEFAULT_MAX_TOKENS


def deployment_from_params(params: dict[str, str], router: str) -> Deployment:
    if "agents" not in params or "oracle" not in params:
        raise PyramidError(f"model {router!r} is not a pyramid router (no 'agents' / 'oracle' parameters)", "INTERNAL")
    mt = params.get("default_max_tokens", "")
    agents = tuple(a.strip() for a in params["agents"].split(",") if a.strip())
    return Deployment(agents, params["oracle"], int(mt) if mt.isdigit() else DEFAULT_MAX_TOKENS)


def deployment_from_repository(repository: str | Path, router: str = "pyramid") -> Deployment:
    """The deployment from a rendered model repository's ``<router>/config.pbtxt`` parameters."""
    path = Path(repository) / router / "config.pbtxt"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read the router config {path}: {exc.strerror}") from None
    try:
        return deployment_from_params(config_parameters(text), router)
    except PyramidError as exc:
        raise ValueError(f"{path}: {exc.message}") from None


@dataclass
class Catalog:
    """The models this gateway serves, discovered from the router's config."""

    router: str
    agents: list[str]
    oracle: str
    default_max_tokens: int
    targets: dict[str, Target] = field(default_factory=dict)


@dataclass(frozen=True)
class EngineReply:
    """One engine response (a streaming engine sends several, each a piece of the text)."""

    text: str
    output_tokens: int | None


def _tensor(mod: Any, name: str, value: Any, datatype: str) -> Any:
    t = mod.InferInput(name, [1, 1], datatype)
    if datatype == "BYTES":
        t.set_data_from_numpy(np.array([[value.encode("utf-8")]], dtype=np.object_))
    else:
        dtype = {"INT32": np.int32, "FP32": np.float32, "UINT64": np.uint64, "BOOL": np.bool_}[datatype]
        t.set_data_from_numpy(np.array([[value]], dtype=dtype))
    return t


class Upstream:
    """Triton, as the gateway uses it. ``retries``: how often the router client retries UNAVAILABLE."""

    def __init__(
        self,
        url: str,
        router: str = "pyramid",
        timeout_s: float = 300.0,
        retries: int = 1,
        deployment: Deployment | None = None,
        inference_key: str | None = None,
    ) -> None:
        import grpc
        import tritonclient.grpc as grpcclient
        import tritonclient.grpc.aio as aioclient

        self.url, self.router_name, self.timeout_s = url, router, timeout_s
        self._grpc, self._mod = grpc, grpcclient
        # A server that keys inference (security.inference_key) needs it on every inference call: the router's
        # and the direct engine calls'. Health and metadata stay open (docs/SECURITY.md).
        self._inference_headers = key_headers("grpc", inference_key) if inference_key else None
        self.router = AsyncPyramidClient(
            url, router, timeout_s=timeout_s, retries=retries, backoff_s=0.1, inference_key=inference_key
        )
        self._triton = aioclient.InferenceServerClient(url)
        self._catalog: Catalog | None = None
        self.deployment = deployment
        self._lock = asyncio.Lock()

    async def close(self) -> None:
        await self.router.close()
        await self._triton.close()

    async def _call(self, what: str, coro: Any) -> Any:
        try:
            return await asyncio.wait_for(coro, 10.0)
        except self._mod.InferenceServerException as exc:
            status = str(exc.status() or "").replace("StatusCode.", "")
            err = error_from_message(f"{what}: {exc.message()}", status or UNAVAILABLE)
            # A model of this deployment that Triton does not know (not loaded yet, or unloaded): not ready (503).
            raise (PyramidError(err.message, UNAVAILABLE) if err.code == NOT_FOUND else err) from None
        except asyncio.TimeoutError:
            raise PyramidError(f"{what}: Triton at {self.url} did not answer within 10 s", "UNAVAILABLE") from None

    async def catalog(self) -> Catalog:
        """The served models, discovered once (retried on the next request until it succeeds)."""
        if self._catalog is not None:
            return self._catalog
        async with self._lock:
            if self._catalog is None:
                self._catalog = await self._discover()
        return self._catalog

    async def _discover(self) -> Catalog:
        name = self.router_name
        d = self.deployment
        if d is None:
            try:
                config = await self._call(f"model {name!r}", self._triton.get_model_config(name, as_json=True))
            except PyramidError as exc:
                if "restricted" not in exc.message.lower():
                    raise
                raise PyramidError(
                    f"{exc.message}. The router's model config is behind the admin key: give the gateway its "
                    "engines instead (--model-repository DIR, or --committee A,B,C --oracle O)",
                    "INTERNAL",
                ) from None
            d = deployment_from_params(config_parameters(config["config"]), name)
        cat = Catalog(name, list(d.committee), d.oracle, d.default_max_tokens)
        cat.targets[name] = Target(name, name, "router")
        for tier in TIERS:
            cat.targets[f"{name}-{tier}"] = Target(f"{name}-{tier}", name, "router", force_tier=tier)
        for engine in [*d.committee, d.oracle]:
            # Model metadata (open, unlike model config): its inputs say whether it can stream pieces.
            meta = await self._call(f"model {engine!r}", self._triton.get_model_metadata(engine, as_json=True))
            inputs = {i["name"] for i in meta.get("inputs", [])}
            tier = "oracle" if engine == d.oracle else "committee"
            cat.targets[engine] = Target(engine, engine, "engine", tier=tier, streams="stream" in inputs)
        return cat

    async def ready(self) -> tuple[bool, str]:
        """(ready, why not): the server and the router model are ready."""
        try:
            if not await self._call("server", self._triton.is_server_ready()):
                return False, f"Triton at {self.url} is not ready"
            if not await self._call(f"model {self.router_name!r}", self._triton.is_model_ready(self.router_name)):
                return False, f"model {self.router_name!r} is not ready"
        except PyramidError as exc:
            return False, exc.message
        return True, ""

    async def engine_stream(
        self,
        engine: str,
        text: str,
        max_tokens: int,
        temperature: float | None,
        seed: int | None,
        stream: bool,
        request_id: str | None = None,
    ) -> AsyncIterator[EngineReply]:
        """One direct engine call over Triton's gRPC stream (works for decoupled and plain models);
        each response as it arrives. Raises PyramidError; closing the iterator early cancels the call."""
        mod = self._mod
        inputs = [_tensor(mod, "text_input", text, "BYTES"), _tensor(mod, "max_tokens", max_tokens, "INT32")]
        if temperature is not None:
            inputs.append(_tensor(mod, "temperature", temperature, "FP32"))
        if seed is not None:
            inputs.append(_tensor(mod, "seed", seed, "UINT64"))
        if stream:
            inputs.append(_tensor(mod, "stream", True, "BOOL"))
        request = {"model_name": engine, "inputs": inputs, "request_id": request_id or uuid.uuid4().hex}

        async def requests():
            yield request

        it = self._triton.stream_infer(requests(), stream_timeout=self.timeout_s, headers=self._inference_headers)
        ended = False
        try:
            while True:
                try:
                    result, error = await it.__anext__()
                except StopAsyncIteration:
                    ended = True
                    return
                except self._grpc.RpcError as exc:
                    ended = True
                    code = exc.code().name if hasattr(exc, "code") else "UNAVAILABLE"
                    details = exc.details() if hasattr(exc, "details") else str(exc)
                    raise error_from_message(details or code, code) from None
                if error is not None:
                    ended = True
                    raise error_from_message(str(error.message()))
                if not result.get_response().outputs:
                    continue  # an empty FINAL response
                out = result.as_numpy("text_output")
                tokens = result.as_numpy("output_tokens")
                piece = out.reshape(-1)[0] if out is not None and out.size else b""
                n = int(tokens.reshape(-1)[0]) if tokens is not None and tokens.size else -1
                yield EngineReply(
                    piece.decode("utf-8", errors="replace") if isinstance(piece, bytes) else str(piece),
                    n if n >= 0 else None,
                )
        finally:
            if not ended:
                it.cancel()
