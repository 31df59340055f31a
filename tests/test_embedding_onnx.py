"""all-MiniLM-L6-v2 on ONNX Runtime (pyramid_moa.embedding.OnnxMiniLMEmbedder): the graph exported from the
weights without torch gives the numpy reference's vectors; the export is cached; the backend is chosen
as documented; a committee stage's answers reach the embedder in one call (routing.route_async's on_stage)."""

from __future__ import annotations

import asyncio
import os

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from pyramid_moa import embedding  # noqa: E402
from pyramid_moa.embedding import (  # noqa: E402
    MAX_TOKENS,
    EmbedderError,
    MiniLMEmbedder,
    OnnxMiniLMEmbedder,
    backend_name,
    load_embedder,
    onnx_model_path,
    ort_threads,
)

TEXTS = [
    "The capital of France is Paris.",
    "Paris is France's capital city.",
    "",
    "a b",
    "Café déjà vu — naïve résumé; 東京 is Tokyo. Ünïcödé ﬁ ligature, emoji 🙂 and ℌ𝔢𝔩𝔩𝔬.",
    "Rayleigh scattering makes short (blue) wavelengths scatter more than red ones!",
    " ".join(f"word{i} and some filler text" for i in range(200)),  # far over 256 tokens: cut
    "Janet’s ducks lay 16 eggs per day. She eats three for breakfast... $18 #### 18",
]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    cache = tmp_path_factory.mktemp("onnx")
    return MiniLMEmbedder(), OnnxMiniLMEmbedder(cache_dir=cache, threads=1), cache


def test_onnx_gives_the_numpy_embedders_vectors(models):
    ref, onnx_model, _ = models
    assert len(ref.tokenizer.encode(TEXTS[6])) == MAX_TOKENS  # the long text is really cut
    want = ref.embed(TEXTS)
    for batch in (1, 3, 16):  # one text a run; padded batches (lengths differ a lot)
        got = onnx_model.embed(TEXTS, batch=batch)
        assert got.shape == (len(TEXTS), 384) and got.dtype == np.float32
        assert np.abs(got - want).max() <= 1e-5, batch
    np.testing.assert_allclose(np.linalg.norm(onnx_model.embed(TEXTS), axis=1), 1.0, atol=1e-5)
    # Padding does not leak: a short text in a batch with a long one is the short text alone.
    np.testing.assert_allclose(onnx_model.embed(["a b", TEXTS[6]], batch=2)[0], ref.embed(["a b"])[0], atol=1e-5)


def test_the_export_is_cached_and_written_whole(models, monkeypatch):
    _, onnx_model, cache = models
    path = onnx_model.model_path
    assert path.parent == cache and path.name.startswith("all-MiniLM-L6-v2-")
    assert path.name.endswith(f"-v{embedding.ONNX_EXPORT_VERSION}.onnx")
    assert [p.name for p in cache.iterdir()] == [path.name]  # no temporary file left behind
    mtime = path.stat().st_mtime_ns

    def no_export(_m):
        raise AssertionError("exported again")

    monkeypatch.setattr(embedding, "build_onnx_model", no_export)
    assert onnx_model_path(cache_dir=cache) == path and path.stat().st_mtime_ns == mtime
    monkeypatch.setenv("PYRAMID_EMBEDDER_ONNX_DIR", str(cache))
    assert embedding.onnx_cache_dir() == cache
    assert onnx_model_path() == path


def test_an_unwritable_cache_builds_the_graph_in_memory(models, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")  # the cache "directory" is a file: mkdir fails
    m = OnnxMiniLMEmbedder(cache_dir=blocker / "onnx", threads=1)
    assert m.model_path is None
    np.testing.assert_array_equal(m.embed(TEXTS[:3]), models[1].embed(TEXTS[:3]))


def test_the_exported_graph_is_plain_onnx(models):
    import onnx

    m = onnx.load(str(models[1].model_path))
    assert m.ir_version == embedding.ONNX_IR_VERSION
    assert [(o.domain, o.version) for o in m.opset_import] == [("", embedding.ONNX_OPSET)]
    assert [i.name for i in m.graph.input] == list(embedding.ONNX_INPUTS)
    assert [o.name for o in m.graph.output] == [embedding.ONNX_OUTPUT]


def test_backend_choice(monkeypatch):
    monkeypatch.delenv("PYRAMID_EMBEDDER_BACKEND", raising=False)
    assert backend_name() == "onnx"  # onnxruntime is installed here
    monkeypatch.setenv("PYRAMID_EMBEDDER_BACKEND", "numpy")
    assert backend_name() == "numpy" and backend_name("onnx") == "onnx"
    assert type(load_embedder()) is MiniLMEmbedder
    with pytest.raises(EmbedderError, match="unknown embedder backend 'torch'"):
        backend_name("torch")


def test_ort_threads_follow_the_affinity_or_the_environment(monkeypatch):
    monkeypatch.delenv("PYRAMID_EMBEDDER_THREADS", raising=False)
    n = ort_threads()
    assert 1 <= n <= min(len(os.sched_getaffinity(0)), embedding._MAX_ORT_THREADS)
    monkeypatch.setenv("PYRAMID_EMBEDDER_THREADS", "3")
    assert ort_threads() == 3


def test_route_async_hands_each_committee_stage_to_on_stage_once():
    """The semantic task's stage: all the stage's outputs reach on_stage together, before the decision,
    never the oracle's; what on_stage returns is what the decision sees."""
    from pyramid_moa.calibration import LogisticCalibrator
    from pyramid_moa.features import AgentOutput, make_feature_set
    from pyramid_moa.router import Router, Stage
    from pyramid_triton.routing import route_async

    agents = ["a", "b", "c"]
    fs = make_feature_set("agreement", agents)

    seen: list[list[str]] = []

    async def call(agent):
        return AgentOutput(agent, f"{agent} says 4", "4", 3)

    async def on_stage(outs):
        seen.append([o.agent for o in outs])
        return [AgentOutput(o.agent, o.text, "7", o.output_tokens) for o in outs]

    for bias, escalated in ((10.0, False), (-10.0, True)):  # P = sigmoid(bias): accept, or escalate
        seen.clear()
        router = Router([Stage(agents, fs, LogisticCalibrator([0.0] * len(fs.names), bias), 0.5)], oracle="o")
        routed = asyncio.run(route_async(router, "q", call, on_stage=on_stage))
        assert seen == [agents] and routed.result.escalated is escalated
        if not escalated:
            assert routed.result.answer == "7"  # the decision saw on_stage's outputs


def test_execution_providers_for_a_device():
    """cpu: the CPU's; gpu: CUDA on the instance's GPU first, then the CPU; a GPU asked of an onnxruntime
    without CUDA is an error naming the fix, never a silent CPU run."""
    from pyramid_moa.embedding import EmbedderError, load_embedder, ort_providers

    assert ort_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    got = ort_providers(["CUDAExecutionProvider", "CPUExecutionProvider"], "gpu", 2)
    assert got == [("CUDAExecutionProvider", {"device_id": 2}), "CPUExecutionProvider"]
    with pytest.raises(
        EmbedderError, match=r"no CUDAExecutionProvider \(it has CPUExecutionProvider\); install onnxruntime-gpu"
    ):
        ort_providers(["CPUExecutionProvider"], "gpu")
    with pytest.raises(EmbedderError, match="unknown embedder device 'tpu'"):
        ort_providers(["CPUExecutionProvider"], "tpu")
    with pytest.raises(EmbedderError, match="the numpy embedder runs on the CPU only"):
        load_embedder(backend="numpy", device="gpu")
