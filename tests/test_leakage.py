"""Train/eval overlap detection in kormedqa.leakage."""
from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kormedqa.leakage import char_ngrams, find_overlap, normalize_question
from kormedqa.records import MCQ

OPTIONS = ("가", "나", "다", "라", "마")
LONG = (
    "65세 남자가 3일 전부터 시작된 발열과 기침, 누런 가래를 주소로 내원하였다. 흉부 X선 사진에서 "
    "우하엽에 경화 소견이 보이고 백혈구는 15,000/mm3 이었다. 혈압은 110/70 mmHg, 맥박 98회/분, "
    "체온 38.6도였으며 최근 항생제 복용력은 없다. 가장 적절한 초기 치료는?"
)  # long on purpose: one changed character removes 5 of ~L grams, J = (L-5)/(L+5) >= 0.9 needs L >= 95
SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample" / "mcq"


def mcq(id_: str, question: str) -> MCQ:
    return MCQ(id=id_, question=question, options=OPTIONS, answer="A")


def test_normalize_question():
    assert normalize_question("  Ａ B\tC！ 「고혈압」?  \n") == "abc고혈압"
    assert normalize_question("혈압 < 140/90 mmHg ±5%") == "혈압14090mmhg5"
    assert normalize_question("㎎") == "mg"  # NFKC expands compatibility characters


def test_char_ngrams():
    assert char_ngrams("가나 다라마바") == {"가나다라마", "나다라마바"}
    assert char_ngrams("짧은 글") == {"짧은글"}
    assert char_ngrams("abc", n=2) == {"ab", "bc"}


def test_exact_match_after_cosmetic_changes():
    train = [mcq("t1", "다음 중 고혈압의 1차 치료제로 옳은 것은?"), mcq("t2", "전혀 다른 질문입니다 정말로")]
    evaluation = [mcq("e1", "다음 중  고혈압의 1차 치료제로 옳은 것은 ？"), mcq("e2", "ＤＮＡ 복제에 관여하는 효소는?")]
    report = find_overlap(train, evaluation)
    assert report.exact == [("t1", "e1")]
    assert report.near == []
    assert report.count == 1
    assert report.to_dict()["exact"] == [{"train_id": "t1", "eval_id": "e1"}]


def test_near_duplicate_one_character_changed():
    changed = LONG.replace("15,000", "16,000")
    report = find_overlap([mcq("t", LONG), mcq("u", "약물 상호작용이 가장 큰 조합은?")], [mcq("e", changed)])
    assert report.exact == []
    assert [(t, e) for t, e, _ in report.near] == [("t", "e")]
    assert 0.9 <= report.near[0][2] < 1.0
    assert report.count == 1
    assert report.to_dict()["near"][0]["similarity"] == round(report.near[0][2], 4)


def test_unrelated_and_templated_questions_not_flagged():
    template = "다음 중 '{}'에 대한 설명으로 옳은 것은?"
    train = [mcq(f"t{i}", template.format(term)) for i, term in enumerate(["고혈압", "당뇨병", "천식"])]
    evaluation = [mcq(f"e{i}", template.format(term)) for i, term in enumerate(["폐렴", "빈혈", "간경변"])]
    evaluation.append(mcq("e9", LONG))
    report = find_overlap(train, evaluation)
    assert report.exact == [] and report.near == [] and report.count == 0


def test_threshold_validation_and_empty_questions():
    with pytest.raises(ValueError):
        find_overlap([], [], near_threshold=0)
    report = find_overlap([mcq("t", "?!")], [mcq("e", "…")])
    assert report.exact == [] and report.near == []


def _brute_force(train, evaluation, threshold):
    near = []
    for t in train:
        for e in evaluation:
            if normalize_question(t.question) == normalize_question(e.question):
                continue
            a, b = char_ngrams(t.question), char_ngrams(e.question)
            j = len(a & b) / len(a | b)
            if j >= threshold:
                near.append((t.id, e.id, j))
    return sorted(near)


@settings(max_examples=30, deadline=None)
@given(
    base=st.text(alphabet="가나다라마바사 ", min_size=5, max_size=40),
    edits=st.lists(st.tuples(st.integers(0, 39), st.sampled_from("가나다라마바사")), max_size=4),
    threshold=st.sampled_from([0.5, 0.7, 0.9]),
)
def test_property_index_matches_brute_force(base, edits, threshold):
    """The prefix-filtered index finds exactly the pairs an all-pairs scan finds."""
    variants = [base]
    for position, char in edits:
        text = list(variants[-1])
        if text:
            text[position % len(text)] = char
        variants.append("".join(text))
    train = [mcq(f"t{i}", v) for i, v in enumerate(variants) if normalize_question(v)]
    evaluation = [mcq(f"e{i}", v[::-1] if i % 2 else v) for i, v in enumerate(variants) if normalize_question(v)]
    report = find_overlap(train, evaluation, near_threshold=threshold)
    assert sorted(report.near) == _brute_force(train, evaluation, threshold)


def test_scales_to_kormedmcqa_size():
    rng = random.Random(0)
    syllables = [chr(c) for c in range(0xAC00, 0xAC00 + 400)]

    def question():
        term = "".join(rng.choices(syllables, k=rng.randint(20, 80)))
        return f"다음 중 {term}에 대한 설명으로 옳은 것은?"

    train = [mcq(f"t{i}", question()) for i in range(3000)]
    evaluation = [mcq(f"e{i}", question()) for i in range(600)]
    evaluation[5] = mcq("e5", train[17].question + " ")
    start = time.perf_counter()
    report = find_overlap(train, evaluation)
    assert time.perf_counter() - start < 5
    assert report.exact == [("t17", "e5")]


@pytest.mark.skipif(not (SAMPLE / "train.jsonl").exists() or not (SAMPLE / "test.jsonl").exists(), reason="no sample data")
def test_sample_splits_do_not_leak():
    from kormedqa.data import load_mcq

    report = find_overlap(load_mcq(SAMPLE / "train.jsonl"), load_mcq(SAMPLE / "test.jsonl"))
    assert report.exact == [], report.to_dict()
