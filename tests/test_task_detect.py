"""Task detection (pyramid_moa.task_detect): the rule behind a request's task ``auto``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pyramid_moa.task_detect import Detection, detect_kind, detect_task, user_text

ALL = ("gsm8k", "choice", "semantic")
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
# set -> the task its questions are
SETS = {"gsm8k": "gsm8k", "mmlu_pro": "choice", "nq": "semantic"}
MIN_ACCURACY = 0.99

FRANCE = "What is the capital of France?"
WORD = "A baker sells 24 muffins a day at $3 each. How much money does she make in a week?"
CHOICE = "Which planet is the largest?\nA) Venus\nB) Jupiter\nC) Mars\nD) Earth"


@pytest.mark.parametrize("name", sorted(SETS))
def test_each_shared_set_is_detected_as_its_task(name):
    path = SHARED / name / "questions.jsonl"
    if not path.exists():
        pytest.skip(f"{path} is absent: the shared data sets sit beside the clone as ../shared (CI has them)")
    questions = [json.loads(line)["question"] for line in path.read_text().splitlines() if line.strip()]
    wrong = [q for q in questions if detect_task(q, ALL).task != SETS[name]]
    accuracy = 1 - len(wrong) / len(questions)
    assert accuracy >= MIN_ACCURACY, f"{name}: {accuracy:.4f} of {len(questions)}; e.g. {wrong[:3]}"


@pytest.mark.parametrize(
    "prompt, task",
    [
        (FRANCE, "semantic"),
        ("who wrote the declaration of independence", "semantic"),
        ("how many episodes are in season 7 of pretty little liars", "semantic"),  # recall, not arithmetic
        ("I have 2 kids and 3 dogs. What is a good name for a cat?", "semantic"),  # numbers, no quantity asked
        ("what is the 2017-18 nba season", "semantic"),  # a range, not a subtraction
        (WORD, "gsm8k"),
        ("Jan has three times as many pets as Marcia. If Marcia has two pets, how many do they have?", "gsm8k"),
        ("How much do I pay if a sub costs $4 and I buy 3 of them?", "gsm8k"),  # numbers in the asking sentence
        ("What is 17 * 23 + 4?", "gsm8k"),
        ("12 / 4 + 7", "gsm8k"),
        ("Calculate 15% of 80.", "gsm8k"),
        (CHOICE, "choice"),
        ("Which is red? (A) the sky (B) blood (C) grass", "choice"),  # options on one line
        ("A train leaves at 3 pm at 60 mph. How far has it gone by 5 pm?\nA) 60\nB) 120\nC) 180", "choice"),
    ],
)
def test_unit_cases(prompt, task):
    assert detect_task(prompt, ALL).task == task


def test_only_calibrated_tasks_are_chosen():
    d = detect_task(WORD, ("choice", "semantic"))
    assert (d.task, d.kind) == ("semantic", "gsm8k") and "gsm8k has no calibration" in d.reason
    assert detect_task(CHOICE, ("gsm8k", "text")).task == "text"  # free text answers an option list too
    # Nothing calibrated fits: no task, the caller's default or declared fallback applies.
    d = detect_task(FRANCE, ("gsm8k", "choice"))
    assert d == Detection(None, d.reason, "semantic") and "none of semantic, text" in d.reason
    assert detect_task(WORD, ("gsm8k",)) == Detection("gsm8k", detect_kind(WORD)[1], "gsm8k")


def test_chat_prompts_are_read_at_their_last_user_turn():
    # The gateway's transcript of a conversation longer than one user turn (pyramid_client.chat).
    transcript = f"System: You answer in 3 words or fewer.\n\nUser: {CHOICE}\n\nAssistant: B\n\nUser: {FRANCE}"
    assert user_text(transcript) == FRANCE
    assert detect_task(transcript, ALL).task == "semantic"  # the earlier turn's options do not decide it
    named = f"System: Be brief.\n\nUser (ann): {WORD}"
    assert detect_task(named, ALL).task == "gsm8k"
    templates = [
        f"<|im_start|>system\nYou have 5 tools.<|im_end|>\n<|im_start|>user\n{WORD}<|im_end|>\n<|im_start|>assistant\n",
        f"<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{WORD}<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        f"<s>[INST] <<SYS>>\nAnswer with 1 word.\n<</SYS>>\n\n{WORD} [/INST]",
        f"<start_of_turn>user\n{WORD}<end_of_turn>\n<start_of_turn>model\n",
    ]
    for prompt in templates:
        assert user_text(prompt) == WORD, prompt
        assert detect_task(prompt, ALL).task == "gsm8k"
    # A question that merely starts like a role is not a transcript.
    assert user_text("User: interface guidelines, what are they?") == "User: interface guidelines, what are they?"


def test_empty_or_odd_prompts_are_free_text():
    for prompt in ("", "   ", "?", "A)"):
        assert detect_task(prompt, ALL).task == "semantic"
