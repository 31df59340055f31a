"""How a chat conversation becomes the router's question (``text_input``): the one rule for the OpenAI
gateway (``pyramid_gateway.conversation``, which checks a request's messages first) and ``pyramid record``
(which reads logged conversations), so a recorded trace holds the very question the gateway will send.

* A conversation of one user turn (without a ``name``) is passed **verbatim**: the engines apply their own
  prompt templates and the router's calibration was fit on bare questions, so a one-turn chat is exactly
  the question the client would send.
* Anything more (a system / developer prompt, earlier turns, a named speaker) is **rendered** as a plain
  transcript: ``Role: text`` blocks (``Role (name): text`` for a named speaker) separated by blank lines,
  up to and including the user turn answered.
* A message's content is a string or a list of text parts, joined with newlines.

Standard library only.
"""

from __future__ import annotations

from collections.abc import Sequence

# A message's role -> its label in the transcript.
ROLES = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}


def join_parts(texts: Sequence[str]) -> str:
    """The text of a content given as a list of text parts."""
    return "\n".join(texts)


def question(turns: Sequence[tuple[str, str | None, str]]) -> str:
    """The router's question for ``turns``: (role, name or None, text) each, a role of ``ROLES``, the
    last one the user turn answered."""
    if len(turns) == 1 and not turns[0][1]:
        return turns[0][2]
    return "\n\n".join(f"{ROLES[role]}{f' ({name})' if name else ''}: {text}" for role, name, text in turns)
