"""Which answer task a prompt is, from the prompt alone: the rule behind a request's task ``auto``.

A deployment calibrated for several answer tasks (a calibration set) must route each request by the
task whose answers its committee writes: an option letter, a number, or free text. A request that does
not name its task (the OpenAI gateway's, by default) is given one here, by a small set of rules on its
text; no model is called. The rules, first match wins:

1. **choice**: the prompt lists options, two or more lines "A) ...", "(B) ...", "C. ..." from "A" on
   (``choice.parse_options``, the rule the ``choice`` task reads answers by), or the same on one line
   ("(A) Paris (B) Rome" / "A) Paris B) Rome").
2. **gsm8k**: an arithmetic problem. Either an expression to evaluate ("What is 17 * 23 + 4?",
   "calculate 3/4 of 120"), or a word problem: it asks for a quantity ("how many", "how much", "how
   long", "what is the total / cost / percentage ...", "find", "calculate", ...) and gives numbers
   (digits, or words like "three", "half", "twice", "dozen") in a premise: a sentence or clause before the
   question's (after its ". ", "? ", "; ", ", " or a line break). A one-line question that only mentions a
   number ("how many episodes are in season 7 of ...") is a fact to recall, not arithmetic.
3. **semantic** otherwise: free text, compared by meaning.

Only a calibrated task can be chosen: when the detected one is not calibrated, the next that can answer it
(choice and gsm8k: ``semantic``, then ``text``, both free text); when none of those is calibrated,
``Detection.task`` is None and the caller applies the deployment's default or its declared fallback.

Chat prompts: the OpenAI gateway passes a one-turn chat verbatim and renders a longer one as a transcript
(``pyramid_client.chat``: "System: ...", "User: ...", "Assistant: ..." blocks); a prompt may also come in a
model's chat template (ChatML ``<|im_start|>user``, Llama 3 ``<|start_header_id|>user<|end_header_id|>``,
Llama 2 / Mistral ``[INST] ... [/INST]``, Gemma ``<start_of_turn>user``). The rules read the last user
turn of such a prompt, so a system prompt's numbers or an earlier turn's options do not decide it.

Framework-free and pure: the router's ``TaskRouters.resolve`` (``pyramid_triton.tasks``) calls it.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass

from .choice import parse_options

AUTO = "auto"  # the task name a request or a spec gives to have the task detected
CHOICE, GSM8K, SEMANTIC, TEXT = "choice", "gsm8k", "semantic", "text"
# The detected kind -> the tasks that can answer it, best first (free text answers anything).
CANDIDATES: dict[str, tuple[str, ...]] = {
    CHOICE: (CHOICE, SEMANTIC, TEXT),
    GSM8K: (GSM8K, SEMANTIC, TEXT),
    SEMANTIC: (SEMANTIC, TEXT),
}


@dataclass(frozen=True)
class Detection:
    """``task``: the calibrated task chosen (None: no calibrated task fits; the caller's default or fallback
    applies); ``kind``: what the prompt is (``choice``, ``gsm8k`` or ``semantic``), whatever is calibrated;
    ``reason``: the rule that decided, in words."""

    task: str | None
    reason: str
    kind: str = SEMANTIC


# ---- the last user turn of a templated prompt ---------------------------------------------------------------

_TEMPLATES = (
    re.compile(r"<\|im_start\|>\s*user\s*\n(.*?)(?:<\|im_end\|>|$)", re.S),  # ChatML
    re.compile(r"<\|start_header_id\|>\s*user\s*<\|end_header_id\|>\s*(.*?)(?:<\|eot_id\|>|$)", re.S),  # Llama 3
    re.compile(r"<start_of_turn>\s*user\s*\n(.*?)(?:<end_of_turn>|$)", re.S),  # Gemma
    re.compile(r"\[INST\](.*?)(?:\[/INST\]|$)", re.S),  # Llama 2 / Mistral
)
_SYS_LLAMA2 = re.compile(r"<<SYS>>.*?<</SYS>>", re.S)
# The gateway's transcript (pyramid_client.chat.question): "Role: text" or "Role (name): text" blocks.
_TRANSCRIPT_START = re.compile(r"^(?:System|User|Assistant)( \([^)\n]*\))?: ")
_NEXT_BLOCK = re.compile(r"\n\n(?:System|User|Assistant)(?: \([^)\n]*\))?: ")
_USER_BLOCK = re.compile(r"(?:^|\n\n)User(?: \([^)\n]*\))?: ")


def user_text(prompt: str) -> str:
    """The last user turn of a chat-templated prompt or of the gateway's transcript; else the prompt."""
    for pattern in _TEMPLATES:
        turns = pattern.findall(prompt)
        if turns:
            return _SYS_LLAMA2.sub("", turns[-1]).strip()
    start = _TRANSCRIPT_START.match(prompt)
    # A transcript has several blocks or a named speaker; a lone "User: ..." is a question like any other.
    if start and (start.group(1) or _NEXT_BLOCK.search(prompt)):
        blocks = list(_USER_BLOCK.finditer(prompt))
        if blocks:
            return prompt[blocks[-1].end() :].strip()
    return prompt.strip()


# ---- the rules --------------------------------------------------------------------------------------------------

# Options on one line: "(A) x (B) y" or "A) x B) y" (parse_options reads them one a line).
_INLINE_OPTIONS = re.compile(r"(?:^|\s)\(A\)\s*\S.*?\s\(B\)\s*\S|(?:^|\s)A\)\s+\S.*?\sB\)\s+\S", re.S)

_NUMBER_WORDS = (
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred thousand "
    "million billion half halves twice thrice double triple quarter quarters third thirds dozen dozens"
).split()
_NUMBER = re.compile(r"\d|\b(?:" + "|".join(_NUMBER_WORDS) + r")\b", re.I)

# Asks for a quantity. "how <adjective>" questions, "what is the <quantity noun>", and imperatives.
_QUANTITY_NOUNS = (
    "total|sum|number|amount|cost|costs|price|value|percentage|percent|average|mean|difference|ratio|area|"
    "perimeter|volume|speed|rate|age|profit|loss|weight|distance|time|fraction|product|change|balance|"
    "score|income|salary|revenue|length|height|width|count|remainder|mass|capacity|temperature|duration|"
    "minimum|maximum|combined|result|answer|bill|fee|budget|tip|discount|savings|interest|share|quantity|"
    "grade|depth|measure|most|least|fewest|greatest|overall|altogether|together|per"
)
_QUANTITY_CUE = re.compile(
    r"\bhow\s+(?:many|much|long|far|old|fast|tall|often|heavy|big|wide|deep|high|large|small|short|"
    r"early|late|quickly|soon|more|less|fewer)\b"
    r"|\bwhat(?:\s+(?:is|was|are|were|will|would|does|did|do)\b|'s|’s)[^.?!]*?\b(?:" + _QUANTITY_NOUNS + r")\b"
    r"|\b(?:what|which)\s+(?:" + _QUANTITY_NOUNS + r"|percent|day|year|hour|time)\b"
    r"|\b(?:find|calculate|compute|determine|evaluate|estimate|work out)\b"
    r"|\bwhat\s+(?:place|floor|grade|position|page|step|day|year|hour|time)\b"
    r"|\bin\s+(?:dollars|cents|minutes|hours|seconds|days|weeks|months|years|miles|meters|feet|inches|pounds|"
    r"kilograms|grams|liters|gallons|percent)\b",
    re.I,
)
# A clause boundary: a premise ends before the question's clause.
_BOUNDARY = re.compile(r"[.?!;:,](?:\s|$)|\n")
_SENTENCE_END = re.compile(r"[.?!](?:\s|$)|\n")
# A condition that gives the numbers in the asking sentence.
_CONDITION = re.compile(r"\b(?:if|given|assuming|suppose|supposing)\b", re.I)
# An arithmetic expression: two numbers joined by an operator ("-" only spaced: "2017-18", "4-3-3" are not).
_EXPRESSION = re.compile(
    r"\d(?:\.\d+)?\s*(?:[+*/×÷^]|\s[-−]\s|\*\*)\s*\(?\s*-?\d"
    r"|\d\s*(?:plus|minus|times|divided by|multiplied by)\s*\d"
    r"|\b(?:square root|sqrt|percent of|% of)\b[^.?!]*\d",
    re.I,
)
_EXPRESSION_ASK = re.compile(r"\b(?:what\s+is|what's|calculate|compute|evaluate|simplify|solve)\b|=\s*\??\s*$", re.I)
_MATH_ONLY = re.compile(r"^[\d\s.,+\-−*/×÷^()=?%]+$")


def _premise_has_number(text: str, cue: re.Match[str]) -> bool:
    """Whether numbers are given for the question that asks (``cue``): in an earlier sentence or clause, or, two
    or more, in a condition of the asking sentence ("how much if you pay $40 and thrice as much ...")."""
    head = text[: cue.start()]
    cut = 0
    for m in _BOUNDARY.finditer(head):
        cut = m.end()
    if _NUMBER.search(head[:cut]):
        return True
    end = _SENTENCE_END.search(text, cue.end())
    sentence = text[_sentence_start(head) : end.end() if end else len(text)]
    return bool(_CONDITION.search(sentence)) and len(_NUMBER.findall(sentence)) >= 2


def _sentence_start(head: str) -> int:
    start = 0
    for m in _SENTENCE_END.finditer(head):
        start = m.end()
    return start


def is_arithmetic(text: str) -> tuple[bool, str]:
    """(whether ``text`` is an arithmetic problem, the rule that says so)."""
    if _MATH_ONLY.match(text) and _EXPRESSION.search(text):
        return True, "an arithmetic expression"
    if _EXPRESSION.search(text) and _EXPRESSION_ASK.search(text):
        return True, "asks to evaluate an arithmetic expression"
    cues = list(_QUANTITY_CUE.finditer(text))
    if cues and _NUMBER.search(text):
        for cue in reversed(cues):
            if _premise_has_number(text, cue):
                return True, f"a word problem: asks {cue.group(0).strip()!r} with numbers given before"
    return False, ""


def detect_kind(prompt: str) -> tuple[str, str]:
    """(what the prompt is: ``choice``, ``gsm8k`` or ``semantic``, the reason), calibration aside."""
    text = user_text(prompt or "")
    options = parse_options(text)
    if options:
        return CHOICE, f"lists options {', '.join(options)}"
    if _INLINE_OPTIONS.search(text):
        return CHOICE, "lists options on one line"
    arithmetic, why = is_arithmetic(text)
    if arithmetic:
        return GSM8K, why
    return SEMANTIC, "free text: no option list, no arithmetic problem"


def detect_task(prompt: str, calibrated: Collection[str]) -> Detection:
    """The task of ``prompt`` among the ``calibrated`` ones (module docstring); ``task`` None when none fits."""
    kind, why = detect_kind(prompt)
    for task in CANDIDATES[kind]:
        if task in calibrated:
            if task == kind:
                return Detection(task, why, kind)
            return Detection(task, f"{why}; {kind} has no calibration, {task} answers free text", kind)
    names = ", ".join(CANDIDATES[kind])
    return Detection(None, f"{why}; none of {names} has a calibration", kind)
