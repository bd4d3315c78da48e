"""`kormedqa train --resume` checks what it resumes and survives a kill inside a checkpoint save (issue 26)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import TERMS, write_sample

REPO = Path(__file__).resolve().parents[1]
ROWS = [{"prompt": f"<start_of_turn>user\n{t}<end_of_turn>\n", "completion": f"<start_of_turn>model\n{d}<end_of_turn>"}
        for t, d in TERMS]


def _env(kill_at=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "KORMEDQA_LOG": "WARNING",
           "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("KORMEDQA_KILL_AT", None)
    if kill_at:
        env["KORMEDQA_KILL_AT"] = kill_at
    return env


def _train(out, *flags, kill_at=None, track="dict"):
    """`kormedqa train` in a subprocess (which a fault point can kill)."""
    return subprocess.run([sys.executable, "-m", "kormedqa", "train", track, "--output", str(out), *map(str, flags)],
                          capture_output=True, text=True, env=_env(kill_at), timeout=600)


class Run:
    def __init__(self, returncode, stderr):
        self.returncode, self.stderr = returncode, stderr


def _main(capsys, caplog, command, out, *flags):
    """A kormedqa command in this process (seconds faster than a subprocess); stderr with the log's warnings."""
    from kormedqa.cli import main

    capsys.readouterr()
    caplog.clear()
    code = main([*command, "--output", str(out), *map(str, flags)])
    err = capsys.readouterr().err
    return Run(code, err + "".join(f"{r.getMessage()}\n" for r in caplog.records if r.levelname == "WARNING"))


def _settings(data, model):
    return ["--data", data, "--base-model", model, "--max-steps", 3, "--batch-size", 2, "--grad-accum", 1,
            "--save-steps", 1, "--device", "cpu", "--precision", "fp32", "--lora-r", 4, "--lora-alpha", 8,
            "--learning-rate", 1e-3]


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _logged(out: Path) -> list[dict]:
    return [json.loads(l) for l in (out / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    """An uninterrupted run, and a run killed inside its 2nd checkpoint save (checkpoint-2 without trainer_state)."""
    tmp = tmp_path_factory.mktemp("train")
    data = tmp / "rows.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS), encoding="utf-8")
    settings = _settings(data, tiny_model_dir)
    from kormedqa.cli import main

    assert main(["train", "dict", "--output", str(tmp / "ref"), *map(str, settings)]) == 0
    killed = _train(tmp / "killed", *settings, kill_at="trainer_checkpoint_saving:2")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    return tmp, data, settings


def _copy(runs, tmp_path, name="killed"):
    tmp, _, _ = runs
    shutil.copytree(tmp / name, tmp_path / name)
    return tmp_path / name


@pytest.mark.slow  # uses the `runs` fixture: `kormedqa train` SIGKILLed in a subprocess
def test_kill_inside_a_checkpoint_save_resumes_from_the_newest_complete_one(runs, tmp_path, capsys, caplog):
    tmp, data, settings = runs
    out = _copy(runs, tmp_path)
    work = out / ".adapter.work"
    assert (work / "checkpoint-2" / "adapter_model.safetensors").exists()
    assert not (work / "checkpoint-2" / "trainer_state.json").exists()  # the kill came inside the save
    assert len([l for l in _logged(out) if l.get("step") == 2]) == 1  # step 2 was logged before the kill

    resumed = _main(capsys, caplog, ["train", "dict"], out, *settings, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "checkpoint-2 is incomplete" in resumed.stderr
    # Each step once in the log, with the uninterrupted run's losses.
    steps = [l["step"] for l in _logged(out) if "loss" in l]
    assert steps == [1, 2, 3]
    ref_losses = [l["loss"] for l in _logged(tmp / "ref") if "loss" in l]
    assert [l["loss"] for l in _logged(out) if "loss" in l] == pytest.approx(ref_losses, rel=1e-5)
    # train_loss averages all three steps, not only the two after the resume.
    summary = json.loads((out / "adapter" / "training_summary.json").read_text())
    ref_summary = json.loads((tmp / "ref" / "adapter" / "training_summary.json").read_text())
    assert summary["steps"] == 3
    assert summary["train_loss"] == pytest.approx(ref_summary["train_loss"], rel=1e-5)
    assert not work.exists()


@pytest.mark.slow  # uses the `runs` fixture: `kormedqa train` SIGKILLed in a subprocess
def test_resume_with_only_the_output_takes_the_recorded_settings(runs, tmp_path, capsys, caplog):
    out = _copy(runs, tmp_path)
    before = json.loads((out / "run.json").read_text())
    resumed = _main(capsys, caplog, ["train", "dict"], out, "--resume")  # no --data, --base-model, schedule: all from run.json
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((out / "adapter" / "training_summary.json").read_text())["steps"] == 3
    after = json.loads((out / "run.json").read_text())
    after.pop("peak_memory", None), before.pop("peak_memory", None)  # measured anew by each attempt
    assert after == before  # the run's record (command, settings, data) is the one it started with


@pytest.mark.parametrize("flags,named", [
    (["--learning-rate", "0.01"], "learning_rate: 0.001 -> 0.01"),
    (["--lora-r", "8"], "lora_r: 4 -> 8"),
    (["--answer-weight", "none"], "answer_weight"),
])
@pytest.mark.slow  # uses the `runs` fixture: `kormedqa train` SIGKILLed in a subprocess
def test_resume_with_a_changed_setting_is_refused(runs, tmp_path, flags, named, capsys, caplog):
    out = _copy(runs, tmp_path)
    before = _tree(out)
    refused = _main(capsys, caplog, ["train", "dict"], out, "--resume", *flags)
    assert refused.returncode == 2 and len(refused.stderr.splitlines()) == 1, refused.stderr
    assert named in refused.stderr and "--overwrite" in refused.stderr
    assert _tree(out) == before


@pytest.mark.slow  # uses the `runs` fixture: `kormedqa train` SIGKILLed in a subprocess
def test_resume_with_changed_data_is_refused(runs, tmp_path, capsys, caplog):
    out = _copy(runs, tmp_path)
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS[::-1]), encoding="utf-8")
    before = _tree(out)
    refused = _main(capsys, caplog, ["train", "dict"], out, "--resume", "--data", data)
    assert refused.returncode == 2 and "data" in refused.stderr and "other content" in refused.stderr
    assert _tree(out) == before


@pytest.mark.slow  # uses the `runs` fixture: `kormedqa train` SIGKILLed in a subprocess
def test_resume_where_no_checkpoint_was_kept_says_so(runs, tmp_path, capsys, caplog):
    _, data, settings = runs
    out = _copy(runs, tmp_path)  # a run killed before it kept a checkpoint (--save-steps 0 keeps none)
    shutil.rmtree(out / ".adapter.work")
    before = _tree(out)
    refused = _main(capsys, caplog, ["train", "dict"], out, "--resume")
    assert refused.returncode == 2 and len(refused.stderr.splitlines()) == 1, refused.stderr
    assert "nothing to resume from" in refused.stderr and "--save-steps" in refused.stderr
    assert _tree(out) == before
    missing = _main(capsys, caplog, ["train", "dict"], tmp_path / "never_made", *settings, "--resume")
    assert missing.returncode == 2 and "nothing to resume from" in missing.stderr
    assert not (tmp_path / "never_made").exists()


def _loop_folder(root: Path) -> Path:
    (root / "loop_1").mkdir(parents=True)
    (root / "history.json").write_text('{"loops": []}')
    (root / "run.json").write_text(json.dumps({"kormedqa_command": "loop", "config": {"output": str(root)}}))
    return root


def _eval_folder(root: Path) -> Path:  # as eval wrote them before run.json: metrics and predictions only
    root.mkdir(parents=True)
    (root / "metrics.json").write_text("{}")
    (root / "predictions.jsonl").write_text("")
    return root


@pytest.mark.slow  # uses the `runs` fixture: `kormedqa train` SIGKILLed in a subprocess
def test_resume_refuses_a_folder_another_command_wrote(runs, tmp_path, tiny_model_dir, capsys, caplog):
    _, data, settings = runs
    for folder, made_by in ((_loop_folder(tmp_path / "loop"), "loop"), (_eval_folder(tmp_path / "eval"), "eval")):
        before = _tree(folder)
        refused = _main(capsys, caplog, ["train", "dict"], folder, *settings, "--resume")
        assert refused.returncode == 2 and len(refused.stderr.splitlines()) == 1, refused.stderr
        assert f"written by kormedqa {made_by}" in refused.stderr
        assert _tree(folder) == before
    # ... and the loop refuses a train folder.
    train_folder = _copy(runs, tmp_path)
    sample = write_sample(tmp_path / "data")
    before = _tree(train_folder)
    refused = _main(capsys, caplog, ["loop"], train_folder, "--resume", "--base-model", tiny_model_dir,
                    "--dictionary", sample["dictionary"], "--train-data", sample["mcq"], "--eval-data", sample["mcq"],
                    "--device", "cpu")
    assert refused.returncode == 2 and "written by kormedqa train" in refused.stderr, refused.stderr
    assert _tree(train_folder) == before


def test_loop_resume_takes_the_recorded_settings(tmp_path):
    from kormedqa.cli import parse
    from kormedqa.loop import LoopConfig
    from kormedqa.provenance import provenance

    started = LoopConfig(output=str(tmp_path), mcq_learning_rate=3e-4, max_loops=4, dictionary=["a.json", "b.json"],
                         eval_mode="generate,loglik", select_by="loglik_accuracy")
    (tmp_path / "run.json").write_text(json.dumps(provenance(started, command="loop"), default=str))
    resumed = parse(LoopConfig, ["--resume", "--output", str(tmp_path)], "kormedqa loop")
    assert resumed == LoopConfig(**{**started.__dict__, "resume": True})
    # A flag given wins over the record (and is then checked against it by the loop itself).
    assert parse(LoopConfig, ["--resume", "--output", str(tmp_path), "--max-loops", "6"], "x").max_loops == 6
