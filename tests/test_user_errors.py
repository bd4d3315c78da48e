"""A user's mistake is one line on stderr, exit 2, and nothing on disk (issue 13, item 7).

Each member of the class is run as a user runs it (a subprocess, default log level) in an empty
folder that holds only its inputs; afterwards the folder must hold exactly those inputs.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kormedqa.checks import Range, check_config
from kormedqa.scorer_table import ALL_SCORERS, EVAL_SCORERS, parse_eval_mode
from kormedqa.errors import DataError, LeakageError, ModelError, OutputExistsError, UsageError, UserError
from kormedqa.loop import SELECTABLE_BY_SCORER, LoopConfig, check_select_by

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
ENV.pop("KORMEDQA_LOG", None)  # the default level: an INFO line before the error would be a second line

ROW = {"prompt": "<start_of_turn>user\n질문<end_of_turn>", "completion": "<start_of_turn>model\n<reasoning>r</reasoning>A<end_of_turn>"}


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _inputs(root: Path) -> None:
    (root / "p.jsonl").write_text(json.dumps(ROW, ensure_ascii=False) + "\n", encoding="utf-8")
    (root / "d.json").write_text(json.dumps([{"term": "고혈압", "definition": "혈압이 높은 상태"}], ensure_ascii=False))
    (root / "q.jsonl").write_text(json.dumps({"id": "t1", "question": "고혈압의 정의는?", "A": "가", "B": "나", "C": "다",
                                              "D": "라", "E": "마", "answer": 1}, ensure_ascii=False) + "\n")
    (root / "unknown_key.yaml").write_text("data: [d.json]\noutput: out.jsonl\nbatchsize: 2\n")
    (root / "bad_range.yaml").write_text("data: [d.json]\noutput: out.jsonl\ndetailed_fraction: 2\n")
    (root / "taken").mkdir()
    (root / "taken" / "keep.txt").write_text("the user's file")
    (root / "notes").mkdir()
    (root / "notes" / "todo.txt").write_text("not a model")
    adapter = root / "adapter_without_base"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "gone-model", "r": 8}))


CASES = {
    "mistyped flag": (["train", "mcq", "--data", "p.jsonl", "--output", "o", "--batchsize", "2"], "--batch-size"),
    "unknown --task": (["eval", "--data", "q.jsonl", "--output", "o", "--task", "foo"], "invalid choice"),
    "bad --method": (["train", "mcq", "--data", "p.jsonl", "--output", "o", "--method", "ppo"], "invalid choice"),
    "bad --device": (["train", "mcq", "--data", "p.jsonl", "--output", "o", "--device", "gpu"], "--device"),
    "bad --mode": (["eval", "--data", "q.jsonl", "--output", "o", "--mode", "bogus"], "--mode"),
    "value out of range": (["train", "mcq", "--data", "p.jsonl", "--output", "o", "--lora-dropout", "1.5"],
                           "--lora-dropout must be in [0, 1)"),
    "bad int": (["train", "mcq", "--data", "p.jsonl", "--output", "o", "--batch-size", "two"], "invalid int"),
    "missing required --data": (["train", "mcq", "--output", "o"], "--data"),
    "select-by not computed": (["loop", "--output", "o", "--eval-mode", "loglik", "--select-by", "accuracy"],
                               "needs the generate scorer"),
    "grpo on the dict track": (["train", "dict", "--data", "p.jsonl", "--output", "o", "--method", "grpo"], "grpo"),
    "unknown config key": (["prepare", "dict", "--config", "unknown_key.yaml"], "--batchsize"),
    "config value out of range": (["prepare", "dict", "--config", "bad_range.yaml"], "--detailed-fraction"),
    "missing model": (["train", "mcq", "--data", "p.jsonl", "--output", "o", "--base-model", "no-such-model"],
                      "no such model folder"),
    "hub id offline, not cached": (["eval", "--model", "nobody/no-such-model", "--data", "q.jsonl", "--output", "o"],
                                   "HF_HUB_OFFLINE"),
    "adapter whose base is gone": (["eval", "--model", "adapter_without_base", "--data", "q.jsonl", "--output", "o"],
                                   "base model 'gone-model' not found"),
    "merge a non-adapter": (["merge", "--adapter", "notes", "--output", "o"], "not a model folder"),
    "existing output": (["train", "mcq", "--data", "p.jsonl", "--output", "taken", "--base-model", "TINY"],
                        "--overwrite"),
    "fetch over a user's folder": (["model", "fetch", "--out", "notes"], "not a model folder"),
    "unknown command": (["trian"], "unknown command"),
    "no subcommand": (["train"], "dict, mcq"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_mistake_is_one_line_exit_2_nothing_written(case, tmp_path, tiny_model_dir):
    argv, expected = CASES[case]
    argv = [str(tiny_model_dir) if a == "TINY" else a for a in argv]
    _inputs(tmp_path)
    before = _tree(tmp_path)
    run = subprocess.run([sys.executable, "-m", "kormedqa", *argv], capture_output=True, text=True, env=ENV,
                         cwd=tmp_path, timeout=300)
    lines = run.stderr.splitlines()
    assert run.returncode == 2, run.stderr
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("kormedqa") and ": error: " in lines[0], lines[0]
    assert expected in lines[0], lines[0]
    assert _tree(tmp_path) == before
    assert (tmp_path / "taken" / "keep.txt").read_text() == "the user's file"


# ---------------------------------------------------------------- the pieces, in-process


@pytest.mark.parametrize("mode", ["all", "generate,loglik", "generate", "loglik", "cloze", "loss", "generate,cloze", "loglik,loss"])
@pytest.mark.parametrize("select_by", [m for names in SELECTABLE_BY_SCORER.values() for m in names])
def test_select_by_is_accepted_exactly_when_eval_mode_computes_it(select_by, mode):
    scorers = parse_eval_mode(mode)
    computed = {m for s in scorers for m in SELECTABLE_BY_SCORER[s]}
    if select_by in computed:
        check_select_by(select_by, mode)
        LoopConfig(select_by=select_by, eval_mode=mode)
    else:
        with pytest.raises(UsageError, match=f"--select-by {select_by} needs"):
            check_select_by(select_by, mode)


def test_select_by_mapping():
    assert SELECTABLE_BY_SCORER["generate"] == ("accuracy", "reasoning_score")
    assert SELECTABLE_BY_SCORER["loglik"] == ("loglik_accuracy",)
    assert SELECTABLE_BY_SCORER["cloze"] == ("cloze_accuracy", "cloze_accuracy_norm")
    assert set(SELECTABLE_BY_SCORER) == set(EVAL_SCORERS)
    with pytest.raises(UsageError, match="must be one of"):
        check_select_by("f1", "all")


def test_eval_mode_parsing():
    assert parse_eval_mode("all") == ALL_SCORERS == ("generate", "loglik", "cloze", "loss")
    assert parse_eval_mode("loglik,generate") == ("generate", "loglik")
    assert parse_eval_mode("cloze, generate") == ("generate", "cloze")
    for bad in ("", "generate,bogus", ",", "Generate", "both"):
        with pytest.raises(UsageError):
            parse_eval_mode(bad)


def test_ranges_and_choices_hold_for_values_from_code_and_config_files():
    from kormedqa.cpt import CPTConfig
    from kormedqa.evaluate import EvalConfig
    from kormedqa.prepare import PrepareConfig
    from kormedqa.sft import TrainConfig

    for make, message in [
        (lambda: TrainConfig(batch_size=0), "--batch-size must be >= 1, got 0"),
        (lambda: TrainConfig(max_steps=0), "--max-steps must be >= 1 or -1, got 0"),
        (lambda: TrainConfig(learning_rate=0.0), "--learning-rate must be > 0"),
        (lambda: TrainConfig(track="rag"), "--track must be one of dict, mcq"),
        (lambda: EvalConfig(exam_type="surgeon"), "--exam-type must be one of"),
        (lambda: EvalConfig(limit=0), "--limit must be >= 1"),
        (lambda: LoopConfig(target_accuracy=120.0), "--target-accuracy must be in (0, 100]"),
        (lambda: LoopConfig(max_loops=0), "--max-loops must be >= 1, got 0"),
        (lambda: EvalConfig(precision="fp8"), "--precision must be one of"),
        (lambda: LoopConfig(stages="dict,rl"), "--stages"),
        (lambda: CPTConfig(vocab_repeat=-1), "--vocab-repeat must be >= 0"),
        (lambda: PrepareConfig(detailed_fraction=1.5), "--detailed-fraction must be in [0, 1]"),
    ]:
        with pytest.raises(UsageError) as err:
            make()
        assert message in str(err.value)
    TrainConfig(max_steps=-1, batch_size=None)  # unset (None) and the sentinel -1 pass


def test_range_descriptions():
    assert Range(low=0, high=1, high_open=True).describe() == "in [0, 1)"
    assert Range(low=1, also=(-1,)).describe() == ">= 1 or -1"
    assert not Range(low=0, low_open=True).accepts(0) and Range(low=0, low_open=True).accepts(1e-9)


def test_one_hierarchy_and_the_old_names_still_import():
    from kormedqa import cli, fsio, modeling, prepare, records

    assert records.DataError is DataError and modeling.ModelError is ModelError
    assert prepare.LeakageError is LeakageError and fsio.OutputExistsError is OutputExistsError
    assert cli.UsageError is UsageError
    for cls, builtin in ((UsageError, ValueError), (DataError, ValueError), (LeakageError, ValueError),
                         (ModelError, RuntimeError), (OutputExistsError, FileExistsError)):
        assert issubclass(cls, UserError) and issubclass(cls, builtin)
    assert str(DataError("a.jsonl", 3, "answer", "out of range")) == "a.jsonl:3: field 'answer' out of range"


def test_training_rows_are_checked_before_the_output_is_claimed(tmp_path, tiny_model_dir, capsys):
    """Rows that cannot train (none fits --max-length; grpo without answer letters) write nothing."""
    from kormedqa.cli import main

    data = tmp_path / "p.jsonl"
    data.write_text(json.dumps(ROW, ensure_ascii=False) + "\n", encoding="utf-8")
    base = ["--data", str(data), "--base-model", str(tiny_model_dir), "--output", str(tmp_path / "o")]
    assert main(["train", "mcq", *base, "--max-length", "4"]) == 2
    assert "--max-length 4" in capsys.readouterr().err
    no_letter = {**ROW, "completion": "<start_of_turn>model\n혈압이 높은 상태<end_of_turn>"}
    data.write_text(json.dumps(no_letter, ensure_ascii=False) + "\n", encoding="utf-8")
    assert main(["train", "mcq", *base, "--method", "grpo"]) == 2
    assert f"{data}:1: field 'completion'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
