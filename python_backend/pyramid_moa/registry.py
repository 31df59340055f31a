"""Looking a name up in one of the library's registries (answer tasks, calibrators, feature sets).

One error type for "that name is not registered", so a command line can report it as the user's
mistake (exit 2, one line) without also swallowing every ``KeyError`` a bug might raise.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")


class UnknownName(KeyError):
    """A name no registry entry has; the message names it, what kind of thing it is and the known ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def lookup(registry: Mapping[str, T], name: str, what: str) -> T:
    """``registry[name]``, or ``UnknownName`` naming ``what`` was asked for and what is known."""
    try:
        return registry[name]
    except KeyError:
        raise UnknownName(f"unknown {what} {name!r}; known: {', '.join(sorted(registry))}") from None
