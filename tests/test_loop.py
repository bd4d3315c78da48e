"""Loop training on a tiny model: the spec's checkpoint layout, history.json, and --resume."""
import json
from pathlib import Path

import pytest

from kormedqa.loop import LoopConfig, run_loop
from kormedqa.errors import OutputExistsError, UsageError

from helpers import tiny_loop_config, write_sample


def _cfg(tmp_path, tiny_model_dir, **kw):
    return tiny_loop_config(write_sample(tmp_path / "data"), tiny_model_dir, tmp_path / "run", **kw)


@pytest.mark.slow  # whole loops end to end
def test_one_loop_writes_seed_layout_and_history(tmp_path, tiny_model_dir):
    cfg = _cfg(tmp_path, tiny_model_dir)
    history = run_loop(cfg)
    run = tmp_path / "run"
    for d in ("loop_1/after_type1", "loop_1/after_type2", "best_checkpoint", "final"):
        assert (run / d / "adapter_model.safetensors").exists(), d
    assert (run / "loop_1/eval/metrics.json").exists() and (run / "loop_1/eval/predictions.jsonl").exists()
    assert (run / "loop_1/eval_dict/metrics.json").exists() and "dict_chrf" in history["loops"][0]["metrics"]
    assert json.loads((run / "loop_1/eval/metrics.json").read_text())["overlap"]["count"] == 0
    saved = json.loads((run / "history.json").read_text())
    assert saved == history
    assert [l["loop"] for l in saved["loops"]] == [1]
    assert saved["stop_reason"] == "max_loops" and saved["select_by"] == "accuracy"
    assert "answer_loss" in saved["loops"][0]["training"]["mcq"]
    provenance = json.loads((run / "run.json").read_text())
    assert provenance["seed"] == 3 and provenance["config"]["max_loops"] == 1
    assert provenance["versions"]["transformers"] and provenance["versions"]["torch"]
    assert set(provenance["data_sha256"]) == {"train", "eval"} and "git_commit" in provenance
    assert (run / "train_log.jsonl").exists()
    assert not [p for p in run.rglob(".*tmp-*")], "no scratch folders left behind"
    # Chosen on dev, reported on test: every loop scored on the dev split, best_checkpoint once on test.
    assert saved["select_split"] == "dev"
    assert json.loads((run / "loop_1/eval/metrics.json").read_text())["n"] == 2  # write_sample's dev split
    assert json.loads((run / "test/metrics.json").read_text())["n"] == 4  # its test split
    assert {k: saved["test"][k] for k in ("split", "chosen_on", "loop", "checkpoint", "n")} == \
        {"split": "test", "chosen_on": "dev", "loop": 1, "checkpoint": "loop_1/after_type2", "n": 4}
    assert "accuracy" in saved["test"]["metrics"]
    assert "split dev" in (run / "best_checkpoint" / "README.md").read_text()


def test_choosing_on_the_reported_split_is_refused():
    from kormedqa.errors import UsageError

    with pytest.raises(UsageError, match="chosen on the questions it is reported on"):
        LoopConfig(eval_split="test")
    assert LoopConfig(eval_split="test", test_split="").eval_split == "test"  # no separate report: allowed


def test_existing_output_is_refused_without_resume(tmp_path, tiny_model_dir):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "something").write_text("x")
    with pytest.raises(OutputExistsError):
        run_loop(_cfg(tmp_path, tiny_model_dir))


@pytest.mark.slow  # whole loops end to end
def test_resume_continues_instead_of_starting_over(tmp_path, tiny_model_dir):
    run_loop(_cfg(tmp_path, tiny_model_dir, max_loops=1))
    run = tmp_path / "run"
    stamp = (run / "loop_1/after_type2/adapter_model.safetensors").stat().st_mtime_ns
    # Asking for more loops continues the run: loop 1 is neither retrained nor re-evaluated.
    history = run_loop(_cfg(tmp_path, tiny_model_dir, max_loops=2, resume=True, patience=5))
    assert (run / "loop_1/after_type2/adapter_model.safetensors").stat().st_mtime_ns == stamp
    assert [l["loop"] for l in history["loops"]] == [1, 2]
    assert history["final"] == "loop_2/after_type2"
    log = [json.loads(l) for l in (run / "train_log.jsonl").read_text().splitlines()]
    stages = [r["stage"] for r in log if "loss" in r]
    assert stages.count("loop_1_dict") == 1 and stages.count("loop_2_dict") == 1


@pytest.mark.slow  # whole loops end to end
def test_resume_after_kill_during_mcq_stage_redoes_only_that_stage(tmp_path, tiny_model_dir):
    import shutil

    run_loop(_cfg(tmp_path, tiny_model_dir))
    run = tmp_path / "run"
    uninterrupted_loop = json.loads((run / "history.json").read_text())["loops"][0]
    uninterrupted = uninterrupted_loop["metrics"]
    # What a kill during the MCQ stage leaves: the dictionary stage and nothing after it.
    for d in ("loop_1/after_type2", "loop_1/eval", "best_checkpoint", "final"):
        shutil.rmtree(run / d)
    (run / "history.json").unlink()
    dict_stamp = (run / "loop_1/after_type1/adapter_model.safetensors").stat().st_mtime_ns
    history = run_loop(_cfg(tmp_path, tiny_model_dir, resume=True))
    assert (run / "loop_1/after_type1/adapter_model.safetensors").stat().st_mtime_ns == dict_stamp
    log = [json.loads(l) for l in (run / "train_log.jsonl").read_text().splitlines()]
    stages = [r["stage"] for r in log if "loss" in r]
    assert stages.count("loop_1_dict") == 1 and stages.count("loop_1_mcq") == 1  # the redone stage logged once
    # Each stage starts from the folder on disk with a fixed seed, so the result is the same.
    assert history["loops"][0]["metrics"] == uninterrupted
    # The dictionary stage's record, read back from its checkpoint, is what the stage had returned.
    assert history["loops"][0]["training"]["dict"] == uninterrupted_loop["training"]["dict"]
    assert history["loops"][0]["training"]["mcq"]["steps"] == uninterrupted_loop["training"]["mcq"]["steps"]


def test_track_args_read_each_tracks_own_flags(tmp_path, tiny_model_dir):
    from kormedqa.loop import track_args

    cfg = _cfg(tmp_path, tiny_model_dir, epochs_per_stage=2.0, mcq_epochs=0.5, dict_max_steps=7, mcq_max_steps=9,
               dict_batch_size=3, mcq_batch_size=5, dict_grad_accum=2, mcq_grad_accum=4,
               dict_learning_rate=1e-3, mcq_learning_rate=2e-3)
    d, m = track_args(cfg, "dict"), track_args(cfg, "mcq")
    assert (d.epochs, d.max_steps, d.batch_size, d.grad_accum, d.learning_rate) == (2.0, 7, 3, 2, 1e-3)
    assert (m.epochs, m.max_steps, m.batch_size, m.grad_accum, m.learning_rate) == (0.5, 9, 5, 4, 2e-3)
    with pytest.raises(ValueError):
        track_args(cfg, "grpo")


def test_stage_config_carries_the_loops_schedule(tmp_path, tiny_model_dir):
    from kormedqa.loop import _stage_config

    cfg = _cfg(tmp_path, tiny_model_dir, lr_scheduler_type="constant", mcq_learning_rate=2e-3)
    stage = _stage_config(cfg, "mcq", str(tiny_model_dir), loop=1)
    assert (stage.lr_scheduler_type, stage.learning_rate) == ("constant", 2e-3)
    assert _stage_config(_cfg(tmp_path, tiny_model_dir), "dict", str(tiny_model_dir), 1).lr_scheduler_type == "linear"
    grouped = _cfg(tmp_path, tiny_model_dir, option_rotations=2, mcq_batch_size=2, rotation_batches=True)
    assert _stage_config(grouped, "mcq", str(tiny_model_dir), 1).keep_order
    assert not _stage_config(grouped, "dict", str(tiny_model_dir), 1).keep_order


@pytest.mark.slow  # whole loops end to end
def test_recipe_steps_one_at_a_time_match_run_loop(tmp_path, tiny_model_dir):
    from kormedqa.loop import LoopRecipe

    whole = run_loop(_cfg(tmp_path / "a", tiny_model_dir, max_loops=2, patience=1))
    recipe = LoopRecipe(_cfg(tmp_path / "b", tiny_model_dir, max_loops=2, patience=1))
    recipe.setup()
    for loop in recipe.loops():
        checkpoint = recipe.train(loop)
        assert checkpoint.endswith(f"loop_{loop}/after_type2")
        record = recipe.evaluate(loop, checkpoint)
        assert record["loop"] == loop and set(record["training"]) == {"dict", "mcq"}
        if recipe.save_checkpoint(loop, record):
            break
    stepwise = recipe.cleanup()
    assert [l["metrics"] for l in stepwise["loops"]] == [l["metrics"] for l in whole["loops"]]
    assert (stepwise["stop_reason"], stepwise["final"]) == (whole["stop_reason"], whole["final"])


def test_evaluate_checkpoint_writes_both_evaluations(tmp_path, tiny_model_dir, tokenizer):
    from kormedqa.data import load_dictionary, load_mcq
    from kormedqa.hardware import choose
    from kormedqa.loop import evaluate_checkpoint

    data = write_sample(tmp_path / "data")
    questions = load_mcq(data["mcq"], split="test")
    entries = load_dictionary(data["dictionary"])
    metrics = evaluate_checkpoint(str(tiny_model_dir), tokenizer, questions, tmp_path / "ev", eval_mode="cloze",
                                  eval_batch_size=4, max_new_tokens=4, entries=entries, dict_eval_limit=2,
                                  dict_folder=tmp_path / "ev_dict", choice=choose("cpu"), extra={"note": "x"})
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert saved["note"] == "x" and saved["cloze_accuracy"] == metrics["cloze_accuracy"]
    assert saved["dict_chrf"]["total"] == 2 == json.loads((tmp_path / "ev_dict" / "metrics.json").read_text())["n"]
    assert saved["dict_reverse_exact_match"]["total"] == 2 and 0 <= saved["dict_reverse_exact_match"]["value"] <= 1
    assert all("reverse_output" in row for row in map(json.loads, (tmp_path / "ev_dict" / "predictions.jsonl").open()))
    assert len((tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()) == len(questions)


RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def test_every_shipped_recipe_parses_into_its_config_class():
    """recipes/**/*.yaml: accelerate's configs into accelerate's ClusterConfig, a learning arm's rationale
    settings into RationalesConfig, every other recipe (the learning arms too) into LoopConfig (every key
    a field, every value valid: choices, ranges, select-by)."""
    import yaml
    from accelerate.commands.config.config_args import ClusterConfig

    from kormedqa.rationales import RationalesConfig

    recipes = sorted(RECIPES.rglob("*.yaml"))
    names = {str(r.relative_to(RECIPES)) for r in recipes}
    assert names >= {"medgemma-4b-seed.yaml", "cpu-demo.yaml", "accelerate/fsdp.yaml", "accelerate/multi_gpu.yaml"}
    assert {r.stem for r in RECIPES.glob("experiments/*.yaml")} >= {"dictline_rehearse_long", "star_dictline.rationales"}
    for recipe in recipes:
        if recipe.parent.name == "accelerate":
            assert ClusterConfig.from_yaml_file(recipe).num_processes >= 1, recipe
        elif recipe.name.endswith(".rationales.yaml"):  # a learning arm's `kormedqa rationales` settings
            assert RationalesConfig(**yaml.safe_load(recipe.read_text())).samples >= 1, recipe
        else:
            assert LoopConfig(**yaml.safe_load(recipe.read_text())).max_loops >= 1, recipe
    seed = LoopConfig(**yaml.safe_load((RECIPES / "medgemma-4b-seed.yaml").read_text()))
    assert (seed.eval_split, seed.test_split) == ("dev", "test")  # chosen on dev, reported on test
    assert (seed.dict_batch_size, seed.dict_grad_accum, seed.dict_learning_rate) == (4, 4, 2e-5)
    assert (seed.mcq_batch_size, seed.mcq_grad_accum, seed.mcq_learning_rate) == (2, 8, 1e-5)
    assert (seed.max_loops, seed.target_accuracy, seed.patience) == (10, 90.0, 3)


def test_the_demo_loads_its_loop_from_the_recipe_unchanged():
    """recipes/cpu-demo.yaml is the demo's loop: loaded, it is field by field the LoopConfig the demo
    built by hand before the recipe became its one source (the literal below is that old code, with
    the old DemoConfig defaults), and --loop-set changes only what it names."""
    from kormedqa.demo import DemoConfig, demo_loop_config

    cfg = DemoConfig()
    old = LoopConfig(
        base_model="cpt", dictionary=list(cfg.dictionary), train_data=cfg.mcq, eval_data=cfg.mcq, output="runs/demo/loop",
        max_loops=1, patience=1, dict_epochs=3.0, mcq_epochs=0.55, dict_learning_rate=5e-4, mcq_learning_rate=5e-4,
        dict_batch_size=8, mcq_batch_size=5, dict_grad_accum=1, mcq_grad_accum=1, group_by_length=True,
        answer_weight="2/3", rationale_template="dictionary_line", dict_rehearsal=0.5, option_rotations=5,
        rotation_batches=True, eval_mode="generate,loglik,cloze", eval_limit=None, eval_every=2, eval_batch_size=32,
        max_new_tokens=64, dict_eval_limit=40, device="auto", precision="auto", seed=42, resume=True,
        eval_split="test", test_split="",  # the demo reports its one loop on test; no separate test pass
        lora_dropout=0.0,  # since 2026-12-04 (docs/decisions.md, "LoRA without dropout")
    )
    assert demo_loop_config(cfg, "cpt", "runs/demo/loop") == old
    changed = demo_loop_config(DemoConfig(loop_set=["mcq_epochs=0.1", "eval_limit=8"], seed=3), "cpt", "x")
    assert (changed.mcq_epochs, changed.eval_limit, changed.seed, changed.dict_epochs) == (0.1, 8, 3, 3.0)
    for loop_set, message in ((["mcq_epoch=1"], "not loop settings: mcq_epoch"), (["mcq_epochs"], "name=value"),
                              (["mcq_batch_size=3"], "--mcq-batch-size")):
        with pytest.raises(UsageError, match=message):
            demo_loop_config(DemoConfig(loop_set=loop_set))
    with pytest.raises(UsageError, match="no such file"):
        demo_loop_config(DemoConfig(recipe="recipes/none.yaml"))


def test_the_demo_reads_one_recipe_unless_given_one():
    """The demo reads recipes/cpu-demo.yaml whatever the precision (since 2026-12-04 it fits its 30
    minutes in fp32 too; tests/test_demo.py checks an fp32 run records it); a recipe given wins."""
    from kormedqa.demo import DEMO_RECIPE, DemoConfig, demo_loop_config

    assert DEMO_RECIPE == "recipes/cpu-demo.yaml" and not (RECIPES / "cpu-demo-fp32.yaml").exists()
    default = demo_loop_config(DemoConfig(), "cpt", "x")
    assert default == demo_loop_config(DemoConfig(recipe=DEMO_RECIPE), "cpt", "x")
    given = demo_loop_config(DemoConfig(recipe=str(RECIPES / "cpu-demo-both-ways.yaml")), "cpt", "x")
    assert given != default


def test_dict_rehearsal_rows_cycle_the_dictionary_and_are_marked():
    from kormedqa.batching import REHEARSAL_FORMAT
    from kormedqa.loop import rehearsal_rows

    rows = [{"id": f"t{i}", "format": "dict", "prompt": f"p{i}", "completion": f"c{i}"} for i in range(3)]
    picked = rehearsal_rows(rows, 7, seed=1)
    assert len(picked) == 7 and {r["format"] for r in picked} == {REHEARSAL_FORMAT}
    # The first three are a permutation of all rows, then it cycles in the same order.
    assert sorted(r["id"] for r in picked[:3]) == ["t0", "t1", "t2"]
    assert [r["id"] for r in picked[3:6]] == [r["id"] for r in picked[:3]]
    assert rehearsal_rows(rows, 7, seed=1) == picked and rows[0]["format"] == "dict"
    assert rehearsal_rows(rows, 0.4, seed=1) == []


def test_rehearsal_rows_train_as_reasoning_not_as_the_weighted_answer(tokenizer):
    from kormedqa.batching import REHEARSAL_FORMAT, tokenize_rows
    from kormedqa.formats import dict_example
    from kormedqa.records import DictEntry

    row = dict_example(DictEntry(term="고혈압", definition="혈압이 높은 상태")).to_row()
    plain, rehearsed = tokenize_rows(tokenizer, [row, {**row, "format": REHEARSAL_FORMAT}], max_length=64)
    assert sum(plain["answer_mask"]) > 0 and sum(rehearsed["answer_mask"]) == 0
    assert plain["labels"] == rehearsed["labels"]


@pytest.mark.slow  # a whole loop end to end, then its resume
def test_resume_with_other_settings_is_refused_before_anything_is_written(tmp_path, tiny_model_dir):
    from kormedqa.errors import UsageError

    run_loop(_cfg(tmp_path, tiny_model_dir))
    run = tmp_path / "run"
    history = (run / "history.json").read_text()
    with pytest.raises(UsageError, match=r"mcq_learning_rate: None -> 0\.001.*--overwrite"):
        run_loop(_cfg(tmp_path, tiny_model_dir, resume=True, mcq_learning_rate=1e-3))
    assert (run / "history.json").read_text() == history and not (run / "loop_2").exists()


def test_resume_may_change_where_things_are_and_when_to_stop(tmp_path):
    from dataclasses import dataclass

    from kormedqa.errors import UsageError
    from kormedqa.fsio import write_json_atomic
    from kormedqa.provenance import check_resumed_settings, provenance

    @dataclass
    class Cfg:
        output: str = "a"
        base_model: str = "m"
        max_loops: int = 1
        dict_epochs: float = 1.0
        option_rotations: int = 1

    write_json_atomic(tmp_path / "run.json", provenance(Cfg()))
    check_resumed_settings(tmp_path, Cfg(output="b", base_model="/moved/m", max_loops=3))
    with pytest.raises(UsageError, match=r"dict_epochs: 1\.0 -> 3\.0, option_rotations: 1 -> 3"):
        check_resumed_settings(tmp_path, Cfg(dict_epochs=3.0, option_rotations=3))
    check_resumed_settings(tmp_path / "none", Cfg(dict_epochs=3.0))  # no run.json: nothing to compare
