"""Option-order augmentation: the answer follows its option text to a new letter."""
import collections

import pytest

from kormedqa.augment import option_rotations, rotate_options
from kormedqa.records import MCQ

Q = MCQ(id="q1", question="다음 중 고혈압에 대한 설명은?", options=("a", "b", "c", "d", "e"), answer="B")


def test_rotation_moves_each_option_and_the_answer_with_it():
    r = rotate_options(Q, 2)
    assert r.options == ("d", "e", "a", "b", "c")
    assert r.answer == "D" and r.options[r.answer_index] == "b"
    assert r.id == "q1~rot2" and r.question == Q.question
    assert rotate_options(Q, 5) is Q and rotate_options(Q, 0) is Q


def test_rotations_put_the_answer_at_distinct_letters_reproducibly():
    qs = [MCQ(id=f"q{i}", question="?", options=tuple(f"{i}{c}" for c in "abcde"), answer="ABCDE"[i % 5]) for i in range(50)]
    out = option_rotations(qs, 3, seed=7)
    assert len(out) == 150 and out[::3] == qs
    for i in range(50):
        group = out[3 * i: 3 * i + 3]
        assert len({m.answer for m in group}) == 3
        assert {m.options[m.answer_index] for m in group} == {qs[i].options[qs[i].answer_index]}
    assert option_rotations(qs, 3, seed=7) == out
    assert option_rotations(qs, 1, seed=7) == qs
    counts = collections.Counter(m.answer for m in option_rotations(qs, 5, seed=1))
    assert set(counts.values()) == {50}


def test_questions_with_written_rationales_are_not_rotated():
    with_cot = MCQ(id="c", question="?", options=("a", "b", "c", "d", "e"), answer="A", cot="A) a ✓")
    assert option_rotations([with_cot, Q], 2, seed=0)[0] == with_cot
    assert len(option_rotations([with_cot, Q], 2, seed=0)) == 3
    with pytest.raises(ValueError, match="written rationale"):
        rotate_options(with_cot, 1)
    with pytest.raises(ValueError, match="copies"):
        option_rotations([Q], 6, seed=0)
