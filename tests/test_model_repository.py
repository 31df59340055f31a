"""The committed top-level model_repository/: what `make render` makes of deploy/replay.yaml, with
paths relative to each model, and its calibration what `make calibrate-replay` fits here."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from approx import assert_tree_close

from pyramid_deploy.render import render
from pyramid_triton.hot_reload import DEPLOYED_FILE

ROOT = Path(__file__).resolve().parents[1]
REPO = ROOT / "model_repository"
SPEC = ROOT / "deploy" / "replay.yaml"
CALIBRATION = ROOT / "deploy" / "replay.calibration.json"


def _files(root: Path) -> dict[str, bytes]:
    """The rendered files; a calibration deployed into the repository is an operator's state (git-ignored)."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts and not p.name.startswith(DEPLOYED_FILE)
    }


def test_committed_repository_equals_a_fresh_render():
    # Rendered beside the committed one (the same depth under the checkout, so the same relative paths).
    with tempfile.TemporaryDirectory(dir=ROOT, prefix=".model_repository-check-") as tmp:
        want = _files(render(SPEC, tmp, relative=True).out)
    got = _files(REPO)
    assert sorted(got) == sorted(want), "files differ: run 'make render' and commit model_repository/"
    stale = [name for name in want if got[name] != want[name]]
    assert not stale, f"model_repository/ differs from a fresh render in {stale}: run 'make render' and commit it"


def test_committed_repository_holds_no_absolute_path():
    for name, data in _files(REPO).items():
        text = data.decode("utf-8")
        assert str(ROOT) not in text, f"{name} names this checkout's absolute path"
        assert '"/' not in text.replace('"/v2', ""), f"{name} holds an absolute path"
    cfg = (REPO / "pyramid" / "config.pbtxt").read_text()
    assert 'key: "python_path" value: { string_value: "../../python_backend" }' in cfg
    # every relative path a model reads resolves, from the model's own directory, to a real place
    for config in REPO.glob("*/config.pbtxt"):
        for key in ("python_path", "traces"):
            marker = f'key: "{key}" value: {{ string_value: "'
            for line in config.read_text().splitlines():
                if marker in line:
                    value = line.split(marker, 1)[1].split('"', 1)[0]
                    assert (config.parent / value).resolve().exists(), f"{config}: {key} {value!r} does not resolve"


def test_spec_names_the_committed_calibration_and_the_router_serves_a_copy():
    assert json.loads((REPO / "pyramid" / "calibration.json").read_text()) == json.loads(CALIBRATION.read_text())


@pytest.mark.parametrize("flag", ["--relative", None])
def test_render_writes_absolute_paths_unless_asked(tmp_path, flag):
    out = tmp_path / "repo"
    cmd = [sys.executable, str(ROOT / "scripts" / "render_repository.py"), str(SPEC), "--out", str(out)]
    subprocess.run([*cmd, *([flag] if flag else [])], check=True, capture_output=True)
    marker = 'key: "python_path" value: { string_value: "'
    line = next(ln for ln in (out / "pyramid" / "config.pbtxt").read_text().splitlines() if marker in ln)
    value = Path(line.split(marker, 1)[1].split('"', 1)[0])
    assert value.is_absolute() is (flag is None), value
    assert (out / "pyramid" / value).resolve() == ROOT / "python_backend"


def test_committed_calibration_is_what_calibrate_fits_here(tmp_path):
    """deploy/replay.calibration.json is `make calibrate-replay`'s output: refitted here, the same
    schedule and questions, and weights and thresholds equal within float noise (BLAS, CPU)."""
    out = tmp_path / "replay.json"
    subprocess.run(
        [sys.executable, "-m", "pyramid_moa", "calibrate", "--traces", "data/gsm8k", "--committee",
         "faithfulcot_gpt-3.5-turbo_COT,reread_gpt-3.5-turbo_re2_cot,faithfulcot_gpt-3.5-turbo_noNL",
         "--oracle", "faithfulcot_gpt4_COT", "--cost", "usd", "--fit-fraction", "0.5", "--out", str(out)],
        check=True, capture_output=True, cwd=ROOT,
    )  # fmt: skip
    shipped, again = json.loads(CALIBRATION.read_text()), json.loads(out.read_text())
    for key in ("committee", "oracle", "feature_set", "calibrator", "stages", "arbiter", "cost_model", "target"):
        assert_tree_close(shipped[key], again[key], rel=1e-6, abs_=1e-9)
    assert shipped["fitted_on"]["idx"] == again["fitted_on"]["idx"]
