"""Multiple-choice answers: the option letter a model chose, from its letter or its option text.

Models answer a multiple-choice prompt in many clothes: "The answer is (B)", "Answer: B",
"\\boxed{B}", "B) Paris", or only the option's text ("Paris"). Agreement needs one key per
choice, so every form maps to the upper-case letter. The option text can only be mapped when
the question's options are known (``parse_options``); a text that names no option, or names
several, is no answer rather than a guess.

Letters A-J are accepted (MMLU uses A-D, MMLU-Pro up to J); a letter beyond the options the
question lists is no answer.
"""

from __future__ import annotations

import re

LETTERS = "ABCDEFGHIJ"

# Option lines in a question: "A) text", "(A) text", "A. text", "A: text" at the start of a line.
_OPTION_LINE = re.compile(r"^\s*\(?([A-J])[\).:]\s+(.+?)\s*$", re.MULTILINE)
# Marked answers, strongest first; each captures the letter.
_MARKED = (
    re.compile(r"\\boxed\s*\{\s*\(?([A-J])\)?\s*\}"),
    re.compile(r"####\s*\(?([A-J])\b\)?"),
    # The cue words in any case, the letter upper-case only: "the answer is a bit unclear" is no "A".
    re.compile(r"(?i:answer\s*(?:is|:))\s*(?i:option\s*)?[\(\[]?\s*([A-J])\s*[\)\]]?(?![A-Za-z])"),
    re.compile(r"\b(?i:option|choice)\s*(?i:is\s*)?:?\s*[\(\[]?([A-J])\b[\)\]]?"),
)
# A line that is only a letter, maybe with its option text: "B", "(B)", "B) Paris", "B. Paris".
_LETTER_LINE = re.compile(r"^\s*\(?([A-J])(?:[\).:](?:\s+.*)?)?\s*$")


def parse_options(question: str | None) -> dict[str, str]:
    """The options a question lists, letter -> text; empty when it lists fewer than two.

    Only a run starting at "A" counts, so a line like "C. elegans is a worm" in the stem does not
    make an option list on its own.
    """
    if not question:
        return {}
    found = {m.group(1): m.group(2) for m in _OPTION_LINE.finditer(question)}
    options: dict[str, str] = {}
    for letter in LETTERS:
        if letter not in found:
            break
        options[letter] = found[letter]
    return options if len(options) >= 2 else {}


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def _by_option_text(text: str, options: dict[str, str]) -> str | None:
    """The one option whose text the answer's last line equals, or else the one it alone contains."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    last = _norm(lines[-1]) if lines else ""
    normed = {k: _norm(v) for k, v in options.items() if _norm(v)}
    exact = [k for k, v in normed.items() if v == last]
    if len(exact) == 1:
        return exact[0]
    for scope in (last, _norm(text)):
        hits = [k for k, v in normed.items() if re.search(rf"\b{re.escape(v)}\b", scope)]
        if len(hits) == 1:
            return hits[0]
        if hits:
            return None  # several options named: ambiguous
    return None


def extract_choice(text: str | None, question: str | None = None) -> str | None:
    """The chosen option's letter, or None.

    Order: a marked answer (the last ``\\boxed{B}``, ``#### B``, "answer is B", "option B"),
    then the last line that is only a letter (with or without its option text), then, when
    ``question`` lists its options, the one option whose text the answer names. A letter that is
    not among the question's options is None.
    """
    if not text:
        return None
    options = parse_options(question)
    allowed = set(options) if options else set(LETTERS)
    letter = None
    for pattern in _MARKED:
        hits = pattern.findall(text)
        if hits:
            letter = hits[-1].upper()
            break
    if letter is None:
        for line in reversed([ln for ln in text.splitlines() if ln.strip()]):
            m = _LETTER_LINE.match(line)
            if m:
                letter = m.group(1)
                break
    if letter is None and options:
        letter = _by_option_text(text, options)
    return letter if letter in allowed else None


def choice_equal(a: str | None, b: str | None) -> bool:
    """Same option letter (case-insensitive); a missing answer equals nothing."""
    return a is not None and b is not None and a.strip().upper() == b.strip().upper()
