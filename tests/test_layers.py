"""The packages' layers, checked statically (imports parsed with ``ast``, nothing imported):

- ``pyramid_moa`` (the router library) imports none of the serving side: not ``pyramid_triton``,
  ``pyramid_client``, ``pyramid_cli`` or the other packages;
- ``pyramid_client`` imports neither the router library nor the server (``pip install ./client``
  gives a working client on its own), and its third-party imports are its declared dependencies;
- ``pyramid_triton`` (the model side: what Triton's Python stub imports) may import the client (its wire
  format) but none of the packages that run elsewhere: not ``pyramid_deploy``, ``pyramid_ops``,
  ``pyramid_bench`` or the command;
- ``pyramid_deploy`` (building a model repository) imports the model side, not operations, benchmarks or
  the command;
- ``pyramid_ops`` (server, launcher, supervisor, access) imports the model side and ``pyramid_deploy``, and
  of the gateway only its process helper (``pyramid_gateway.process``: the server launches both);
- ``pyramid_bench`` (the load-test harness, the floor, the soak) imports anything but the command;
- ``pyramid_cli`` (the ``pyramid`` command) is the one place that puts all sides together;

no module imports itself through others (an import cycle), and the wire format the client and the server
share agrees with the rendered models' configs."""

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
    "pyramid_deploy": ROOT / "python_backend" / "pyramid_deploy",
    "pyramid_ops": ROOT / "python_backend" / "pyramid_ops",
    "pyramid_bench": ROOT / "python_backend" / "pyramid_bench",
    "pyramid_cli": ROOT / "python_backend" / "pyramid_cli",
    "pyramid_client": ROOT / "client" / "pyramid_client",
    "pyramid_gateway": ROOT / "gateway" / "pyramid_gateway",
}
SERVING = {"pyramid_triton", "pyramid_deploy", "pyramid_ops", "pyramid_bench", "pyramid_cli", "pyramid_gateway"}
FORBIDDEN = {
    "pyramid_moa": SERVING | {"pyramid_client"},
    "pyramid_client": SERVING | {"pyramid_moa"},
    "pyramid_triton": {"pyramid_deploy", "pyramid_ops", "pyramid_bench", "pyramid_cli", "pyramid_gateway"},
    "pyramid_deploy": {"pyramid_ops", "pyramid_bench", "pyramid_cli", "pyramid_gateway"},
    "pyramid_ops": {"pyramid_bench", "pyramid_cli", "pyramid_gateway"},
    "pyramid_bench": {"pyramid_cli"},
    "pyramid_cli": set(),
}
# Single modules allowed across a forbidden line: the server (pyramid_ops.server) starts the OpenAI gateway
# beside tritonserver through the gateway's own process helper.
ALLOWED = {"pyramid_ops": {"pyramid_gateway.process"}}
# import name -> distribution, for the client's third-party imports
DISTRIBUTIONS = {"tritonclient": "tritonclient", "grpc": "grpcio", "numpy": "numpy"}


def imports(package: Path, full: bool = False) -> dict[str, set[str]]:
    """Top-level module (``full``: the module as named) -> the files (relative to ``package``) that import
    it, lazily or not."""
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
                found.setdefault(name if full else name.split(".")[0], set()).add(str(path.relative_to(package)))
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layers_point_one_way(package):
    got = imports(PACKAGES[package], full=True)
    allowed = ALLOWED.get(package, set())
    wrong = {m: sorted(files) for m, files in got.items() if m.split(".")[0] in FORBIDDEN[package] and m not in allowed}
    assert not wrong, f"{package} imports {wrong}"


def test_the_stub_side_imports_only_the_model_side():
    """What a rendered model.py imports (deploy/templates/*/model.py, through its python_path) is the model
    side, or, for the benchmark floor, the bench package: never the repository builder or operations."""
    for template in sorted((ROOT / "deploy" / "templates").glob("*/model.py")):
        got = {m.split(".")[0] for m in imports(template.parent)} & set(PACKAGES)
        allowed = {"pyramid_bench"} if template.parent.name == "floor" else {"pyramid_triton"}
        assert got <= allowed, f"{template.relative_to(ROOT)} imports {sorted(got)}"
    assert not set(ALLOWED["pyramid_ops"]) - set(imports(PACKAGES["pyramid_ops"], full=True)), "a stale allowance"


# --- import cycles among modules -------------------------------------------------------------------------


def module_graph(roots: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the modules of ``roots``' packages it imports. Every import statement counts, at the top of
    a module or inside a function (a lazy import that closes a cycle only moves it to call time). ``from P
    import x`` is an edge to the submodule ``P.x`` where there is one, else to ``P``. The implicit import of
    a module's parent packages is not an edge: Python runs ``P/__init__.py`` before ``P.x`` whoever imports
    it, and a package that gathers its submodules (``pyramid_cli``) is not a cycle for that."""
    files: dict[str, Path] = {}
    for root in roots.values():
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root.parent).with_suffix("").parts)
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def known(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        edges: set[str | None] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                edges |= {known(a.name) for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                source = ".".join(base + ([node.module] if node.module else []))
                for a in node.names:
                    edges.add(f"{source}.{a.name}" if f"{source}.{a.name}" in files else known(source))
        graph[module] = {e for e in edges if e and e != module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycles_among_modules():
    graph = module_graph(PACKAGES)
    assert {"pyramid_moa.features", "pyramid_triton.bls", "pyramid_ops.server"} <= set(graph)
    assert "pyramid_moa.semantic" in graph["pyramid_moa.features"]  # features registers semantic's set
    assert not cycles(graph), cycles(graph)


def test_the_cycle_finder_finds_one_through_a_lazy_import(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from . import a\n")
    (pkg / "a.py").write_text("from .b import f\n")
    (pkg / "b.py").write_text("def f():\n    from pkg import c\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    (pkg / "d.py").write_text("from pkg import b\n")
    assert cycles(module_graph({"pkg": pkg})) == [["pkg.a", "pkg.b", "pkg.c"]]


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
    """The rendered router config (the template's routing inputs are rendered from ``wire.REQUEST_OPTIONS``;
    tests/test_model_repository.py checks that model_repository/ is a fresh rendering)."""
    from pyramid_client import wire

    config = (ROOT / "model_repository" / "pyramid" / "config.pbtxt").read_text(encoding="utf-8")
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
