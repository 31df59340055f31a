"""A replay spec calibrates from its own traces (pyramid_deploy.spec_calibration): the models and the traces
come from the spec, the rest from its calibrate block, and a block that is not pyramid calibrate's is an error
naming the option."""

from __future__ import annotations

import json

import pytest
import yaml

from pyramid_deploy.render import SpecError, load_spec
from pyramid_deploy.spec_calibration import calibrate_argv, main


def _spec(tmp_path, **over) -> object:
    traces = tmp_path / "traces"
    traces.mkdir(exist_ok=True)
    (traces / "questions.jsonl").write_text(json.dumps({"idx": 0, "question": "q", "gold": "A"}) + "\n")
    d = {
        "profile": "replay-x",
        "engine": {"kind": "replay", "traces": "traces"},
        "agents": [{"name": "a"}, {"name": "b"}],
        "oracle": {"name": "o"},
        "router": {"task": "choice"},
        "calibrate": {"cost": "usd", "fit_fraction": 0.5, "no_embedding": True, "no_arbiter": False,
                      "params": ["a=7", "b=8"]},
    }  # fmt: skip
    d.update(over)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


def test_the_command_line_comes_from_the_spec(tmp_path):
    argv = calibrate_argv(_spec(tmp_path), tmp_path / "cal.json")
    assert argv[:7] == ["calibrate", "--traces", str(tmp_path / "traces"), "--committee", "a,b", "--oracle", "o"]
    assert argv[7:] == ["--task", "choice", "--cost", "usd", "--fit-fraction", "0.5", "--no-embedding",
                        "--params", "a=7", "--params", "b=8", "--out", str(tmp_path / "cal.json")]  # fmt: skip
    # the block's task wins over the router's; auto is no task to fit
    argv = calibrate_argv(_spec(tmp_path, router={"task": "auto"}, calibrate={"task": "semantic"}), "x")
    assert argv[argv.index("--task") + 1] == "semantic"
    assert "--task" not in calibrate_argv(_spec(tmp_path, router={"task": "auto"}, calibrate={}), "x")


def test_the_shipped_replay_specs_load_and_name_known_options():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for name in ("replay-mmlu-pro", "replay-nq"):
        spec = load_spec(root / "deploy" / f"{name}.yaml")
        assert spec["profile"] == name and spec["engine"]["traces"].startswith("../../shared/data/")


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"calibrate": {"fit_fractoin": 0.5}}, r"calibrate: unknown option 'fit_fractoin'; known: .*fit_fraction"),
        ({"calibrate": {"traces": "elsewhere"}}, r"unknown option 'traces'"),
        ({"engine": {"kind": "llamacpp"}}, r"only a replay spec"),
        ({"engine": {"kind": "replay", "traces": "nowhere"}}, r"traces .*nowhere hold no questions.jsonl"),
        ({"agents": [{"name": "a", "source": "other"}]}, r"'a' replays source 'other'"),
        ({"calibrate": ["--cost", "usd"]}, r"calibrate must be a mapping"),
    ],
)
def test_a_bad_spec_is_an_error_naming_what(tmp_path, over, message):
    with pytest.raises(SpecError, match=message):
        calibrate_argv(_spec(tmp_path, **over), "x")


def test_main_prints_or_fails_clearly(tmp_path, capsys):
    assert main([str(_spec(tmp_path)), "--out", "x.json", "--print"]) == 0
    assert capsys.readouterr().out.startswith("pyramid calibrate --traces ")
    assert main([str(_spec(tmp_path, calibrate={"bogus": 1})), "--out", "x.json"]) == 2
    assert "unknown option 'bogus'" in capsys.readouterr().err
