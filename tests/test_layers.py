"""The packages' layers, checked statically (imports parsed with ``ast``, nothing imported):

- ``pyramid_moa`` (the router library) imports none of the serving side: not ``pyramid_triton``,
  ``pyramid_client`` or ``pyramid_cli``;
- ``pyramid_client`` imports neither the router library nor the server (``pip install ./client``
  gives a working client on its own), and its third-party imports are its declared dependencies;
- ``pyramid_triton`` (the server) may import the client (its wire format) but not the command;
- ``pyramid_cli`` (the ``pyramid`` command) is the one place that puts both sides together;

and the wire format the client and the server share agrees with the rendered models' configs."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {
    "pyramid_moa": ROOT / "python_backend" / "pyramid_moa",
    "pyramid_triton": ROOT / "python_backend" / "pyramid_triton",
    "pyramid_cli": ROOT / "python_backend" / "pyramid_cli",
    "pyramid_client": ROOT / "client" / "pyramid_client",
}
FORBIDDEN = {
    "pyramid_moa": {"pyramid_triton", "pyramid_client", "pyramid_cli"},
    "pyramid_client": {"pyramid_moa", "pyramid_triton", "pyramid_cli"},
    "pyramid_triton": {"pyramid_cli"},
    "pyramid_cli": set(),
}
# import name -> distribution, for the client's third-party imports
DISTRIBUTIONS = {"tritonclient": "tritonclient", "grpc": "grpcio", "numpy": "numpy"}


def imports(package: Path) -> dict[str, set[str]]:
    """Top-level module -> the files (relative to ``package``) that import it, lazily or not."""
    found: dict[str, set[str]] = {}
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(package)))
    return found


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_layers_point_one_way(package):
    got = imports(PACKAGES[package])
    wrong = {m: sorted(files) for m, files in got.items() if m in FORBIDDEN[package]}
    assert not wrong, f"{package} imports {wrong}"


def test_the_client_imports_only_what_its_distribution_declares():
    meta = tomllib.loads((ROOT / "client" / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = {re.split(r"[\[<>=!~ ;]", d, maxsplit=1)[0].lower() for d in meta["dependencies"]}
    third_party = {
        m for m in imports(PACKAGES["pyramid_client"]) if m not in sys.stdlib_module_names and m != "pyramid_client"
    }
    assert third_party <= set(DISTRIBUTIONS), f"undeclared imports: {sorted(third_party - set(DISTRIBUTIONS))}"
    assert {DISTRIBUTIONS[m] for m in third_party} <= declared
    assert not {"scikit-learn", "scipy", "matplotlib", "pyyaml"} & declared


def test_the_project_ships_the_command_and_leaves_the_client_to_its_own_distribution():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert meta["project"]["scripts"]["pyramid"] == "pyramid_cli:main"
    assert "pyramid-client" in meta["project"]["dependencies"]
    assert "pyramid_client" not in meta["tool"]["setuptools"]["packages"]


# --- the wire format and the models' configs -------------------------------------------------------


def _tensors(config: str, section: str) -> dict[str, str]:
    """{name: datatype} of a config.pbtxt template's ``input`` or ``output`` block (TYPE_STRING: BYTES)."""
    block = re.search(rf"^{section} \[(.*?)^\]", config, re.S | re.M).group(1)
    return {n: t.replace("STRING", "BYTES") for n, t in re.findall(r'name: "(\w+)" data_type: TYPE_(\w+)', block)}


def test_the_router_config_declares_the_wire_format():
    from pyramid_client import wire

    config = (ROOT / "deploy" / "templates" / "pyramid" / "config.pbtxt").read_text(encoding="utf-8")
    assert _tensors(config, "input") == wire.ROUTER_INPUTS
    assert _tensors(config, "output") == wire.ROUTER_OUTPUTS


def test_the_replay_engine_config_declares_the_text_api():
    from pyramid_client import wire

    config = (ROOT / "deploy" / "templates" / "replay" / "config.pbtxt").read_text(encoding="utf-8")
    assert _tensors(config, "input") == wire.ENGINE_INPUTS
    assert _tensors(config, "output") == {**wire.ENGINE_OUTPUTS, wire.PARSED_ANSWER_OUTPUT: wire.BYTES}


def test_what_the_server_writes_the_client_reads():
    """A router response through the server's encoder (``tensors``) and the client's parser."""
    import math

    import fake_pb_utils as pb

    from pyramid_client.types import result_from_outputs
    from pyramid_triton import tensors
    from pyramid_triton.protocol import PyramidResponse

    resp = PyramidResponse(
        answer="18", tier="oracle", escalated=True, confidence=0.25, agreement=0.5,
        agent_answers={"a": "18", "b": None}, failed_agents=["b"], calls=["a", "b", "o"], degraded=True,
        cost=math.nan, costs={"usd": 1.25, "flops": None}, provisional=False, tokens={"a": [10, 20]},
        text_output="The answer is 18.", latency_ms={"stage0": 1.5},
    )  # fmt: skip
    outputs = {t.name(): t.as_numpy().reshape(-1)[0] for t in tensors.pyramid_response_tensors(pb, resp)}
    r = result_from_outputs(outputs, "rid", 0.1)
    for name in ("answer", "tier", "escalated", "agreement", "agent_answers", "failed_agents", "calls", "degraded"):
        assert getattr(r, name) == getattr(resp, name), name
    assert r.confidence == pytest.approx(0.25) and r.cost is None and r.costs == resp.costs
    assert (r.text, r.server_latency_ms, r.tokens, r.request_id) == (
        resp.text_output,
        resp.latency_ms,
        resp.tokens,
        "rid",
    )


def test_the_command_loads_the_client_only_for_its_deployment_subcommands():
    code = (
        "import sys, pyramid_cli\n"
        "try:\n    pyramid_cli.main(['calibrate', '--help'])\nexcept SystemExit:\n    pass\n"
        "print('pyramid_client' in sys.modules, 'tritonclient' in sys.modules)"
    )
    env = {"PYTHONPATH": f"{ROOT / 'python_backend'}:{ROOT / 'client'}"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "False False"
