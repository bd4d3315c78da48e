"""Answer extraction and the spec's reasoning score."""
import re

import pytest
from hypothesis import given, settings, strategies as st

from kormedqa import extract_answer, harness_extract, reasoning_score


@pytest.mark.parametrize("text,letter", [
    ("<reasoning>\nA) x\nB) y ✓\n</reasoning>B", "B"),
    ("<reasoning>...</reasoning> C", "C"),
    ("<reasoning>...</reasoning>\n정답: D", "D"),
    ("<reasoning>...</reasoning>정답은 E", "E"),
    ("<reasoning>...</reasoning>(A)", "A"),
    ("<reasoning>...</reasoning>B) 항문열창", "B"),
    ("<reasoning>...</reasoning>B입니다", "B"),
    ("<reasoning>A) 정답 아님 E) ...</reasoning>c", "C"),
    ("정답: B", "B"),
    ("정답은 C 입니다", "C"),
    ("A. 틀림 ... D. 맞음", "D"),
    ("답은 E", "E"),
    ("아무 글자도 없음", ""),
    ("", ""),
    ("<reasoning>끝나지 않은 추론 A) 어쩌고", "A"),
    ("<reasoning>...</reasoning>Because", ""),  # a word starting with B is not an answer
])
def test_extract_tricky_outputs(text, letter):
    assert extract_answer(text) == letter


def _reference_harness(text):
    # lm-evaluation-harness kormedmcqa filter, as documented: first matching pattern, last match.
    for p in [r"정답[:\s]*([A-E])", r"정답은\s*([A-E])\s*입니다", r"\b([A-E])\.", r"\b([A-E])\b"]:
        m = re.findall(p, text, flags=re.IGNORECASE)
        if m:
            return m[-1].upper()
    return ""


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ABCDEabcde.:정답은입니다 \n)(xyz가나")), max_size=30))
def test_agrees_with_harness_when_no_reasoning_close(text):
    assert extract_answer(text) == _reference_harness(text) == harness_extract(text)


TAGGED_DETAILED = "<reasoning>\n첫째: a\n둘째: b\n셋째: c\n넷째: A) 10%, B) 60%, C) 10%, D) 10%, E) 10%\n</reasoning>B"


@pytest.mark.parametrize("output,gold,score", [
    (TAGGED_DETAILED, "B", 1.0),                        # correct + format: 2/3 + 1/3
    (TAGGED_DETAILED, "C", 0.25),                       # good format, wrong answer: 1/4
    ("<reasoning>각 선택지를 분석하면: ...</reasoning>B", "B", 2 / 3),  # correct, no keywords
    ("<reasoning>각 선택지를 분석하면: ...</reasoning>B", "A", 0.0),    # wrong, no keywords
    ("첫째: 둘째: 셋째: 넷째: 정답: B", "B", 2 / 3),          # keywords but no tags: format not good
    ("첫째: 둘째: 셋째: 넷째: 정답: B", "A", 0.0),
    ("", "A", 0.0),
])
def test_reasoning_score_table(output, gold, score):
    assert reasoning_score(output, gold) == pytest.approx(score)
