"""The model-repository renderer is strict: unknown keys and unfilled placeholders are errors."""

from __future__ import annotations

import pytest

from .conftest import ROOT, SPEC  # noqa: F401  (conftest puts python_backend on sys.path)


def test_fill_is_strict():
    from pyramid_deploy.render import SpecError, fill

    assert fill('name: "${model_name}"', {"model_name": "a"}, "t") == 'name: "a"'
    with pytest.raises(SpecError, match=r"no value for placeholder\(s\) \$\{model_name\}"):
        fill('name: "${model_name}"', {}, "t")
    with pytest.raises(SpecError, match="unknown key"):
        fill('name: "${model_name}"', {"model_name": "a", "extra": 1}, "t")


def test_unknown_spec_key_is_an_error(tmp_path):
    from pyramid_deploy.render import SpecError, render

    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC.read_text().replace("profile: replay", "profile: replay\nagentz: []"))
    with pytest.raises(SpecError, match="unknown key.*agentz"):
        render(spec, tmp_path / "out", calibration=tmp_path / "c.json")
    spec.write_text(SPEC.read_text().replace("seconds_per_token:", "secs_per_token:"))
    with pytest.raises(SpecError, match="unknown key.*secs_per_token"):
        render(spec, tmp_path / "out", calibration=tmp_path / "c.json")


def test_missing_calibration_says_how_to_make_it(tmp_path):
    from pyramid_deploy.render import SpecError, render

    with pytest.raises(SpecError, match="pyramid calibrate"):
        render(SPEC, tmp_path / "out", calibration=tmp_path / "missing.json")
