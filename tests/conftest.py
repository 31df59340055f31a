from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "data" / "gsm8k"
COMMITTEE = ["faithfulcot_gpt-3.5-turbo_COT", "reread_gpt-3.5-turbo_re2_cot", "faithfulcot_gpt-3.5-turbo_noNL"]
ORACLE = "faithfulcot_gpt4_COT"


@pytest.fixture(scope="session")
def shipped() -> Path:
    return SHIPPED


@pytest.fixture(scope="session")
def no_gold(tmp_path_factory) -> Path:
    """The shipped traces with every gold answer removed (as ``pyramid record`` writes plain prompts)."""
    root = tmp_path_factory.mktemp("nogold")
    shutil.copytree(SHIPPED / "traces", root / "traces")
    shutil.copy(SHIPPED / "sources.json", root / "sources.json")
    lines = [json.loads(x) for x in (SHIPPED / "questions.jsonl").read_text().splitlines() if x.strip()]
    (root / "questions.jsonl").write_text("".join(json.dumps({**q, "gold": None}) + "\n" for q in lines))
    return root


@pytest.fixture(scope="session")
def routing_data():
    from pyramid_moa.dataset import load_routing_data

    return load_routing_data(str(SHIPPED), COMMITTEE, ORACLE)


def write_traces(root: Path, questions: list[dict], sources: dict[str, list[str]]) -> Path:
    """A small trace dir: ``sources`` maps name -> raw JSONL lines of its trace file."""
    (root / "traces").mkdir(parents=True, exist_ok=True)
    (root / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    meta = [{"name": n, "params_b": 7, "license": "MIT"} for n in sources]
    (root / "sources.json").write_text(json.dumps(meta))
    for name, lines in sources.items():
        (root / "traces" / f"{name}.jsonl").write_text("".join(line + "\n" for line in lines))
    return root
