"""The ``choice`` task: hand-written cases (no multiple-choice trace set is recorded here)."""

import pytest

from pyramid_moa.answers import get_task
from pyramid_moa.choice import choice_equal, extract_choice, parse_options
from pyramid_moa.features import AgentOutput, committee_vote

QUESTION = """Which planet is known as the Red Planet?
A) Venus
B) Mars
C) Jupiter
D) Saturn"""


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Mars is red because of iron oxide. The answer is (B).", "B"),
        ("The answer is B", "B"),
        ("ANSWER: B", "B"),
        ("The answer is a bit unclear to me.", None),
        ("... so the correct option is C.", "C"),
        ("Thinking it through.\n\\boxed{D}", "D"),
        ("Working.\n#### A", "A"),
        ("Iron oxide makes it red.\n(B)", "B"),
        ("B) Mars", "B"),
        ("B", "B"),
        # The last marked answer wins over an earlier one the model revised.
        ("At first I thought the answer is A. On reflection the answer is B.", "B"),
        ("I cannot tell.", None),
        ("", None),
        (None, None),
    ],
)
def test_letter_forms(text, expected):
    assert extract_choice(text, QUESTION) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The Red Planet is Mars.", "B"),  # option text alone, one option named
        ("mars", "B"),
        ("It is not Venus; it is Mars", None),  # two options named, no letter: ambiguous
        ("Pluto", None),  # names no option
    ],
)
def test_option_text_maps_to_letter(text, expected):
    assert extract_choice(text, QUESTION) == expected


def test_letter_outside_the_options_is_no_answer():
    assert extract_choice("The answer is E.", QUESTION) is None
    # Without the question any of A-J is taken.
    assert extract_choice("The answer is E.") == "E"


def test_parse_options_forms_and_stem_lines():
    assert parse_options(QUESTION) == {"A": "Venus", "B": "Mars", "C": "Jupiter", "D": "Saturn"}
    assert parse_options("Pick one:\n(A) yes\n(B) no") == {"A": "yes", "B": "no"}
    assert parse_options("Pick one:\nA. yes\nB. no\nC. maybe") == {"A": "yes", "B": "no", "C": "maybe"}
    # A line starting "C." in the stem is not an option list (no run from A).
    assert parse_options("C. elegans is a worm. How many cells does it have?") == {}
    assert parse_options(None) == {}


def test_task_registry_and_vote_on_letters():
    t = get_task("choice")
    assert not t.numeric and t.uses_question
    # extract_for passes the question only to tasks that read it.
    assert t.extract_for("Mars", QUESTION) == "B"
    assert get_task("gsm8k").extract_for("#### 7", QUESTION) == "7"
    answers = [t.extract_for(x, QUESTION) for x in ("The answer is (B).", "Mars", "A) Venus")]
    outs = [AgentOutput(f"m{i}", None, a) for i, a in enumerate(answers)]
    vote = committee_vote(outs, numeric=t.numeric)
    assert (vote.answer, vote.count, vote.n_distinct) == ("B", 2, 2)
    assert choice_equal("b", "B") and not choice_equal("B", None) and not choice_equal("A", "B")


def test_pyramid_record_reads_choice_answers_with_their_question():
    """`pyramid record` extracts an engine's answer as the router does: the option text maps to its letter
    only with the question's options at hand."""
    from pyramid_cli.record import _sample

    parts = [{"text_output": "The Red Planet is Mars.", "output_tokens": 6}]
    assert _sample("m", parts, False, "choice", QUESTION)["answer"] == "B"
    assert _sample("m", parts, False, "choice")["answer"] is None  # no question: no options to map onto
