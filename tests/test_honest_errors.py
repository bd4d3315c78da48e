"""Honest summaries and clean errors (issue 26, item 6): both parse rates; every unusable input path is one
line and exit 2 in every command; hints name only flags the command has; eval folders carry run.json."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from kormedqa.cli import main
from helpers import write_sample

REPO = Path(__file__).resolve().parents[1]


def _run(capsys, argv):
    capsys.readouterr()
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def test_summary_line_shows_both_parse_rates():
    from kormedqa.evaluate import summary_line
    from kormedqa.metrics import proportion

    metrics = {"n": 10, "accuracy": proportion(2, 10), "parse_rate": proportion(10, 10),
               "format_parse_rate": proportion(0, 10)}
    line = summary_line(metrics)
    assert "letter after </reasoning> 0%" in line and "any letter 100%" in line


def _inputs(root: Path) -> dict:
    sample = write_sample(root / "data")
    (root / "folder").mkdir()
    (root / "folder" / "x.json").write_text("[]")
    return {**sample, "folder": str(root / "folder"), "missing": str(root / "no_such.json")}


# Every command that reads an input path, given a folder where a file belongs, or a path that is not there.
BAD_PATHS = {
    "prepare dict --data": ["prepare", "dict", "--data", "{bad}", "--output", "{out}.jsonl"],
    "prepare mcq --data": ["prepare", "mcq", "--data", "{bad}", "--output", "{out}.jsonl"],
    "prepare mcq --dictionary": ["prepare", "mcq", "--data", "{mcq}", "--dictionary", "{bad}", "--output", "{out}.jsonl"],
    "train --data": ["train", "mcq", "--data", "{bad}", "--output", "{out}"],
    "eval --task dict --dictionary": ["eval", "--task", "dict", "--dictionary", "{bad}", "--output", "{out}"],
    "loop --dictionary": ["loop", "--dictionary", "{bad}", "--train-data", "{mcq}", "--eval-data", "{mcq}",
                          "--output", "{out}"],
    "cpt --corpus": ["cpt", "--corpus", "{bad}", "--vocab", "{dictionary}", "--output", "{out}"],
    "cpt --vocab": ["cpt", "--vocab", "{bad}", "--output", "{out}"],
    "--config": ["prepare", "dict", "--config", "{bad}"],
}


@pytest.mark.parametrize("kind", ["folder", "missing"])
@pytest.mark.parametrize("case", list(BAD_PATHS))
def test_an_unusable_input_path_is_one_line_and_exit_2(tmp_path, capsys, case, kind):
    if case == "prepare mcq --data" and kind == "folder":
        pytest.skip("a folder is a valid MCQ source (its splits)")
    paths = _inputs(tmp_path)
    if case == "cpt --corpus" and kind == "folder":
        paths["folder"] = str(tmp_path / "data")  # a folder without .txt files
    argv = [a.format(bad=paths[kind], out=tmp_path / "out", **paths) for a in BAD_PATHS[case]]
    before = sorted(p for p in tmp_path.rglob("*"))
    code, err = _run(capsys, argv)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert paths[kind] in err or Path(paths[kind]).name in err, err
    assert sorted(p for p in tmp_path.rglob("*")) == before


def _flags_of(command: list[str]) -> set[str]:
    from kormedqa import cli
    from kormedqa.cpt import CPTConfig
    from kormedqa.evaluate import EvalConfig
    from kormedqa.loop import LoopConfig
    from kormedqa.prepare import PrepareConfig
    from kormedqa.sft import TrainConfig
    from dataclasses import fields

    cls = {"train": TrainConfig, "eval": EvalConfig, "cpt": CPTConfig, "loop": LoopConfig, "prepare": PrepareConfig,
           "merge": cli.MergeConfig, "model": cli.FetchConfig}[command[0]]
    return {"--" + f.name.replace("_", "-") for f in fields(cls)} | {"--config"}


def _named_flags(message: str) -> set[str]:
    return set(re.findall(r"--[a-z][a-z-]*[a-z]", message))


EXISTING_OUTPUT = {
    "train": ["train", "mcq", "--data", "{prepared}", "--base-model", "{model}", "--output", "{taken}"],
    "eval": ["eval", "--model", "{model}", "--data", "{mcq}", "--output", "{taken}"],
    "cpt": ["cpt", "--base-model", "{model}", "--output", "{taken}"],
    "merge": ["merge", "--adapter", "{adapter}", "--output", "{taken_file}"],
    "prepare": ["prepare", "dict", "--data", "{dictionary}", "--output", "{taken_file}"],
    "loop": ["loop", "--base-model", "{model}", "--dictionary", "{dictionary}", "--train-data", "{mcq}",
             "--eval-data", "{mcq}", "--output", "{taken}"],
}


@pytest.mark.parametrize("command", list(EXISTING_OUTPUT))
def test_existing_output_hint_names_only_the_commands_own_flags(tmp_path, capsys, tiny_model_dir, command):
    paths = _inputs(tmp_path)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    (tmp_path / "taken_file").write_text("mine")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tiny_model_dir)}))
    prepared = tmp_path / "p.jsonl"
    prepared.write_text(json.dumps({"prompt": "<start_of_turn>user\nq<end_of_turn>\n",
                                    "completion": "<start_of_turn>model\nA<end_of_turn>"}) + "\n")
    values = {**paths, "model": tiny_model_dir, "taken": tmp_path / "taken", "taken_file": tmp_path / "taken_file",
              "adapter": adapter, "prepared": prepared}
    argv = [a.format(**values) for a in EXISTING_OUTPUT[command]]
    code, err = _run(capsys, argv)
    assert code == 2 and "already exists" in err and "--overwrite" in err, err
    assert _named_flags(err) <= _flags_of(argv), err
    assert ("--resume" in err) == (command in ("train", "loop"))


@pytest.mark.parametrize("command", ["eval", "train", "merge"])
def test_out_of_memory_hint_names_only_the_commands_own_flags(monkeypatch, capsys, tmp_path, command):
    import kormedqa.cli as cli

    real = cli.COMMANDS[command]

    def parse_then_run_out_of_memory(argv):
        from kormedqa.cli import parse
        from kormedqa.evaluate import EvalConfig
        from kormedqa.sft import TrainConfig

        cls = {"eval": EvalConfig, "train": TrainConfig, "merge": cli.MergeConfig}[command]
        parse(cls, ["--output", str(tmp_path)], f"kormedqa {command}")
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setitem(cli.COMMANDS, command, parse_then_run_out_of_memory)
    (tmp_path / "x").write_text("")
    code, err = _run(capsys, [command])
    assert code == 2 and "out of memory" in err
    assert _named_flags(err) <= _flags_of([command]), err
    assert ("--resume" in err) == (command == "train")
    assert real is not None


def test_fetch_never_offers_to_overwrite_a_folder_of_other_files(tmp_path, capsys):
    sample = Path(write_sample(tmp_path / "sample")["mcq"]).parent
    before = sorted(sample.rglob("*"))
    for extra in ([], ["--overwrite"]):
        code, err = _run(capsys, ["model", "fetch", "--out", sample, *extra])
        assert code == 2 and "not a model folder" in err and "--overwrite" not in err, err
        assert sorted(sample.rglob("*")) == before


def test_eval_folder_has_run_json(tmp_path, tiny_model_dir, capsys):
    mcq = write_sample(tmp_path / "data", n_test=2)["mcq"]
    code, err = _run(capsys, ["eval", "--model", tiny_model_dir, "--data", mcq, "--mode", "loglik", "--output",
                              tmp_path / "eval", "--device", "cpu"])
    assert code == 0, err
    run = json.loads((tmp_path / "eval" / "run.json").read_text())
    assert run["kormedqa_command"] == "eval" and run["config"]["mode"] == "loglik" and run["data_sha256"]["data"]
