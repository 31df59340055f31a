"""docs/GPU.md's walk-through ("From checkpoints to a serving router") held against the spec it uses.

Its commands are read out of the document and checked against that spec, or run against it where they can run
here: step 1 (the checkpoint download, with a stand-in ``hf``) must fetch every checkpoint the spec's engines
are built from; step 4 must record and calibrate every agent the spec deploys (a calibration that asks an
engine at no stage is refused by the renderer: tests/test_gpu_render.py); the render of step 5 runs through
scripts/serve_gpu.sh, refusing a transfer that leaves the 32B unused unless ALLOW_UNUSED_ENGINES=1. So the
document and the specs cannot drift apart unnoticed (issue 23: the spec gained a 32B middle tier the
walk-through neither downloaded nor calibrated).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from test_build_engines import fake_hf  # tests/ is on sys.path (rootdir conftest)
from test_remote import _artifact

from pyramid_deploy.render import load_trtllm_models

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "GPU.md"
WALKTHROUGH = "## From checkpoints to a serving router"
SEPARATORS = {";", "&", "&&", "|", "||"}


@dataclass
class Command:
    argv: list[str]
    background: bool  # ended by '&'

    def option(self, name: str) -> str:
        """The value of ``--name VALUE`` (an error naming the command if it is not there)."""
        assert name in self.argv, f"{name} missing in: {shlex.join(self.argv)}"
        return self.argv[self.argv.index(name) + 1]


def _code_block(heading: str, text: str | None = None) -> str:
    """The first ```bash block after ``heading`` in docs/GPU.md (at the start of a line: not a quoted one)."""
    text = DOC.read_text(encoding="utf-8") if text is None else text
    section = text[text.index(heading) :]
    start = section.index("\n```bash\n") + len("\n```bash\n")
    return section[start : section.index("\n```", start)]


def commands(block: str) -> list[Command]:
    """The shell commands of a code block: continuation lines joined, comments dropped, split at ; & && | ||."""
    out: list[Command] = []
    for line in block.replace("\\\n", " ").splitlines():
        lex = shlex.shlex(line, posix=True, punctuation_chars=True)
        lex.whitespace_split = True
        argv: list[str] = []
        for tok in lex:
            if tok in SEPARATORS:
                if argv:
                    out.append(Command(argv, tok == "&"))
                argv = []
            else:
                argv.append(tok)
        if argv:
            out.append(Command(argv, False))
    return out


def walkthrough() -> list[Command]:
    return commands(_code_block(WALKTHROUGH))


def _assignments(argv: list[str]) -> dict[str, str]:
    return dict(a.split("=", 1) for a in argv if "=" in a and not a.startswith("-"))


def spec_of(cmds: list[Command]) -> Path:
    """The one spec the walk-through uses: every GPU_SPEC= and the download command must name the same."""
    specs = {_assignments(c.argv)["GPU_SPEC"] for c in cmds if "GPU_SPEC" in _assignments(c.argv)}
    specs |= {
        a for c in cmds if any(x.endswith("build_engines.py") for x in c.argv) for a in c.argv if a.endswith(".yaml")
    }
    assert len(specs) == 1, f"the walk-through names several specs: {sorted(specs)}"
    return ROOT / specs.pop()


def _pyramid(cmds: list[Command], sub: str) -> list[Command]:
    return [c for c in cmds if c.argv[0].endswith("bin/pyramid") and c.argv[1] == sub]


def _spec_models(spec: Path) -> tuple[list[dict], dict]:
    """The spec's agents and oracle entries as written (not through the renderer, which the checks rely on)."""
    d = yaml.safe_load(spec.read_text(encoding="utf-8"))
    return d["agents"], d["oracle"]


def test_the_walkthrough_uses_one_spec_and_parses():
    cmds = walkthrough()
    spec = spec_of(cmds)
    assert spec.is_file(), spec
    assert len(cmds) > 10 and _pyramid(cmds, "calibrate"), [shlex.join(c.argv) for c in cmds]


def test_step_1_downloads_every_checkpoint_the_spec_lists(tmp_path, monkeypatch):
    """Step 1 run as written (its interpreter this one, the spec a copy whose checkpoints go under tmp_path),
    with a stand-in ``hf``: it fetches each model the spec lists (agents and oracle, by hf_model), once,
    into the directory the engine build reads it from."""
    cmds = walkthrough()
    spec = spec_of(cmds)
    (step1,) = [c for c in cmds if "--download-only" in c.argv]
    log = fake_hf(tmp_path, monkeypatch)
    d = yaml.safe_load(spec.read_text(encoding="utf-8"))
    d["engine"].update(checkpoint_root=str(tmp_path / "models"), engine_root=str(tmp_path / "engines"))
    copy = tmp_path / spec.name
    copy.write_text(yaml.safe_dump(d, sort_keys=False), encoding="utf-8")
    assert step1.argv[0] == ".venv/bin/python", step1.argv
    argv = [sys.executable, *[str(copy) if ROOT / a == spec else a for a in step1.argv[1:]]]
    r = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, env=os.environ.copy(), timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    fetched = [line.split() for line in log.read_text().splitlines()]
    agents, oracle = _spec_models(spec)
    listed = {e["hf_model"] for e in [*agents, oracle] if "hf_model" in e}
    assert sorted(f[2] for f in fetched) == sorted(listed), "step 1 does not fetch exactly the spec's models"
    models, _ = load_trtllm_models(copy)
    assert {(f[2], f[4]) for f in fetched} == {(m.hf_model, str(m.checkpoint)) for m in models}


def test_step_4_records_and_calibrates_every_engine_the_spec_deploys():
    """The committee recorded, calibrated and evaluated is every agent of the spec (the 32B middle tier
    included: the schedule search, not the walk-through, decides whether it is asked), the oracle its oracle;
    each step reads what the one before wrote, and step 5 serves that calibration."""
    cmds = walkthrough()
    agents, oracle = _spec_models(spec_of(cmds))
    names = [a["name"] for a in agents]
    (record,) = _pyramid(cmds, "record")
    (calibrate,) = _pyramid(cmds, "calibrate")
    (evaluate,) = _pyramid(cmds, "evaluate")
    for c in (record, calibrate, evaluate):
        assert c.option("--committee").split(",") == names, shlex.join(c.argv)
        assert c.option("--oracle") == oracle["name"], shlex.join(c.argv)
    assert calibrate.option("--traces") == record.option("--out") == evaluate.option("--traces")
    assert evaluate.option("--calibration") == calibrate.option("--out")
    served = [_assignments(c.argv).get("GPU_CALIBRATION") for c in cmds if c.argv[:2] == ["make", "serve-gpu"]]
    assert served == [None, calibrate.option("--out")]  # step 3: engines only; step 5: the calibration


def test_servers_run_as_background_jobs_only_through_the_container_script():
    """Step 3 and 5 start ``make serve-gpu ... &``: the container script must then not ask for a terminal
    (tests/test_shell_scripts.py runs it as a background job on a pseudo-terminal)."""
    cmds = walkthrough()
    background = [c.argv[:2] for c in cmds if c.background]
    assert background and all(b == ["make", "serve-gpu"] for b in background), background
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    recipe = makefile[makefile.index("\nserve-gpu:") + 1 :].split("\n")[1]
    assert "scripts/trtllm_container.sh" in recipe, recipe


def _fake_container(tmp_path: Path) -> dict[str, str]:
    """What serve_gpu.sh needs to get as far as starting the server: a tritonserver beside a tensorrtllm
    backend directory, and an mpirun that records its command line instead of running it."""
    bin_dir = tmp_path / "tritonserver" / "bin"
    (tmp_path / "tritonserver" / "backends" / "tensorrtllm").mkdir(parents=True)
    bin_dir.mkdir(parents=True)
    (bin_dir / "tritonserver").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "tritonserver").chmod(0o755)
    mpirun = tmp_path / "mpirun"
    mpirun.write_text(f'#!/bin/sh\necho "$@" > {tmp_path / "mpirun.args"}\n')
    mpirun.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("ALLOW_UNUSED_ENGINES", "GPU_CALIBRATION")}
    env.update(TRITONSERVER=str(bin_dir / "tritonserver"), MPIRUN=str(mpirun), PYTHON=sys.executable)
    return env


def test_serving_a_transfer_that_leaves_an_engine_unused_needs_the_override(tmp_path):
    """The stand-in of the docs (a calibration over three agents) served with gpu-8x80gb through
    scripts/serve_gpu.sh, as make serve-gpu runs it in the container: refused, naming the 32B; served with
    ALLOW_UNUSED_ENGINES=1, the variable the docs and the error message give."""
    spec = spec_of(walkthrough())
    agents, oracle = _spec_models(spec)
    transfer = tmp_path / "transfer.json"
    _artifact([*[a["name"] for a in agents][:3], oracle["name"]]).save(transfer)
    env = _fake_container(tmp_path)
    env.update(GPU_CALIBRATION=str(transfer), GPU_REPO=str(tmp_path / "repo"))
    serve = [str(ROOT / "scripts" / "serve_gpu.sh"), str(spec)]
    r = subprocess.run(serve, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and not (tmp_path / "mpirun.args").exists()
    assert "qwen2.5-32b-instruct (GPU 3" in r.stderr and "ALLOW_UNUSED_ENGINES=1" in r.stderr, r.stderr
    r = subprocess.run(serve, cwd=ROOT, env={**env, "ALLOW_UNUSED_ENGINES": "1"}, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    started = (tmp_path / "mpirun.args").read_text()
    assert f"--model-repository={tmp_path / 'repo'}" in started
    assert (tmp_path / "repo" / "qwen2.5-32b-instruct_tensorrt_llm" / "config.pbtxt").is_file()
    assert "ALLOW_UNUSED_ENGINES=1 make serve-gpu" in DOC.read_text(encoding="utf-8")  # what the docs say to run


@pytest.mark.parametrize(
    "step",
    [
        "pip install /opt/tritonserver/python/triton*.whl",  # the tritonserver / tritonfrontend bindings
        "pip install -r /tmp/triton-server/python/openai/requirements.txt",
    ],
)
def test_the_openai_frontend_is_installed_before_it_runs(step):
    """Upstream (server v2.59.0 python/openai/README.md, "TensorRT-LLM") installs the bindings and the
    frontend's requirements before ``openai_frontend/main.py``; the docs' block does the same, in that order."""
    cmds = commands(_code_block("**Triton's own OpenAI frontend**"))
    lines = [" ".join(c.argv) for c in cmds]
    run = next(i for i, c in enumerate(cmds) if any(a.endswith("openai_frontend/main.py") for a in c.argv))
    assert step in lines[:run], lines
    clone = next(c for c in cmds if c.argv[:2] == ["git", "clone"])
    assert clone.option("-b") == "v2.59.0" and "/tmp/triton-server/python/openai/openai_frontend/main.py" in lines[run]
