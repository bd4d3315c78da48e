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
    """Wherever the harness reads a letter, so does extract_answer (it adds Korean forms only where the harness reads none)."""
    assert harness_extract(text) == _reference_harness(text)
    if harness_extract(text):
        assert extract_answer(text) == harness_extract(text)


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


# ---------------------------------------------------------------- Korean answer forms (issue 23)

_OLD_AFTER_REASONING = re.compile(
    re.escape("</reasoning>") + r"\s*(?:\**정답\**\s*(?:은|는)?\s*[:：]?\s*)?[\(\[]?([A-Ea-e])(?![A-Za-z])")


def _old_extract(text):
    """extract_answer as it was before the Korean forms (frozen here: the regression reference)."""
    from kormedqa.text import normalize_text

    text = normalize_text(text)
    after = _OLD_AFTER_REASONING.search(text)
    return after.group(1).upper() if after else _reference_harness(text)


@pytest.mark.parametrize("text,letter", [
    ("B가 정답", "B"), ("C번", "C"), ("정답은 B입니다", "B"), ("B입니다", "B"), ("정답은 C이다", "C"),
    ("D예요", "D"), ("답은 E예요", "E"), ("B)이 맞다", "B"), ("(D)를 고른다", "D"), ("'E'가 맞습니다", "E"),
    ("3번", "C"), ("정답은 3번입니다", "C"), ("정답: ②", "B"), ("④가 정답", "D"), ("정답: 5", "E"),
    ("<reasoning>고혈압의 정의를 찾는다</reasoning>③", "C"), ("<reasoning>추론</reasoning>2번", "B"),
    ("<reasoning>추론</reasoning> 정답: 4", "D"), ("A는 틀리고 B가 맞다", "B"), ("ｂ가 정답", "B"),
    # names no answer: a letter inside a name, a number that is no option, a count
    ("A형 간염", ""), ("B군 연쇄상구균", ""), ("C반응성 단백", ""), ("B세포 림프종", ""), ("BMI가 높다", ""),
    ("HbA는 정상", ""), ("13번", ""), ("6번", ""), ("정답: 3.5 mg", ""), ("정답: 12", ""), ("고혈압이다", ""),
])
def test_korean_answer_forms_literal(text, letter):
    assert extract_answer(text) == letter


HANGUL = st.text(alphabet=st.sampled_from(list("환자의증상은고혈압치료약물로옳은것다음중정답 \n,")), max_size=25)
LETTER = st.sampled_from("ABCDE")
PLACE = st.sampled_from(["", "<reasoning>각 선택지를 검토한다</reasoning>", "정답은 ", "정답: ", "따라서 "])


@settings(max_examples=300, deadline=None)
@given(HANGUL, PLACE, LETTER, st.sampled_from(KOREAN_TAILS_FOR_TEST := (
    "가", "이", "은", "는", "을", "를", "와", "과", "의", "도", "만", "에", "로", "으로", "라고", "란", "입니다",
    "이다", "이에요", "예요", "에요", "이요", "요", "임", "인", "일", "였다", "다", "야", "죠", "번")),
    st.sampled_from(["", "(", "'", "\""]), HANGUL)
def test_a_letter_with_any_particle_or_ending_is_read_anywhere(prefix, place, letter, tail, bracket, suffix):
    close = {"(": ")", "'": "'", "\"": "\""}.get(bracket, "")
    assert extract_answer(prefix + place + bracket + letter + close + tail + suffix) == letter


@settings(max_examples=200, deadline=None)
@given(HANGUL, PLACE, st.integers(1, 5), st.sampled_from(["번", " 번", "번입니다", "번이 정답", "번째"]),
       st.booleans(), HANGUL)
def test_an_option_number_with_beon_or_circled_is_read_anywhere(prefix, place, n, tail, circled, suffix):
    form = "①②③④⑤"[n - 1] if circled else f"{n}{tail}"
    assert extract_answer(prefix + place + form + suffix) == "ABCDE"[n - 1]


NO_ANSWER = st.lists(st.sampled_from(["고혈압", "환자는", "A형", "B군", "C반응성", "B세포", "BMI가", "HbA는", "6번",
                                      "13번", "0.5번", "120", "mg", "정답", "하루", "\n", "다음 중"]), max_size=8)


@settings(max_examples=300, deadline=None)
@given(NO_ANSWER)
def test_text_that_names_no_answer_still_gives_none(words):
    """Letters inside names, numbers that are no option, counts: the Korean forms add no reading
    (the harness's cascade alone reads '정답 A형' as A, before and after)."""
    text = " ".join(words)
    assert extract_answer(text) == _old_extract(text)
    if "정답" not in words:
        assert extract_answer(text) == ""


OLD_FORMS = st.lists(st.sampled_from(
    ["A", "B", "C", "D", "E", "b", "e", ".", ":", "：", " ", "\n", "(", ")", "정답", "은", "입니다", "가", "는", "번", "3",
     "②", "이", "</reasoning>", "<reasoning>", "형", "x", "Because", "**"]), max_size=14).map("".join)


@settings(max_examples=1000, deadline=None)
@given(OLD_FORMS)
def test_every_output_read_before_reads_the_same(text):
    """Regression: whatever the extractor read before the Korean forms, it reads unchanged."""
    old = _old_extract(text)
    if old:
        assert extract_answer(text) == old


@pytest.mark.parametrize("text", [
    "<reasoning>\nA) x\nB) y ✓\n</reasoning>B", "<reasoning>...</reasoning>정답은 E", "A. 틀림 ... D. 맞음", "답은 E",
    "정답은 C 입니다", "<reasoning>A) 정답 아님 E) ...</reasoning>c", "<reasoning>끝나지 않은 추론 A) 어쩌고",
    "A) 3번 보기는 틀림, 정답은 ②", "B. 고혈압이 정답이고 ④는 아니다",
])
def test_old_readings_of_mixed_outputs_win_over_korean_forms(text):
    assert _old_extract(text) and extract_answer(text) == _old_extract(text)
