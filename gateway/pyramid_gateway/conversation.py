"""How a chat ``messages`` list becomes the router's question (``text_input``).

The rule (``pyramid_client.chat``, which ``pyramid record`` shares: a recorded trace holds the question
the gateway sends):

* A conversation of one user turn is passed **verbatim**. The engines are text-in/text-out models
  (TensorRT-LLM's text API) that apply their own prompt templates, and the router's calibration was fit
  on bare questions: a one-turn chat must be exactly the question the gRPC client would send, so its
  answer, tier and cost are the same.
* Anything more (a system / developer prompt, earlier turns) is **rendered ahead of the last user
  turn** as a plain transcript (``System: ...``, ``User: ...``, ``Assistant: ...`` blocks separated by
  blank lines), never dropped: dropping a system prompt or the turn a follow-up refers to would
  silently change what is being asked. The router then routes that text like any question (a replay
  deployment has no recorded answer for it and says so with a 400).
* Refused with a 400 naming the message: no user turn; a conversation that does not end with a user
  turn (the router answers the last user turn; nothing may follow it); content other than text (images,
  audio, files); tool / function messages and tool calls (tools are not supported); unknown keys.
"""

from __future__ import annotations

from typing import Any

from pyramid_client.chat import ROLES, join_parts, question

from .errors import clip, clip_names, invalid

# Keys an SDK puts on an assistant message it hands back; accepted only when empty.
_EMPTY_OK = ("tool_calls", "function_call", "refusal", "audio", "annotations")


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict):
                raise invalid(f"{where}[{j}] must be an object with 'type' and 'text'", f"{where}[{j}]")
            kind = part.get("type")
            if kind != "text":
                raise invalid(
                    f"{where}[{j}].type is {clip(kind)!r}: only text content can be routed "
                    "(the engines take text; images, audio and files are not supported)",
                    f"{where}[{j}].type",
                    code="unsupported_content",
                )
            unknown = sorted(set(part) - {"type", "text"})
            if unknown:
                raise invalid(f"{where}[{j}] has unknown key(s): {clip_names(unknown)}", f"{where}[{j}]")
            if not isinstance(part.get("text"), str):
                raise invalid(f"{where}[{j}].text must be a string", f"{where}[{j}].text")
            parts.append(part["text"])
        return join_parts(parts)
    raise invalid(f"{where} must be a string or a list of text parts", where)


def question_from_messages(messages: list[Any]) -> str:
    """The router's question for a chat conversation (see the module docstring); ApiError (400)."""
    if not messages:
        raise invalid("'messages' must hold at least one message", "messages")
    turns: list[tuple[str, str | None, str]] = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise invalid(f"{where} must be an object with 'role' and 'content'", where)
        role = m.get("role")
        if not isinstance(role, str):
            raise invalid(f"{where}.role must be one of {', '.join(ROLES)}", f"{where}.role")
        if role in ("tool", "function"):
            raise invalid(f"{where}.role is {role!r}: tools / function calling are not supported", f"{where}.role")
        if role not in ROLES:
            raise invalid(f"{where}.role must be one of {', '.join(ROLES)}, got {clip(role)!r}", f"{where}.role")
        unknown = sorted(k for k in m if k not in ("role", "content", "name", *_EMPTY_OK))
        if unknown:
            raise invalid(f"{where} has unknown key(s): {clip_names(unknown)}", f"{where}.{clip(unknown[0])}")
        for k in _EMPTY_OK:
            if m.get(k):
                raise invalid(f"{where}.{k} is not supported (tools / audio are not)", f"{where}.{k}")
        if m.get("content") is None:
            raise invalid(f"{where}.content is required", f"{where}.content")
        text = _text(m["content"], f"{where}.content")
        name = m.get("name")
        if name is not None and not isinstance(name, str):
            raise invalid(f"{where}.name must be a string", f"{where}.name")
        turns.append((role, name, text))
        if role == "user" and not text.strip():
            raise invalid(f"{where}.content is empty", f"{where}.content")
    roles = [m["role"] for m in messages]
    if "user" not in roles:
        raise invalid("the conversation has no user turn: the router answers the last user turn", "messages")
    if roles[-1] != "user":
        raise invalid(
            f"messages[{len(roles) - 1}] is a {roles[-1]!r} turn: the conversation must end with the user "
            "turn the router answers",
            f"messages[{len(roles) - 1}].role",
        )
    return question(turns)
