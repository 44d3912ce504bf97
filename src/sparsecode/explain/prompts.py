"""The prompts of the explainer and the judge, and how their answers are read.

A context is shown as its tokens' text run together, with chosen tokens wrapped in MARK_OPEN/MARK_CLOSE. The
prompts are this package's own wording; PROMPT_VERSION is stored with every explanation and score, so a change of
wording is visible in the database (bump it whenever a prompt or a parser changes).
"""

from __future__ import annotations

import re

PROMPT_VERSION = 1
MARK_OPEN, MARK_CLOSE = "<<", ">>"
MAX_EXPLANATION_CHARS = 200

Messages = list[dict[str, str]]

EXPLAIN_SYSTEM = (
    "You name what a feature of a text-reading neural network responds to. In each excerpt the tokens where the "
    f"feature is active are wrapped like {MARK_OPEN}this{MARK_CLOSE}. Answer with a short label of a few words "
    "saying what the wrapped tokens have in common."
)

# one worked example before the real question: small models copy the shape of the answer from it
EXPLAIN_EXAMPLE = (
    ["we stayed in because of the <<rain>> all day", "a <<sunny>> morning at the beach", "the <<storm>> closed roads"],
    "weather words",
)

DETECTION_SYSTEM = (
    "A feature of a neural network that reads text is described below. Decide whether the feature is active "
    "on any token of the excerpt. Answer with one word: yes or no."
)

FUZZING_SYSTEM = (
    "A feature of a neural network that reads text is described below. In the excerpt, some tokens are "
    f"wrapped like {MARK_OPEN}this{MARK_CLOSE}. Decide whether the wrapped tokens are the ones the described "
    "feature is active on. Answer with one word: yes or no."
)


def render(tokens: list[str], marked: set[int] | frozenset[int] = frozenset()) -> str:
    """The text of ``tokens`` with the tokens at positions ``marked`` wrapped; a mark keeps a token's leading
    space outside it, and newlines show as spaces (one excerpt stays on one line)."""
    parts = []
    for i, t in enumerate(tokens):
        t = t.replace("\n", " ").replace("\r", " ")
        if i in marked:
            core = t.lstrip()
            t = t[: len(t) - len(core)] + MARK_OPEN + (core or t) + MARK_CLOSE
        parts.append(t)
    return "".join(parts).strip()


def _excerpts(excerpts: list[str]) -> str:
    numbered = "\n".join(f"{i + 1}. {e}" for i, e in enumerate(excerpts))
    return f"Excerpts:\n{numbered}\n\nLabel:"


def explain_messages(excerpts: list[str]) -> Messages:
    example, label = EXPLAIN_EXAMPLE
    return [
        {"role": "system", "content": EXPLAIN_SYSTEM},
        {"role": "user", "content": _excerpts(example)},
        {"role": "assistant", "content": label},
        {"role": "user", "content": _excerpts(excerpts)},
    ]


def _question(system: str, explanation: str, excerpt: str, question: str) -> Messages:
    user = f"Feature: {explanation}\nExcerpt: {excerpt}\n{question} Answer yes or no."
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def detection_messages(explanation: str, excerpt: str) -> Messages:
    return _question(DETECTION_SYSTEM, explanation, excerpt, "Is the feature active in this excerpt?")


def fuzzing_messages(explanation: str, excerpt: str) -> Messages:
    return _question(FUZZING_SYSTEM, explanation, excerpt, "Are the wrapped tokens ones this feature is active on?")


_LEAD = re.compile(r"^(?:feature(?: description)?|description|answer|label|explanation)\s*[:\-]\s*", re.IGNORECASE)


def parse_explanation(text: str) -> str | None:
    """The explanation in a reply: its first non-empty line without a leading label, list mark or quotes, up to a
    run of spaces or a markdown mark (where small models start to ramble), cut at MAX_EXPLANATION_CHARS; None if
    nothing is left (a malformed reply)."""
    for line in text.splitlines():
        line = re.split(r"\s{2,}|\s[#\[(]", line.strip())[0]
        line = _LEAD.sub("", line.strip().lstrip("-*#>0123456789. ").strip())
        line = line.strip(" \"'`*").replace(MARK_OPEN, "").replace(MARK_CLOSE, "")
        if re.search(r"\w", line):
            return line[:MAX_EXPLANATION_CHARS].strip()
    return None


_ANSWER = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


def parse_yes_no(text: str) -> bool | None:
    """True for a reply whose first yes/no word is yes, False for no, None when it has neither."""
    m = _ANSWER.search(text)
    return None if m is None else m.group(1).lower() == "yes"
