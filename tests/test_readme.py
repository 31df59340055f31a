"""The README's code blocks are commands that run as printed, or say why not (tests/readme_blocks.py);
tests/integration/test_readme.py runs them against the replay profile."""

from __future__ import annotations

import re

from readme_blocks import COMMAND_LANGS, SKIP_REASONS, blocks


def test_every_command_block_runs_or_names_an_allowed_reason():
    found = blocks()
    assert sum(b.lang in COMMAND_LANGS for b in found) >= 8
    for b in found:
        if b.mark:
            assert b.mark == "background" or b.mark in {f"skip {r}" for r in SKIP_REASONS}, (b.line, b.mark)
            assert b.lang in COMMAND_LANGS, f"README line {b.line}: a mark on a block that is not a command"


def test_command_blocks_hold_no_placeholders():
    """A command block is copied and run: no elided question (the replay engine knows only the exact
    recorded text), no NAME placeholders, no [optional] synopsis brackets (those go in text blocks)."""
    for b in blocks():
        if b.skip is not None:
            continue
        assert not re.search(r"\.\.\.[\"')]", b.code), f"README line {b.line}: an elided string"
        assert not re.search(r"\b(DIR|A,B,C|HOST:PORT)\b", b.code), f"README line {b.line}: a placeholder"
        assert not re.search(r" \[--", b.code), f"README line {b.line}: a synopsis in a command block"


def test_the_parser_reads_marks_continuations_and_languages():
    text = "x\n<!-- readme-test: skip gpu -->\n```bash\nmake a \\\n  B=1  # c\n# only a comment\nmake b\n```\n\n```text\nsyn [--x]\n```\n"
    a, t = blocks(text)
    assert (a.line, a.lang, a.mark, a.skip) == (3, "bash", "skip gpu", "skip gpu")
    assert a.commands() == ["make a \\\n  B=1  # c", "make b"]
    assert t.skip is not None and t.mark == ""
