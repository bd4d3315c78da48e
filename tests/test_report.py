"""The demo's picture: training curves from a loop's real train_log.jsonl, every split before and after."""
import json
import math
from pathlib import Path

from kormedqa.report import CURVES, demo_splits, plot_report, training_curves

LOG = Path(__file__).parent / "fixtures" / "loop_train_log.jsonl"
PNG = b"\x89PNG\r\n\x1a\n"


def _log_rows():
    return [json.loads(line) for line in LOG.read_text(encoding="utf-8").splitlines()]


def test_stage_spans_of_a_real_loop_log_follow_one_another():
    curves, stages = training_curves(_log_rows())
    assert [(s["name"], s["loop"], s["track"], s["start"], s["end"]) for s in stages] == [
        ("loop_1_dict", 1, "dict", 0, 2), ("loop_1_mcq", 1, "mcq", 2, 6),
        ("loop_2_dict", 2, "dict", 6, 8), ("loop_2_mcq", 2, "mcq", 8, 12)]
    # One point per logged loss line (not Trainer's summary line), at the run's optimizer step.
    for key, _ in CURVES:
        assert [x for x, _ in curves[key]] == list(range(1, 13)), key
    rows = [r for r in _log_rows() if "loss" in r]
    assert [y for _, y in curves["reasoning_loss"]] == [r["reasoning_loss"] for r in rows]
    # The dictionary steps of each loop come before its MCQ steps.
    for loop in (1, 2):
        d, m = (next(s for s in stages if s["name"] == f"loop_{loop}_{t}") for t in ("dict", "mcq"))
        dict_xs = [x for x, _ in curves["answer_loss"] if d["start"] < x <= d["end"]]
        mcq_xs = [x for x, _ in curves["answer_loss"] if m["start"] < x <= m["end"]]
        assert len(dict_xs) == 2 and len(mcq_xs) == 4 and max(dict_xs) < min(mcq_xs)
    # The MCQ step of rehearsal rows only logged no answer loss: kept as missing, not as a number.
    assert [x for x, y in curves["answer_loss"] if y is None] == [5, 11]


def test_a_step_logged_twice_counts_once_and_lines_without_a_step_are_skipped():
    rows = [{"stage": "loop_1_dict", "step": 1, "loss": 3.0, "answer_loss": 3.0},
            {"stage": "loop_1_dict", "step": 1, "loss": 2.0, "answer_loss": 2.0},  # the same step after a resume
            {"stage": "loop_1_dict", "loss": 9.0},
            {"stage": "loop_1_mcq", "step": 1, "loss": 1.0, "answer_loss": 1.0}]
    curves, stages = training_curves(rows)
    assert curves["answer_loss"] == [[1, 2.0], [2, 1.0]]
    assert [(s["start"], s["end"]) for s in stages] == [(0, 1), (1, 2)]


def _splits():
    return [{"label": "test split: generation accuracy", "n": 81,
             "before": {"value": 0.086, "ci95": [0.042, 0.168]}, "after": {"value": 0.407, "ci95": [0.307, 0.516]}},
            {"label": "reverse (definition -> term): generation accuracy", "n": 81,
             "before": {"value": 0.154, "ci95": [0.09, 0.25]}, "after": {"value": math.nan, "ci95": [0.1, 0.2]}}]


def test_the_picture_is_a_png_and_nothing_not_finite_is_drawn(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    drawn = []
    for name in ("plot", "errorbar"):
        real = getattr(Axes, name)

        def spy(self, *args, _real=real, **kwargs):
            drawn.append([float(v) for a in args[:2] for v in (a if isinstance(a, list) else [a])])
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(Axes, name, spy)
    curves, stages = training_curves(_log_rows())
    curves["reasoning_loss"][0][1] = math.nan  # as json.loads reads a logged NaN
    caption = plot_report(curves, stages, _splits(), tmp_path / "report.png")
    assert (tmp_path / "report.png").read_bytes()[:8] == PNG
    values = [v for call in drawn for v in call]
    assert values and all(math.isfinite(v) for v in values)
    assert len(drawn) == 2 + 3  # two curves; before and after of one split, before of the other
    left, right = caption
    assert left.startswith("Left:") and "12 steps" in left and "dictionary stages and MCQ stages" in left
    assert "each loop after the first" in left
    assert "answer loss absent from 2 of 12 logged steps" in left and "answer loss not finite" not in left
    assert "reasoning loss not finite at 1 of 12 logged steps, left out" in left
    assert right.startswith("Right:") and "reverse (definition -> term): generation accuracy after" in right
    assert "left out" in right and "95% Wilson" in right


def test_the_picture_says_when_there_is_nothing_to_draw(tmp_path):
    caption = plot_report({}, [], [], tmp_path / "empty.png")
    assert (tmp_path / "empty.png").read_bytes()[:8] == PNG
    assert "no training loss was logged" in caption[0] and "no split" in caption[1]
    assert "each loop after the first" not in caption[0]


def test_the_splits_are_the_recorded_shares_and_intervals():
    def p(value, low, high, total=81):
        return {"value": value, "correct": round(value * total), "total": total, "ci95": [low, high]}

    before = {"n": 81, "accuracy": p(0.086, 0.042, 0.168), "cloze_accuracy": p(0.198, 0.125, 0.297),
              "parse_rate": p(0.2, 0.1, 0.3)}
    after = {"n": 81, "accuracy": p(0.407, 0.307, 0.516), "cloze_accuracy": p(0.568, 0.459, 0.67),
             "loglik_accuracy": p(0.21, 0.13, 0.31), "parse_rate": p(0.99, 0.9, 1.0)}
    reverse = {"n": 162, "before": 0.154, "after": 0.16, "before_ci95": [0.1, 0.22], "after_ci95": [0.11, 0.23],
               "test": {"p_value": 1.0}}
    splits = demo_splits(before, after, {"rephrased": None, "reverse": reverse})
    assert [s["label"] for s in splits] == ["test split: generation accuracy",
                                            "test split: cloze accuracy (option text)",
                                            "reverse (definition -> term): generation accuracy"]
    assert splits[0]["before"] is before["accuracy"] and splits[0]["after"] is after["accuracy"]
    assert splits[0]["n"] == 81
    assert splits[2] == {"label": "reverse (definition -> term): generation accuracy", "n": 162,
                         "before": {"value": 0.154, "ci95": [0.1, 0.22]}, "after": {"value": 0.16, "ci95": [0.11, 0.23]}}
