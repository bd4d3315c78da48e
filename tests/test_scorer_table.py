"""The scorer table declares what each scorer returns and makes; the declarations must be what runs."""
from __future__ import annotations

import pytest

from kormedqa import scorer_table as st
from kormedqa.records import MCQ

QS = [MCQ(id=f"q{i}", question="?", options=("a", "bb", "c", "d", "e"), answer="ABCDE"[i % 5],
          exam_type=("doctor", "nurse")[i % 2]) for i in range(4)]


def canned_records() -> dict[str, dict[str, dict]]:
    """What each in-process scorer's records step makes of fixed forward-pass outputs."""
    outputs = ["<reasoning>x</reasoning>A", "B가 정답", "정답: C", "nothing"]
    scores = [[-1.0, -2.0, -3.0, -4.0, -5.0]] * len(QS)
    losses = {q.id: {"loss": 1.0, "answer_loss": 0.5, "answer_token_correct": True, "tokens": 7} for q in QS}
    return {"generate": st.generation_records(QS, outputs), "loglik": st.letter_records(QS, scores),
            "cloze": st.cloze_records(QS, scores), "loss": st.loss_records(losses)}


@pytest.mark.parametrize("name", ["generate", "loglik", "cloze", "loss"])
def test_each_scorer_returns_its_declared_fields_and_makes_its_declared_metrics(name):
    scorer = st.BY_NAME[name]
    records = canned_records()[name]
    assert all(tuple(r) == scorer.record_fields for r in records.values())
    metrics = st.mcq_metrics(st.join_records(QS, {name: records}), (name,))
    for metric in scorer.declared:
        assert metric.name in metrics, metric.name
        if metric.hit:
            assert metric.hit in scorer.record_fields


def test_derived_lists_come_from_the_table():
    assert st.SELECTABLE_BY_SCORER == {"generate": ("accuracy", "reasoning_score"), "loglik": ("loglik_accuracy",),
                                       "cloze": ("cloze_accuracy", "cloze_accuracy_norm"), "loss": (),
                                       **({"lm_eval": ("lm_eval_exact_match",)} if "lm_eval" in st.BY_NAME else {})}
    assert st.ALL_SCORERS == ("generate", "loglik", "cloze", "loss")
    assert set(st.HISTORY_METRICS) >= {"accuracy", "loglik_accuracy", "cloze_accuracy", "cloze_accuracy_norm",
                                       "parse_rate", "format_parse_rate", "accuracy_among_parsed",
                                       "teacher_forced_answer_accuracy", "reasoning_score", "valid_format_rate",
                                       "reasoning_tag_rate", "reference_loss", "reference_answer_loss",
                                       "dict_exact_match", "dict_chrf", "dict_reverse_exact_match"}
    assert st.paired_keys(("generate",))["parse_rate"] == "prediction"
    assert st.scorer_of("cloze_accuracy_norm") == "cloze" and st.scorer_of("f1") is None


def test_a_new_scorer_is_one_entry(monkeypatch):
    """Adding a scorer to SCORERS is all it takes for parse_eval_mode and the joined metrics to know it."""
    extra = st.Scorer("always_a", "always answers A", lambda inp: {q.id: {"a_correct": q.answer == "A"} for q in inp.mcqs},
                      ("a_correct",), lambda preds: st.accuracy_with_groups(preds, "a_accuracy", "a_correct"),
                      (st.Metric("a_accuracy", "always A", hit="a_correct", select=True),), needs_model=False)
    monkeypatch.setattr(st, "SCORERS", (*st.SCORERS, extra))
    monkeypatch.setattr(st, "EVAL_SCORERS", (*st.EVAL_SCORERS, "always_a"))
    metrics, preds = st.run_scorers(st.ScoringInputs(QS), ("always_a",))
    assert metrics["a_accuracy"]["correct"] == 1 and preds[0]["a_correct"] is True
    assert st.parse_eval_mode("always_a,generate") == ("generate", "always_a")
