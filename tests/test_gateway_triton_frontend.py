"""The ``pyramid`` router's config accepts every input Triton's own OpenAI frontend sends a non-vLLM model,
per upstream release, and declares the outputs it reads (deploy/triton_openai_frontend_facts.json: each fact
with its upstream file, tag, commit and line). The rendered config of every CPU profile is held against them,
with the datatype and a shape Triton will accept (with max_batch_size 1, a [1, 1] input needs dims [1] and a
[1, n] input dims [-1]). The router's handling of those inputs runs on a real server in
tests/integration/test_gateway_triton_frontend.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from pyramid_client import wire
from pyramid_deploy.render import render
from pyramid_deploy.trtllm_facts import parse_pbtxt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))  # test_helm imports helm_check from there
FACTS = json.loads((ROOT / "deploy" / "triton_openai_frontend_facts.json").read_text(encoding="utf-8"))
TRITON_TYPES = {"BYTES": "TYPE_STRING", "BOOL": "TYPE_BOOL", "INT32": "TYPE_INT32", "UINT64": "TYPE_UINT64",
                "FP32": "TYPE_FP32", "UINT32": "TYPE_UINT32"}  # fmt: skip
RELEASES = sorted(FACTS["releases"])


@pytest.fixture(scope="module")
def router_config() -> dict:
    """The committed replay repository's router config (tests/test_model_repository.py holds it equal to a
    fresh render)."""
    return parse_pbtxt((ROOT / "model_repository" / "pyramid" / "config.pbtxt").read_text(encoding="utf-8"))


def _tensors(config: dict, kind: str) -> dict[str, dict]:
    return {t["name"][0]: t for t in config[kind]}


def test_every_fact_names_its_upstream_source():
    assert FACTS["source"]["repo"] == "triton-inference-server/server"
    assert FACTS["source"]["file"].endswith("engine/utils/triton.py")
    for tag, rel in FACTS["releases"].items():
        assert tag.startswith("v2.") and len(rel["commit"]) == 40 and rel["function"] and rel["lines"]
        assert {"text_input", "stream", "max_tokens", "temperature"} <= set(rel["inputs"]), tag
        for name, fact in rel["inputs"].items():
            assert isinstance(fact["line"], int) and fact["datatype"] and fact["when"], (tag, name)
            if fact.get("supported") is False:
                assert fact["why"], (tag, name)
        assert "text_output" in rel["outputs_read"], tag


@pytest.mark.parametrize("tag", RELEASES)
def test_the_router_config_accepts_what_the_frontend_sends(router_config, tag):
    rel = FACTS["releases"][tag]
    assert router_config["max_batch_size"] == ["1"]
    declared = _tensors(router_config, "input")
    for name, fact in rel["inputs"].items():
        if fact.get("supported") is False:
            assert name not in declared, f"{tag}: {name} is marked unsupported ({fact['why']}) but declared"
            continue
        assert name in declared, f"{tag}: the frontend sends {name!r} ({fact['when']}); the router config lacks it"
        t = declared[name]
        assert t["data_type"] == [TRITON_TYPES[fact["datatype"]]], (tag, name)
        want_dims = ["-1"] if fact["shape"] == "[1, n]" else ["1"]
        assert t["dims"] == want_dims, (tag, name, t["dims"])
        sent_always = fact["when"].startswith("always")
        assert sent_always or t.get("optional") == ["true"], f"{tag}: {name} is sent only on {fact['when']}"
    # what the frontend always sends must not be required to be anything the router refuses
    assert all(name in wire.ROUTER_INPUTS for name in declared)


@pytest.mark.parametrize("tag", RELEASES)
def test_the_router_config_declares_the_outputs_the_frontend_reads(router_config, tag):
    declared = _tensors(router_config, "output")
    for name, fact in FACTS["releases"][tag]["outputs_read"].items():
        assert name in declared, (tag, name)
        allowed = {TRITON_TYPES[t.strip()] for t in fact["datatype"].split(" or ")}
        assert declared[name]["data_type"][0] in allowed, (tag, name)


def test_a_fresh_render_has_the_same_router_inputs(tmp_path):
    """The template itself, not only the committed rendering (for the llamacpp profile too)."""
    from test_helm import _names
    from test_remote import _artifact

    for spec in ("replay.yaml", "llamacpp.yaml"):
        cal = tmp_path / f"{spec}.json"
        _artifact(_names(ROOT / "deploy" / spec)).save(cal)
        out = render(ROOT / "deploy" / spec, tmp_path / spec, calibration=cal).out
        config = parse_pbtxt((out / "pyramid" / "config.pbtxt").read_text(encoding="utf-8"))
        assert _tensors(config, "input").keys() == wire.ROUTER_INPUTS.keys(), spec
        assert _tensors(config, "output").keys() == wire.ROUTER_OUTPUTS.keys(), spec
