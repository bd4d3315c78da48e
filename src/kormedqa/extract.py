"""Answer extraction and the spec's reasoning score: pure functions, tested on their own.

`extract_answer` agrees with lm-evaluation-harness's kormedmcqa filter on every output that
filter handles (same cascade, same "last match of the first pattern that matches"), and in
addition reads the letter right after `</reasoning>` first, where the spec's format puts it.

Model outputs are put in the same normal form as the data (`kormedqa.text.normalize_text`)
before anything is matched, so a fullwidth 'Ｂ', '정답：B', a zero-width space or decomposed
Hangul in an output reads as it would in the data. `harness_extract` alone stays byte-exact to
the harness (which does not normalise), for agreement checks.
"""
from __future__ import annotations

import re

from .formats import DETAILED_KEYWORDS, REASONING_CLOSE, REASONING_OPEN
from .text import normalize_text

# lm-evaluation-harness kormedmcqa (v3.0) extraction cascade, in its order.
HARNESS_PATTERNS = tuple(
    re.compile(p, re.IGNORECASE)
    for p in (r"정답[:\s]*([A-E])", r"정답은\s*([A-E])\s*입니다", r"\b([A-E])\.", r"\b([A-E])\b")
)
# The seed format: `</reasoning>B`, tolerating spaces, `정답: B`, `(B)`, `B)`, `B.`, `B입니다`.
AFTER_REASONING = re.compile(
    re.escape(REASONING_CLOSE) + r"\s*(?:\**정답\**\s*(?:은|는)?\s*[:：]?\s*)?[\(\[]?([A-Ea-e])(?![A-Za-z])"
)


def harness_extract(text: str) -> str:
    """The harness's cascade alone; "" when nothing matches."""
    for pattern in HARNESS_PATTERNS:
        matches = pattern.findall(text)
        if matches:
            return matches[-1].upper()
    return ""


def extract_answer(text: str) -> str:
    """The answer letter "A".."E" in a model output, or "" when there is none."""
    text = normalize_text(text)
    after = AFTER_REASONING.search(text)
    if after:
        return after.group(1).upper()
    return harness_extract(text)


def answer_after_reasoning(text: str) -> bool:
    """Whether the letter sits right after `</reasoning>`, where the spec's format puts it."""
    return AFTER_REASONING.search(normalize_text(text)) is not None


def has_reasoning_tags(text: str) -> bool:
    """Whether `text` holds both `<reasoning>` and `</reasoning>` (after normalisation)."""
    text = normalize_text(text)
    return REASONING_OPEN in text and REASONING_CLOSE in text


def has_detailed_keywords(text: str) -> bool:
    """Whether `text` holds every keyword of the spec's detailed format (첫째 ... 넷째)."""
    text = normalize_text(text)
    return all(keyword in text for keyword in DETAILED_KEYWORDS)


def reasoning_score(output: str, gold: str) -> float:
    """The spec's score: correct 2/3 (+1/3 with good format); good format but wrong 1/4; else 0.

    "Good format" is the spec's check exactly: both reasoning tags and all four of 첫째..넷째.
    """
    output = normalize_text(output)
    good_format = has_reasoning_tags(output) and has_detailed_keywords(output)
    if extract_answer(output) == gold.strip().upper():
        return 2 / 3 + (1 / 3 if good_format else 0.0)
    return 1 / 4 if good_format else 0.0
