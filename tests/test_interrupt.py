"""Ctrl-C (SIGINT) in train, loop, eval and cpt: one line, exit 130, no scratch left, --resume continues (issue 26)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import TERMS, write_sample

REPO = Path(__file__).resolve().parents[1]
ROWS = [{"prompt": f"<start_of_turn>user\n{t}<end_of_turn>\n", "completion": f"<start_of_turn>model\n{d}<end_of_turn>"}
        for t, d in TERMS]


def _run(*argv, ctrl_c_at=None, cwd=None):
    """A kormedqa command in a subprocess; `ctrl_c_at` ("fault_point:N") delivers SIGINT to it there."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "KORMEDQA_LOG": "ERROR",
           "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("KORMEDQA_KILL_AT", None)
    if ctrl_c_at:
        env["KORMEDQA_KILL_AT"] = f"{ctrl_c_at}:SIGINT"
    return subprocess.run([sys.executable, "-m", "kormedqa", *map(str, argv)], capture_output=True, text=True,
                          env=env, timeout=600, cwd=cwd)


def _interrupted(run, command: str) -> str:
    """The one line a Ctrl-C prints (progress bars aside), after checking the exit status and no traceback."""
    assert run.returncode == 130, run.stderr[-3000:]
    assert "Traceback" not in run.stderr and "KeyboardInterrupt" not in run.stderr, run.stderr[-3000:]
    lines = [l for l in run.stderr.splitlines() if l.startswith("kormedqa")]
    assert len(lines) == 1 and lines[0].startswith(f"kormedqa {command}: interrupted (Ctrl-C)"), run.stderr[-3000:]
    return lines[0]


def _scratch(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp-" in p.name or ".old-" in p.name
            or (p.is_dir() and not any(p.iterdir()))]


def test_ctrl_c_in_train_keeps_a_checkpoint_that_resume_continues(tmp_path, tiny_model_dir):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS), encoding="utf-8")
    out = tmp_path / "run"
    flags = ["--data", data, "--base-model", tiny_model_dir, "--max-steps", 4, "--batch-size", 2, "--grad-accum", 1,
             "--device", "cpu", "--precision", "fp32", "--lora-r", 4, "--lora-alpha", 8]
    line = _interrupted(_run("train", "dict", "--output", out, *flags, ctrl_c_at="train_step_logged:1"), "train")
    assert "--resume" in line
    assert not _scratch(out) and not (out / "adapter").exists()
    # Training stopped at the end of the step after the signal and kept that step's checkpoint.
    assert (out / ".adapter.work" / "checkpoint-2" / "trainer_state.json").exists()

    resumed = _run("train", "dict", "--output", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    logged = [json.loads(l) for l in (out / "train_log.jsonl").read_text().splitlines()]
    assert [l["step"] for l in logged if "loss" in l] == [1, 2, 3, 4]
    assert (out / "adapter" / "adapter_model.safetensors").exists() and not (out / ".adapter.work").exists()


def test_ctrl_c_in_loop_then_resume_finishes(tmp_path, tiny_model_dir):
    sample = write_sample(tmp_path / "data")
    out = tmp_path / "loop"
    flags = ["--base-model", tiny_model_dir, "--dictionary", sample["dictionary"], "--train-data", sample["mcq"],
             "--eval-data", sample["mcq"], "--max-loops", 1, "--dict-max-steps", 3, "--mcq-max-steps", 1,
             "--dict-batch-size", 2, "--mcq-batch-size", 2, "--dict-grad-accum", 1, "--mcq-grad-accum", 1,
             "--eval-mode", "loglik", "--select-by", "loglik_accuracy", "--eval-batch-size", 4, "--device", "cpu",
             "--lora-r", 4, "--lora-alpha", 8]
    line = _interrupted(_run("loop", "--output", out, *flags, ctrl_c_at="train_step_logged:1"), "loop")
    assert "--resume" in line and not _scratch(out)
    assert list((out / "loop_1").glob(".after_type1.work/checkpoint-*"))
    resumed = _run("loop", "--output", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    history = json.loads((out / "history.json").read_text())
    assert history["loops"][0]["training"]["dict"]["steps"] == 3
    logged = [json.loads(l) for l in (out / "train_log.jsonl").read_text().splitlines()]
    assert [l["step"] for l in logged if "loss" in l and l["stage"] == "loop_1_dict"] == [1, 2, 3]


@pytest.mark.parametrize("command", ["eval", "cpt"])
def test_ctrl_c_in_eval_and_cpt_is_one_line_and_leaves_no_scratch(tmp_path, tiny_model_dir, command):
    sample = write_sample(tmp_path / "data")
    out = tmp_path / "out"
    if command == "eval":
        argv = ["eval", "--model", tiny_model_dir, "--data", sample["mcq"], "--mode", "generate", "--max-new-tokens", 2,
                "--batch-size", 1, "--device", "cpu"]
        at = "generate_batch:2"
    else:
        corpus = tmp_path / "corpus.txt"
        corpus.write_text("\n".join(d for _, d in TERMS) + "\n", encoding="utf-8")
        argv = ["cpt", "--base-model", tiny_model_dir, "--corpus", corpus, "--heldout", corpus, "--vocab",
                sample["dictionary"], "--max-steps", 4, "--batch-size", 2, "--device", "cpu", "--lora-r", 4,
                "--lora-alpha", 8]
        at = "train_step_logged:1"
    line = _interrupted(_run(*argv, "--output", out, ctrl_c_at=at), command)
    assert "--resume" not in line  # neither command takes it
    assert not (out.exists() and _scratch(out))
    assert not list(tmp_path.glob(".out*"))
    again = _run(*argv, "--output", out, *(["--overwrite"] if "--overwrite" in line else []))
    assert again.returncode == 0, again.stderr[-3000:]
