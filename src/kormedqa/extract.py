r"""Answer extraction and the spec's reasoning score: pure functions, tested on their own.

`extract_answer` agrees with lm-evaluation-harness's kormedmcqa filter on every output that
filter handles (same cascade, same "last match of the first pattern that matches"), and in
addition reads the letter right after `</reasoning>` first, where the spec's format puts it.

Where neither finds a letter, it reads the answer forms Korean text uses, as a class (see
`KOREAN_TAILS`): a letter followed by a particle, copula or ending ('B가 정답', 'C입니다', '(D)를'),
an option named by its number with 번 ('3번' -> C) and circled option numbers ('③' -> C), in
the same places and order as a plain letter (right after `</reasoning>`, after 정답, anywhere:
last match). The harness misses those because Hangul counts as `\w`, so `\b` after the letter
fails. They are a fallback only: every output the cascade reads keeps its reading.

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


# What may follow an answer letter in Korean text: particles (가 이 은 는 을 를 와 과 의 도 만 에 로
# 으로 라고 란), the copula and its endings (이다 입니다 이에요 예요 에요 이요 요 임 인 일 였 다 야 죠)
# and 번 ('B번'). A prefix is enough: '이' covers 이다/이며/이고/이었다, '입' 입니다, '에' 에요/에서.
# Nouns that follow a letter as part of a name ('A형 간염', 'B군', 'C반응성 단백', 'B세포') are not
# in the class, so they name no answer.
KOREAN_TAILS = ("가", "이", "은", "는", "을", "를", "와", "과", "의", "도", "만", "에", "로", "으로", "라", "란",
                "입", "예", "요", "임", "인", "일", "였", "다", "야", "죠", "번")
CIRCLED = "①②③④⑤"
_QUOTE = "['\"‘’“”]?"
# One answer in a Korean form: group 1 a letter with its tail, group 2 an option number with 번,
# group 3 a circled number. The letter stands apart from Latin letters and digits on its left
# ('BMI가', 'HbA는' name no answer); the number from other digits ('13번', '0.5번').
_KOREAN_FORM = (
    r"(?:(?<![A-Za-z0-9])[\(\[]?" + _QUOTE + r"([A-Ea-e])" + _QUOTE + r"[\)\]]?(?=" + "|".join(KOREAN_TAILS) + r")"
    r"|(?<![0-9])(?<![0-9][.,])([1-5])\s*번"
    r"|([" + CIRCLED + r"]))"
)
# The same three places a plain letter is read, in the same order: right after `</reasoning>`
# (there also a bare option number, '</reasoning>3'), after 정답 (also '정답: 3'), anywhere.
_BARE_NUMBER = r"|(?<![0-9])(?<![0-9][.,])([1-5])(?![0-9]|\.[0-9])"
KOREAN_PATTERNS = (
    re.compile(re.escape(REASONING_CLOSE) + r"\s*(?:\**정답\**\s*(?:은|는)?\s*[:：]?\s*)?(?:" + _KOREAN_FORM + _BARE_NUMBER + ")"),
    re.compile(r"정답\s*(?:은|는)?\s*[:：]?\s*(?:" + _KOREAN_FORM + _BARE_NUMBER + ")"),
    re.compile(_KOREAN_FORM),
)


def korean_answer(text: str) -> str:
    """The answer named in a Korean form ("A".."E"), or "": last match of the first pattern of
    `KOREAN_PATTERNS` that matches (as the harness's cascade), on text already normalised."""
    for pattern in KOREAN_PATTERNS:
        matches = pattern.findall(text)
        if matches:
            letter, number, circled, *bare = matches[-1]
            if letter:
                return letter.upper()
            if circled:
                return "ABCDE"[CIRCLED.index(circled)]
            return "ABCDE"[int(number or bare[0]) - 1]
    return ""


def harness_extract(text: str) -> str:
    """The harness's cascade alone; "" when nothing matches."""
    for pattern in HARNESS_PATTERNS:
        matches = pattern.findall(text)
        if matches:
            return matches[-1].upper()
    return ""


def extract_answer(text: str) -> str:
    """The answer letter "A".."E" in a model output, or "" when there is none.

    In order: the letter right after `</reasoning>`; the harness's cascade; the Korean answer
    forms (`korean_answer`), read only where the first two find nothing.
    """
    text = normalize_text(text)
    after = AFTER_REASONING.search(text)
    if after:
        return after.group(1).upper()
    return harness_extract(text) or korean_answer(text)


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
