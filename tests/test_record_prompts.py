"""``pyramid record`` without gold (issue 13): plain prompts, chat logs, text files; the cost facts it
writes into sources.json and the ``next:`` command it prints (the real server: tests/integration/
test_record_nogold.py)."""

from __future__ import annotations

import json

import pytest

from pyramid_cli.gsm8k import UsageError
from pyramid_cli.record import Deployment, load_questions, next_command, question_from_chat, write_metadata
from pyramid_moa.cost import CostModel, ModelCost


def _write(tmp_path, name: str, lines: list) -> str:
    p = tmp_path / name
    p.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8")
    return str(p)


def test_question_lines_without_gold(tmp_path):
    qs = load_questions(_write(tmp_path, "q.jsonl", [{"question": "2+2?"}, {"question": "3+3?", "user": "x"}]))
    assert [(q.idx, q.question, q.gold) for q in qs] == [(0, "2+2?", None), (1, "3+3?", None)]


def test_a_text_file_is_one_prompt_per_line(tmp_path):
    qs = load_questions(_write(tmp_path, "q.txt", ["What is 2+2?", "", "  What is 3+3?  "]))
    assert [(q.idx, q.question, q.gold) for q in qs] == [(0, "What is 2+2?", None), (1, "What is 3+3?", None)]


def test_chat_logs_ask_up_to_the_last_user_turn(tmp_path):
    logs = [
        {"messages": [{"role": "user", "content": "What is 2+2?"}]},
        {"messages": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "5*5?"}]}]},
    ]  # fmt: skip
    qs = load_questions(_write(tmp_path, "chat.jsonl", logs))
    assert [q.question for q in qs] == ["What is 2+2?", "What is 2+2?", "System: Be brief.\n\nUser: 5*5?"]
    assert all(q.gold is None for q in qs)
    with pytest.raises(UsageError, match=r"chat.jsonl: prompt 1: .*no user turn"):
        load_questions(_write(tmp_path, "chat.jsonl", [{"messages": [{"role": "system", "content": "hi"}]}]))


def test_the_chat_rule_is_the_gateways():
    conversation = pytest.importorskip("pyramid_gateway.conversation")
    cases = [
        [{"role": "user", "content": "What is 2+2?"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "5*5?"}],
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}],
        [{"role": "user", "name": "ann", "content": [{"type": "text", "text": "x"}, {"type": "text", "text": "y"}]}],
    ]
    for messages in cases:
        assert question_from_chat(messages) == conversation.question_from_messages(messages)


def test_files_with_gold_still_read_as_before(tmp_path):
    qs = load_questions(_write(tmp_path, "p.jsonl", [{"idx": 7, "question": "q", "gold": "3"}]))
    assert [(q.idx, q.gold) for q in qs] == [(7, "3")]
    qs = load_questions(_write(tmp_path, "g.jsonl", [{"question": "q", "answer": "x #### 1,001"}]))
    assert [(q.idx, q.gold) for q in qs] == [(0, "1001")]


def test_sources_carry_the_cost_facts_and_the_next_command_runs_with_them(tmp_path):
    from pyramid_cli.gsm8k import Question

    facts = {
        "cost_model": "usd",
        "models": {
            "a": {"params_b": None, "price_in_per_1k": 0.001, "price_out_per_1k": 0.002},
            "b": {"params_b": 7.0, "price_in_per_1k": 0.001, "price_out_per_1k": 0.002},
            "o": {"params_b": None, "price_in_per_1k": 0.03, "price_out_per_1k": 0.06},
        },
    }
    dep = Deployment(["a", "b"], "o", cost_facts=facts)
    costs = write_metadata(tmp_path, dep, [Question(0, "q", None)], {"o": {"params_b": 1760.0}}, {"a": [3.0]}, {}, {})
    rows = {r["name"]: r for r in json.loads((tmp_path / "sources.json").read_text())}
    assert rows["a"]["params_b"] == 3.0  # --params wins
    assert rows["b"]["params_b"] == 7.0 and rows["o"]["params_b"] == 1760.0  # the calibration's, then the engine's
    assert rows["o"]["price_usd_per_1k_tokens"] == {"input": 0.03, "output": 0.06}
    assert all(r["gold_answers"] is False for r in rows.values())
    assert isinstance(costs, CostModel) and costs.available("usd", ["a", "b", "o"])
    cmd = next_command(tmp_path, dep, costs, True, "gsm8k")
    assert cmd.startswith("next: pyramid calibrate --traces ") and "--cost usd --labels oracle --out calib.json" in cmd
    # No facts at all: says what to give.
    bare = CostModel({m: ModelCost() for m in ["a", "b", "o"]})
    cmd = next_command(tmp_path, Deployment(["a", "b"], "o"), bare, False, "gsm8k")
    assert "--cost" not in cmd and "--labels" not in cmd and "--params NAME=B" in cmd
