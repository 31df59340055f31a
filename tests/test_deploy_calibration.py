"""``pyramid deploy-calibration`` without a server: where a deployed calibration lives (beside the
rendered one, never over it), that a new rendering keeps it, its history, rollback and reset, and
the checks it makes itself before writing anything (the router's own live checks are in
tests/integration/test_shadow_reload.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pyramid_cli.deploy_calibration import main as deploy
from pyramid_deploy.render import SpecError, render
from pyramid_triton.hot_reload import DEPLOYED_FILE, HISTORY_KEEP, artifact_id, history, live_path

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "deploy" / "replay.yaml"
CALIBRATION = ROOT / "deploy" / "replay.calibration.json"


@pytest.fixture()
def repo(tmp_path):
    return render(SPEC, tmp_path / "repo", calibration=CALIBRATION).out


def variant(tmp_path: Path, k: int, **changes) -> Path:
    """The shipped calibration with stage thresholds moved (another artifact id), and ``changes``."""
    d = json.loads(CALIBRATION.read_text())
    d["stages"] = [{**st, "threshold": round(0.1 + 0.05 * k, 3)} for st in d["stages"]]
    d.update(changes)
    path = tmp_path / f"calib-{k}.json"
    path.write_text(json.dumps(d))
    return path


def test_a_deployed_calibration_lands_beside_the_rendered_one_and_wins(repo, tmp_path):
    rendered = repo / "pyramid" / "calibration.json"
    before = rendered.read_bytes()
    new = variant(tmp_path, 1)
    assert deploy(["--repository", str(repo), str(new)]) == 0
    assert rendered.read_bytes() == before  # the tracked file is never touched
    assert live_path(rendered) == repo / "pyramid" / DEPLOYED_FILE
    assert json.loads(live_path(rendered).read_text()) == json.loads(new.read_text())


def test_a_new_rendering_keeps_the_deployed_calibration_unless_reset(repo, tmp_path):
    new = variant(tmp_path, 1)
    assert deploy(["--repository", str(repo), str(new)]) == 0
    assert deploy(["--repository", str(repo), str(variant(tmp_path, 2))]) == 0
    render(SPEC, repo, calibration=CALIBRATION)  # what make serve does at its next start
    rendered = repo / "pyramid" / "calibration.json"
    assert json.loads(live_path(rendered).read_text()) == json.loads(variant(tmp_path, 2).read_text())
    assert [json.loads(p.read_text()) for p in history(rendered)] == [json.loads(new.read_text())]
    render(SPEC, repo, calibration=CALIBRATION, reset_calibration=True)
    assert live_path(rendered) == rendered and history(rendered) == []


def test_a_deployed_calibration_that_no_longer_fits_the_spec_stops_the_rendering(repo, tmp_path):
    """A spec whose oracle changed: the router would refuse the deployed calibration at load, so
    rendering says so now, with both ways out."""
    import yaml

    assert deploy(["--repository", str(repo), str(variant(tmp_path, 1))]) == 0
    spec = yaml.safe_load(SPEC.read_text())
    spec["engine"]["traces"] = str(ROOT / "data" / "gsm8k")
    spec["oracle"]["name"], spec["agents"][0]["name"] = spec["agents"][0]["name"], spec["oracle"]["name"]
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(spec))
    other = variant(tmp_path, 9, oracle=spec["oracle"]["name"])
    d = json.loads(other.read_text())
    d["committee"] = [a["name"] for a in spec["agents"]]
    other.write_text(json.dumps(d))
    with pytest.raises(SpecError, match="does not fit the spec.*--reset-calibration"):
        render(changed, repo, calibration=other)
    assert (repo / "pyramid" / DEPLOYED_FILE).is_file()  # nothing was removed


def test_history_keeps_the_last_n_and_rollback_and_reset_walk_it(repo, tmp_path, capsys):
    rendered = repo / "pyramid" / "calibration.json"
    ids = []
    for k in range(HISTORY_KEEP + 2):
        path = variant(tmp_path, k)
        ids.append(artifact_id(json.loads(path.read_text())))
        assert deploy(["--repository", str(repo), str(path)]) == 0
    past = [artifact_id(json.loads(p.read_text())) for p in history(rendered)]
    assert past == ids[-2::-1][:HISTORY_KEEP]  # newest first, the oldest dropped
    assert deploy(["--repository", str(repo), "--rollback"]) == 0
    assert artifact_id(json.loads(live_path(rendered).read_text())) == ids[-2]
    assert len(history(rendered)) == HISTORY_KEEP - 1
    assert deploy(["--repository", str(repo), "--reset"]) == 0
    assert live_path(rendered) == rendered  # the spec's calibration serves again
    assert artifact_id(json.loads(history(rendered)[0].read_text())) == ids[-2]


def test_refusals_name_the_cause_and_write_nothing(repo, tmp_path, capsys):
    rendered = repo / "pyramid" / "calibration.json"
    wrong = variant(tmp_path, 1, oracle="tora_70b")
    assert deploy(["--repository", str(repo), str(wrong)]) == 2
    assert "nothing was written" in capsys.readouterr().err
    # (a second task no longer refuses: a calibration set of several tasks is routed by ``auto``,
    # tests/test_task_routing.py)
    assert live_path(rendered) == rendered and history(rendered) == []
    assert deploy(["--repository", str(repo), "--rollback"]) == 2
    assert "nothing to roll back to" in capsys.readouterr().err
    assert deploy(["--repository", str(repo)]) == 2


def test_rolling_back_the_first_deployed_calibration_serves_the_specs(repo, tmp_path):
    rendered = repo / "pyramid" / "calibration.json"
    assert deploy(["--repository", str(repo), str(variant(tmp_path, 1))]) == 0
    assert deploy(["--repository", str(repo), "--rollback"]) == 0
    assert live_path(rendered) == rendered and history(rendered) == []
