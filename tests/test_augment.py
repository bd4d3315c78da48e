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


def _rows(n_questions, copies):
    qs = [MCQ(id=f"q{i}", question="?", options=tuple(f"{i}{c}" for c in "abcde"), answer="ABCDE"[i % 5])
          for i in range(n_questions)]
    return [{"id": m.id, "answer": m.answer} for m in option_rotations(qs, copies, seed=3)]


def test_rotation_batches_hold_whole_questions_and_spread_rehearsal():
    from kormedqa.augment import question_id, rotation_batches

    rows = _rows(12, 5)
    rehearsal = [{"id": f"dict{i}", "answer": ""} for i in range(30)]
    out = rotation_batches(rows, rehearsal, batch_size=5, seed=1)
    assert sorted(r["id"] for r in out) == sorted(r["id"] for r in rows + rehearsal)  # every row once
    batches = [out[i:i + 5] for i in range(0, len(out), 5)]
    kinds = ["dict" if b[0]["id"].startswith("dict") else "mcq" for b in batches]
    for batch, kind in zip(batches, kinds):
        if kind == "mcq":  # one question, its answer at all five letters: no letter prior helps
            assert len({question_id(r["id"]) for r in batch}) == 1 and {r["answer"] for r in batch} == set("ABCDE")
        else:
            assert all(r["id"].startswith("dict") for r in batch)
    # 6 rehearsal batches among 12 MCQ batches: never two in a row, none first.
    assert kinds.count("dict") == 6 and kinds[0] == "mcq" and "dict,dict" not in ",".join(kinds)
    assert rotation_batches(rows, rehearsal, 5, seed=1) == out
    assert [r["id"] for r in rotation_batches(rows, rehearsal, 5, seed=2)] != [r["id"] for r in out]
    # Two questions per batch of 6 at 3 copies each.
    out3 = rotation_batches(_rows(8, 3), [], batch_size=6, seed=0)
    assert all(len({question_id(r["id"]) for r in out3[i:i + 6]}) == 2 for i in range(0, 24, 6)) and len(out3) == 24
    with pytest.raises(ValueError):
        rotation_batches(rows, [], 0, seed=0)


def test_rotation_batches_needs_batches_that_hold_whole_questions(tmp_path):
    from kormedqa.errors import UsageError
    from kormedqa.loop_config import LoopConfig

    with pytest.raises(UsageError, match="multiple"):
        LoopConfig(option_rotations=3, mcq_batch_size=4, rotation_batches=True)
    with pytest.raises(UsageError, match="rotations >= 2"):
        LoopConfig(option_rotations=1, mcq_batch_size=4, rotation_batches=True)
    assert LoopConfig(option_rotations=5, mcq_batch_size=5, rotation_batches=True).rotation_batches


def test_keep_order_trains_rows_in_the_order_given():
    import torch

    from kormedqa.sft import TrainConfig
    from kormedqa.trainer import training_arguments

    def strategy(**kw):
        cfg = TrainConfig(base_model="unused", track="mcq", batch_size=2, grad_accum=1, learning_rate=1e-3,
                          epochs=1.0, **kw)
        return training_arguments(cfg.trainer_settings(), "/tmp/unused", torch.device("cpu"), torch.float32).train_sampling_strategy

    assert strategy() == "random"
    assert strategy(group_by_length=True) == "group_by_length"
    assert strategy(keep_order=True, group_by_length=True) == "sequential"
