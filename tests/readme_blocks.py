"""The README's code blocks, as tests/integration/test_readme.py runs them.

A block's fence language says what it is: ``bash`` and ``python`` blocks are commands and run as
printed; ``text`` blocks are synopses (placeholders, alternatives in brackets) and are not run. A
command block that cannot run on a CPU machine says why in an HTML comment on the line before its
fence, ``<!-- readme-test: skip REASON -->``, REASON one of ``SKIP_REASONS``; ``<!-- readme-test:
background -->`` marks a block that starts a server in the foreground (it is started, must become
ready, and is stopped).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
COMMAND_LANGS = ("bash", "python")
# gpu: needs an NVIDIA GPU node; cluster: needs Kubernetes; benchmark: minutes of load that its own make
# target runs (make perf), not a check of what the README says.
SKIP_REASONS = ("gpu", "cluster", "benchmark")
_MARK = re.compile(r"^<!--\s*readme-test:\s*(.+?)\s*-->$")
_FENCE = re.compile(r"^```(\S*)\s*$")


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    mark: str  # the readme-test comment before it ("" if none)

    @property
    def skip(self) -> str | None:
        """The reason it is not run (a synopsis, or its mark's), or None."""
        if self.lang not in COMMAND_LANGS:
            return f"a {self.lang or 'plain'} block, not a command"
        if self.mark.startswith("skip"):
            return self.mark
        return None

    @property
    def background(self) -> bool:
        return self.mark == "background"

    def commands(self) -> list[str]:
        """A bash block's commands: lines joined at a trailing backslash; comments and blank lines dropped."""
        out: list[str] = []
        pending = ""
        for raw in self.code.splitlines():
            line = raw.rstrip()
            if pending:
                pending += "\n" + line
            elif not line.strip() or line.lstrip().startswith("#"):
                continue
            else:
                pending = line
            if not pending.endswith("\\"):
                out.append(pending)
                pending = ""
        if pending:
            out.append(pending)
        return out


def blocks(text: str | None = None) -> list[Block]:
    lines = (README.read_text(encoding="utf-8") if text is None else text).splitlines()
    out: list[Block] = []
    k = 0
    while k < len(lines):
        m = _FENCE.match(lines[k])
        if not m:
            k += 1
            continue
        start, lang = k, m.group(1)
        k += 1
        body: list[str] = []
        while k < len(lines) and lines[k].rstrip() != "```":
            body.append(lines[k])
            k += 1
        k += 1
        before = next((lines[j].strip() for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        mark = _MARK.match(before)
        out.append(Block(start + 1, lang, "\n".join(body) + "\n", mark.group(1) if mark else ""))
    return out
