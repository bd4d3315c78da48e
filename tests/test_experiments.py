"""experiments/learning.py, the learning experiment: its arms are recipe files, each compared with its
own control, stored arms reused only with the same settings; the STaR arm end to end at tiny scale."""
import importlib.util
import json
from pathlib import Path

import pytest

from helpers import write_sample

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def _script(name):
    spec = importlib.util.spec_from_file_location(f"experiments_{name}", EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_arm_is_a_loop_recipe_and_the_star_arm_has_its_rationale_settings():
    learning = _script("learning")
    assert {"recall", "rotate3_mcq_only", "dictline_rehearse_long", "dictline_mcq_only", "star_dictline"} <= set(learning.ARMS)
    assert set(learning.STAR) == {"star_dictline"} and learning.STAR["star_dictline"]["samples"] == 2
    assert set(learning.CONTROLS.values()) <= set(learning.ARMS) and learning.CONTROL in learning.ARMS
    arm = learning.ARMS["dictline_rehearse_long"]
    assert (arm["dict_epochs"], arm["mcq_epochs"], arm["option_rotations"], arm["rationale_template"]) == (
        3.0, 1.67, 3, "dictionary_line")


def _arm(hits):
    preds = [{"id": f"q{i}", "gold": "A", "prediction": "A" if h else "B", "correct": h, "cloze_correct": h}
             for i, h in enumerate(hits)]
    acc = sum(hits) / len(hits)
    return {"metrics": {"accuracy": {"value": acc}}, "preds": preds}


def test_learning_compares_each_arm_with_its_own_control():
    learning = _script("learning")
    results = {"dictline_rehearse_long": _arm([True] * 10 + [False] * 2),
               "dictline_mcq_only": _arm([False] * 12),
               "rotate3_mcq_only": _arm([True] * 5 + [False] * 7)}
    assert learning.control_of("dictline_rehearse_long") == "dictline_mcq_only"
    assert learning.control_of("rotate3_rehearse_long") == learning.CONTROL == "rotate3_mcq_only"
    tests = learning.paired_tests(results["dictline_mcq_only"], results["dictline_rehearse_long"])
    # 10 discordant pairs, all for the arm: exact two-sided p = 2 * 0.5**10.
    assert tests["accuracy"]["p_value"] == pytest.approx(2 * 0.5 ** 10)
    summary = learning.best_arm(results, {"dictline_rehearse_long": tests})
    assert "dictline_rehearse_long (83.3%, McNemar p = 0.002 vs dictline_mcq_only); it meets the goal" in summary


def test_learning_tests_the_other_splits_against_the_control_and_tabulates_them(tmp_path):
    """The rephrased and reverse splits are paired by id from each arm's predictions and shown beside forward."""
    learning = _script("learning")
    args = type("Args", (), {"rephrase": 1, "reverse": True})
    splits = learning.other_splits(args)
    assert splits == {"accuracy_rephrased_1": "eval_rephrased_1", "accuracy_reverse": "eval_reverse"}
    hits = {("dictline_rehearse_long", "eval_reverse"): [True] * 9 + [False] * 3,
            ("dictline_mcq_only", "eval_reverse"): [False] * 12,
            ("dictline_rehearse_long", "eval_rephrased_1"): [True] * 3 + [False] * 9,
            ("dictline_mcq_only", "eval_rephrased_1"): [False] * 2 + [True] + [False] * 9}
    for (arm, folder), h in hits.items():
        out = tmp_path / arm / "loop" / folder
        out.mkdir(parents=True)
        # Another order in each file: the pairing is by id, not by line.
        rows = [{"id": f"q{i}", "correct": c} for i, c in enumerate(h)]
        (out / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (rows if arm == "dictline_mcq_only" else rows[::-1])))
    tests = learning.other_split_tests(tmp_path, "dictline_rehearse_long", "dictline_mcq_only", splits)
    assert tests["accuracy_reverse"]["p_value"] == pytest.approx(2 * 0.5 ** 9)
    # 3 vs 1 correct, q2 correct in both: discordant 2 for the arm, 0 against -> p = 0.5.
    assert tests["accuracy_rephrased_1"]["p_value"] == pytest.approx(0.5)
    results = {"dictline_rehearse_long": _arm([True] * 10 + [False] * 2), "dictline_mcq_only": _arm([False] * 12)}
    for r in results.values():
        r["metrics"]["cloze_accuracy_norm"] = {"value": 0.5}
        r.update(train_seconds=60, eval_seconds=60)
    results["dictline_rehearse_long"]["metrics"]["accuracy_reverse"] = {"value": 0.75, "ci95": [0.5, 0.9]}
    vs_control = {"dictline_rehearse_long": {**learning.paired_tests(results["dictline_mcq_only"], results["dictline_rehearse_long"]), **tests}}
    row = [l for l in learning.table(results, {}, vs_control).splitlines() if l.startswith("| dictline_rehearse_long")][0]
    assert "| 75.0% [50.0%, 90.0%] |" in row
    # gen / other way / reverse / cloze: no rephrased metric in this arm's result, so no p for it.
    assert f"| 0.002 / - / {2 * 0.5 ** 9:.2g} / 0.002 |" in row


def test_learning_reuses_stored_arms_only_from_the_same_settings(tmp_path, monkeypatch):
    learning = _script("learning")
    monkeypatch.setattr(learning, "HERE", tmp_path)
    (tmp_path / "results").mkdir()
    settings = {"max_new_tokens": 192, "eval_batch_size": 32, "precision": "bf16", "seed": 42}
    stored = {"settings": settings, "arms": {"base": None, "recall": learning.ARMS["recall"], "gone": {"x": 1}},
              "results": {"base": _arm([True]), "recall": _arm([False]), "gone": _arm([True]),
                          "no_preds": {"metrics": {}}}}
    (tmp_path / "results" / "learning_bf16.json").write_text(json.dumps(stored))
    args = type("Args", (), {"results": "learning_bf16", **settings})
    assert set(learning.stored_arms(args)) == {"base", "recall"}  # "gone" changed its definition
    # A result file from before the arms were recipe files recorded them in the old shape: the same arm still stands.
    stored["arms"]["recall"] = {"stages": "dict,mcq", "loops": 1, "dict_epochs": 1.0, "mcq_epochs": 2.0, "template": "recall"}
    (tmp_path / "results" / "learning_bf16.json").write_text(json.dumps(stored))
    assert set(learning.stored_arms(args)) == {"base", "recall"}
    stored["arms"]["recall"]["mcq_epochs"] = 3.0
    (tmp_path / "results" / "learning_bf16.json").write_text(json.dumps(stored))
    assert set(learning.stored_arms(args)) == {"base"}
    args.precision = "fp32"
    assert learning.stored_arms(args) == {}


@pytest.mark.slow  # a learning arm end to end
def test_learning_star_arm_runs_at_tiny_scale(tmp_path, monkeypatch, tiny_model_dir):
    """The STaR arm end to end on a tiny model: dictionary stage, its checkpoint writes the rationales,
    the MCQ stage continues that adapter on them, the test split is scored."""
    from types import SimpleNamespace

    learning = _script("learning")
    sample = tmp_path / "sample"
    write_sample(sample, n_train=4, n_test=2)
    (sample / "dictionary.json").write_text((sample / "dict.json").read_text())
    (sample / "characters.json").write_text(json.dumps([{"term": "↑", "definition": "증가", "category": "symbol"}]))
    monkeypatch.setattr(learning, "SAMPLE", sample)
    settings = {**learning.ARMS["star_dictline"], "dict_epochs": 1.0, "mcq_epochs": 1.0}
    star = {"samples": 1, "temperature": 1.0, "top_p": 0.95, "max_new_tokens": 4, "shots": 1}
    args = SimpleNamespace(model=str(tiny_model_dir), eval_batch_size=4, max_new_tokens=4, precision="fp32", seed=1)
    work = tmp_path / "work"
    result = learning.run_star("star", settings, args, work, star=star)
    made = result["rationales"]
    assert made["n"] == 4 and made["teacher"] + made["rationalised"] + made["template"] == 4
    assert result["rationale_questions"] == 4 and result["train_seconds"] > 0 and len(result["preds"]) == 2
    teacher = str((work / "star" / "dict" / "loop_1" / "after_type1").resolve())
    written = json.loads((work / "star" / "rationales" / "run.json").read_text())
    assert written["teacher"]["model"] == teacher and written["sampling"]["samples"] == 1
    loop = json.loads((work / "star" / "loop" / "run.json").read_text())["config"]
    assert loop["base_model"] == teacher and loop["stages"] == "mcq"
    assert loop["rationales"] == str(work / "star" / "rationales" / "rationales.jsonl")


def _run(seed, arm_hits, control_hits, precision="bf16"):
    """A learning result file as experiments/learning.py writes it, for one seed."""
    learning = _script("learning")
    results = {"dictline_rehearse_long": _arm(arm_hits), "dictline_mcq_only": _arm(control_hits)}
    for r in results.values():
        r["metrics"]["cloze_accuracy"] = {"value": 0.5}
        r["metrics"]["accuracy_rephrased_1"] = {"value": r["metrics"]["accuracy"]["value"] / 2}
        r["metrics"]["accuracy_reverse"] = {"value": r["metrics"]["accuracy"]["value"] / 4}
    return {"settings": {"model": "m", "max_new_tokens": 192, "eval_batch_size": 32, "precision": precision,
                         "rephrase": 1, "reverse": True, "seed": seed},
            "machine": {"cpu": "Xeon", "cpu_flags": ["avx512_bf16", "amx_bf16"]}, "results": results,
            "mcnemar_vs_control": {"dictline_rehearse_long": learning.paired_tests(
                results["dictline_mcq_only"], results["dictline_rehearse_long"])}}


def test_spread_reports_mean_sd_range_and_seeds_that_beat_the_control(tmp_path, monkeypatch):
    spread = _script("spread")
    monkeypatch.setattr(spread, "RESULTS", tmp_path)
    # Seed 42: 10 of 12 against 0 (p = 0.002, beats); seed 1: 6 of 12 against 0 (p = 0.031, does not).
    runs = {"a": _run(42, [True] * 10 + [False] * 2, [False] * 12), "b": _run(1, [True] * 6 + [False] * 6, [False] * 12)}
    for name, run in runs.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(run))
    assert spread.main(["a", "b", "--out", "s"]) == 0
    saved = json.loads((tmp_path / "s.json").read_text())
    arm = saved["arms"]["dictline_rehearse_long"]
    assert arm["accuracy"]["mean"] == pytest.approx((10 / 12 + 6 / 12) / 2)
    assert arm["accuracy"]["sd"] == pytest.approx(((10 / 12 - 6 / 12) ** 2 / 2) ** 0.5)
    assert (arm["accuracy"]["min"], arm["accuracy"]["max"]) == pytest.approx((0.5, 10 / 12))
    assert arm["rephrased"]["mean"] == pytest.approx(arm["accuracy"]["mean"] / 2)
    assert arm["reverse"]["mean"] == pytest.approx(arm["accuracy"]["mean"] / 4)
    assert arm["beats_control"] == {"seeds": 2, "significant": 1}
    assert saved["arms"]["dictline_mcq_only"]["beats_control"] is None
    assert "| dictline_rehearse_long | 2 | 66.7% ± 23.6% (50.0%-83.3%) | 33.3% ± 11.8% (25.0%-41.7%) | 16.7% ± 5.9% (12.5%-20.8%) |" in saved["table"]
    assert "0.002, 0.031 | 1 of 2 |" in saved["table"]


def test_spread_refuses_runs_that_differ_in_more_than_the_seed(tmp_path, monkeypatch, capsys):
    spread = _script("spread")
    monkeypatch.setattr(spread, "RESULTS", tmp_path)
    (tmp_path / "a.json").write_text(json.dumps(_run(42, [True], [False])))
    (tmp_path / "b.json").write_text(json.dumps(_run(1, [True], [False], precision="fp32")))
    (tmp_path / "c.json").write_text(json.dumps(_run(42, [True], [False])))
    assert spread.main(["a", "b"]) == 2
    assert "b.json: setting precision is 'fp32'" in capsys.readouterr().err
    assert spread.main(["a", "c"]) == 2
    assert "c.json: setting seed is 42, as in a.json" in capsys.readouterr().err
    assert spread.main(["a", "missing"]) == 2
    assert list(tmp_path.glob("*_spread.json")) == []


def test_bench_readme_renders_a_spread_apart_from_the_runs(tmp_path, monkeypatch):
    spread = _script("spread")
    monkeypatch.setattr(spread, "RESULTS", tmp_path)
    for name, seed in (("learning_x", 42), ("learning_x_seed1", 1)):
        (tmp_path / f"{name}.json").write_text(json.dumps(_run(seed, [True] * 3, [False] * 3)))
    assert spread.main(["learning_x", "learning_x_seed1"]) == 0
    bench = EXPERIMENTS.parent / "bench"
    monkeypatch.syspath_prepend(str(bench))
    spec = importlib.util.spec_from_file_location("bench_run_all", bench / "run_all.py")
    run_all = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_all)
    monkeypatch.setattr(run_all, "RESULTS", tmp_path / "none")
    monkeypatch.setattr(run_all, "EXPERIMENT_RESULTS", tmp_path)
    # The per-seed runs need what learning.py writes besides; the spread alone is what is checked here.
    for name in ("learning_x", "learning_x_seed1"):
        (tmp_path / f"{name}.json").unlink()
    text = run_all.render()
    assert "## Learning over seeds (`experiments/spread.py learning_x learning_x_seed1`)" in text
    assert "| dictline_rehearse_long | 2 | 100.0% ± 0.0% (100.0%-100.0%) |" in text
