"""`kormedqa demo` end to end on a tiny model: before -> after, the other phrasings, the summary."""
import json

import pytest

from helpers import write_sample

pytestmark = pytest.mark.slow  # the whole demo end to end


def test_demo_scores_before_after_and_the_other_phrasings(tmp_path, tiny_model_dir):
    from kormedqa.demo import DemoConfig, run_demo

    data = write_sample(tmp_path / "data", n_train=4, n_test=4)
    rephrased = write_sample(tmp_path / "rephrased", n_train=1, n_test=4)["mcq"]
    reverse = write_sample(tmp_path / "reverse", n_train=1, n_test=3)["mcq"]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("고혈압은 혈압이 높은 상태이다.\n\n당뇨병은 혈당이 높은 질환이다.\n", encoding="utf-8")
    cfg = DemoConfig(
        output=str(tmp_path / "demo"), model=str(tiny_model_dir), dictionary=[data["dictionary"]], mcq=data["mcq"],
        rephrased=rephrased, reverse=reverse, corpus=str(corpus), heldout=str(corpus), cpt_steps=1, device="cpu", precision="fp32",
        loop_set=["dict_epochs=0.5", "mcq_epochs=0.5", "eval_every=1", "dict_eval_limit=2", "eval_batch_size=4",
                  "max_new_tokens=4"],
    )
    summary = run_demo(cfg)
    out = tmp_path / "demo"
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert summary["before"]["n"] == summary["after"]["n"] == 4
    r = summary["rephrased"]
    assert r["n"] == 4 and 0 <= r["before"] <= 1 and 0 <= r["after"] <= 1 and "p_value" in r["test"]
    after = [json.loads(l) for l in (out / "eval_rephrased" / "predictions.jsonl").read_text().splitlines()]
    assert [p["id"] for p in after] == [f"test-{i}" for i in range(4)]
    assert r["after"] == sum(p["correct"] for p in after) / 4
    assert r["after_ci95"][0] <= r["after"] <= r["after_ci95"][1]
    # The reverse set is scored the same way, in its own folders.
    v = summary["reverse"]
    assert v["n"] == 3 and "p_value" in v["test"]
    reverse_after = [json.loads(l) for l in (out / "eval_reverse" / "predictions.jsonl").read_text().splitlines()]
    assert v["after"] == sum(p["correct"] for p in reverse_after) / 3
    assert (out / "eval_before_reverse" / "predictions.jsonl").exists()
    # In fp32 on a CPU too the demo read its one recipe, recorded it, and its report names it.
    assert json.loads((out / "run.json").read_text())["config"]["recipe"] == "recipes/cpu-demo.yaml"
    assert "- Recipe: `recipes/cpu-demo.yaml`." in (out / "REPORT.md").read_text(encoding="utf-8")
    # Every stage ran in the precision asked for, and the demo's MCQ stage kept questions together.
    assert json.loads((out / "loop" / "run.json").read_text())["config"]["precision"] == "fp32"
    assert json.loads((out / "loop" / "run.json").read_text())["config"]["rotation_batches"] is True
    report = (out / "REPORT.md").read_text(encoding="utf-8")
    assert "Same terms asked another way" in report and "the other way round" in report
    # The picture, from the loop's own log: its dictionary steps, then its MCQ steps, every split before and after.
    from kormedqa.report import training_curves

    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![training curves; every split before and after](report.png)" in report
    log = [json.loads(line) for line in (out / "loop" / "train_log.jsonl").read_text().splitlines()]
    curves, stages = training_curves(log)
    assert [s["name"] for s in stages] == ["loop_1_dict", "loop_1_mcq"]
    assert 0 < stages[0]["end"] == stages[1]["start"] < stages[1]["end"]
    assert [x for x, _ in curves["reasoning_loss"]] == list(range(1, stages[1]["end"] + 1))  # a line per step
    left = next(line for line in report.splitlines() if line.startswith("- Left: "))
    right = next(line for line in report.splitlines() if line.startswith("- Right: "))
    assert f"over the run's {stages[1]['end']} steps" in left and "dictionary stages and MCQ stages" in left
    assert all(name in right for name in ("test split: generation accuracy", "test split: cloze accuracy",
                                          "other phrasings: generation accuracy", "reverse (definition -> term)"))
    # The demo's loop is scored on test (it reports its one loop there) and runs no separate test pass.
    loop_config = json.loads((out / "loop" / "run.json").read_text())["config"]
    assert (loop_config["eval_split"], loop_config["test_split"]) == ("test", "")
    # Rerun on the finished demo: nothing is recomputed, and the report keeps the times the steps took.
    import dataclasses
    import time

    started = time.time()
    again = run_demo(dataclasses.replace(cfg, resume=True))
    rerun_wall = time.time() - started
    first, second = summary["timings"], again["timings"]
    redone = ("fetch", "prepare", "loop", "total")
    for step in first:
        if step not in redone:
            assert second[step] == first[step], step
    assert second["loop"] >= first["loop"]
    kept = sum(v for k, v in first.items() if k not in ("fetch", "prepare", "total"))
    assert second["total"] >= kept + 0.9 * rerun_wall - 1.0
    assert json.loads((out / "summary.json").read_text())["timings"] == second
    assert f"- total: {second['total']}" in (out / "REPORT.md").read_text(encoding="utf-8")
