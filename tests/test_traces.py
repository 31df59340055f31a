import json

import pytest
from conftest import write_traces

from pyramid_moa.dataset import load_routing_data
from pyramid_moa.traces import TraceError, TraceSet

Q = [{"idx": i, "question": f"What is {i} + 1?", "gold": str(i + 1)} for i in range(200)]


def line(i, ans="1"):
    return json.dumps({"idx": i, "samples": [{"text": f"#### {ans}", "answer": ans, "output_tokens": 2}]})


def test_shipped_traces_load(shipped):
    ts = TraceSet.open(shipped)
    assert len(ts.questions) == 1319
    rows = ts.samples("faithfulcot_gpt4_COT")
    assert len(rows) == 1319 and rows[0][0].answer is not None


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"samples": []}'], r"a\.jsonl:1: missing or invalid 'idx'"),
        ([line(0), line(0)], r"a\.jsonl:2: duplicate idx 0"),
        ([line(0), "{not json"], r"a\.jsonl:2: not valid JSON"),
        ([json.dumps({"idx": 999, "samples": []})], r"a\.jsonl:1: idx 999 is not in questions\.jsonl"),
        ([json.dumps({"idx": 1, "samples": [{"text": "x"}]})], r"a\.jsonl:1: each sample needs an 'answer'"),
        (
            [json.dumps({"idx": 1, "samples": [{"answer": "1", "output_tokens": "many"}]})],
            r"'output_tokens' must be a number",
        ),
    ],
)
def test_bad_trace_lines_name_file_and_line(tmp_path, lines, message):
    root = write_traces(tmp_path, Q, {"a": lines})
    with pytest.raises(TraceError, match=message):
        TraceSet.open(root).samples("a")


def test_unknown_source_and_missing_dir(tmp_path):
    root = write_traces(tmp_path, Q, {"a": [line(0)]})
    with pytest.raises(TraceError, match="unknown source 'zzz'"):
        TraceSet.open(root).samples("zzz")
    with pytest.raises(TraceError, match="does not exist"):
        TraceSet.open(tmp_path / "nope")


def test_mismatched_question_sets_are_an_error(tmp_path):
    full = [line(i) for i in range(200)]
    root = write_traces(tmp_path, Q, {"a": full, "b": full, "o": [line(i) for i in range(100)]})
    with pytest.raises(TraceError, match="mismatched question sets: source 'o' covers 100 of the 200"):
        load_routing_data(str(root), ["a", "b"], "o")


def test_a_single_missing_question_counts_as_failed_call(tmp_path, capsys):
    full = [line(i) for i in range(200)]
    root = write_traces(tmp_path, Q, {"a": full, "b": full, "o": full[:-1]})
    data = load_routing_data(str(root), ["a", "b"], "o")
    assert data.outputs["o"][-1].failed and data.outputs["o"][-1].answer is None
    assert "no record for idx [199]" in capsys.readouterr().err


def test_committee_must_be_distinct(tmp_path):
    root = write_traces(tmp_path, Q, {"a": [line(0)], "o": [line(0)]})
    with pytest.raises(TraceError, match="distinct"):
        load_routing_data(str(root), ["a", "a"], "o")
