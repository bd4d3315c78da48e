"""One typed config per stage down to the trainer (issue 20, item 4)."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from helpers import TERMS

ROWS = [{"prompt": f"<start_of_turn>user\n{t}<end_of_turn>\n", "completion": f"<start_of_turn>model\n{d}<end_of_turn>"}
        for t, d in TERMS]


def test_training_arguments_takes_only_its_typed_settings():
    from kormedqa.sft import TrainConfig
    from kormedqa.trainer import TrainerSettings, training_arguments

    cfg = TrainConfig(track="dict", batch_size=2, grad_accum=1, learning_rate=1e-3, epochs=1.0, logging_steps=3,
                      save_steps=4, lr_scheduler_type="cosine")
    with pytest.raises(TypeError, match="TrainerSettings"):
        training_arguments(cfg, "/tmp/unused", torch.device("cpu"), torch.float32)
    args = training_arguments(cfg.trainer_settings(), "/tmp/unused", torch.device("cpu"), torch.float32)
    assert (args.logging_steps, args.save_steps, args.lr_scheduler_type, args.save_strategy) == (3, 4, "cosine", "steps")
    # Every schedule field must be given: a forgotten one is an error, not a silent default.
    required = [f.name for f in dataclasses.fields(TrainerSettings) if f.default is dataclasses.MISSING]
    assert {"logging_steps", "save_steps", "lr_scheduler_type", "group_by_length", "keep_order"} <= set(required)
    with pytest.raises(TypeError):
        TrainerSettings(epochs=1.0, max_steps=-1, batch_size=1, grad_accum=1, learning_rate=1e-3, seed=0)


def test_cpt_settings_are_typed_too():
    from kormedqa.cpt import CPTConfig
    from kormedqa.trainer import TrainerSettings

    s = CPTConfig(max_steps=3, batch_size=2, learning_rate=1e-3).trainer_settings()
    assert isinstance(s, TrainerSettings) and (s.max_steps, s.batch_size, s.save_steps) == (3, 2, 0)


def test_grpo_step_default_is_explicit_and_documented():
    from kormedqa.cli import parse
    from kormedqa.config import GRPO_MAX_STEPS
    from kormedqa.grpo import GRPOStageConfig
    from kormedqa.sft import TrainConfig

    assert TrainConfig(track="mcq", method="grpo").resolved().max_steps == GRPO_MAX_STEPS
    assert TrainConfig(track="mcq", method="grpo", max_steps=3).resolved().max_steps == 3
    assert TrainConfig(track="mcq").resolved().max_steps == -1  # sft: the epochs decide
    help_text = next(f for f in dataclasses.fields(TrainConfig) if f.name == "max_steps").metadata["help"]
    assert f"{GRPO_MAX_STEPS} steps" in help_text
    # The GRPO stage's config is composed by TrlParser like every other config, ranges checked.
    cfg = parse(GRPOStageConfig, ["--max-steps", "3", "--num-generations", "2", "--device", "cpu"], "grpo")
    assert (cfg.max_steps, cfg.num_generations, cfg.device) == (3, 2, "cpu")
    from kormedqa.errors import UsageError

    with pytest.raises(UsageError, match="--num-generations"):
        GRPOStageConfig(num_generations=1)


def _adapter_weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter" / "adapter_model.safetensors"))


@pytest.mark.slow  # `kormedqa train` as a subprocess
def test_run_train_is_the_train_command(tmp_path, tiny_model_dir):
    """`sft.run_train(cfg)` from Python and `kormedqa train` write the same adapter and run.json config."""
    from kormedqa.sft import TrainConfig, run_train

    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS), encoding="utf-8")
    flags = dict(base_model=str(tiny_model_dir), data=str(data), max_steps=2, batch_size=2, grad_accum=1,
                 device="cpu", precision="fp32", lora_r=4, lora_alpha=8)
    summary = run_train(TrainConfig(track="dict", output=str(tmp_path / "py"), **flags))
    assert summary["steps"] == 2
    argv = [a for k, v in flags.items() for a in (f"--{k.replace('_', '-')}", str(v))]
    cli = subprocess.run([sys.executable, "-m", "kormedqa", "train", "dict", "--output", str(tmp_path / "cli"), *argv],
                         capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr[-2000:]
    py, sh = _adapter_weights(tmp_path / "py"), _adapter_weights(tmp_path / "cli")
    assert py.keys() == sh.keys() and all(torch.equal(py[k], sh[k]) for k in py)
    recorded = [json.loads((tmp_path / d / "run.json").read_text())["config"] for d in ("py", "cli")]
    assert {k: v for k, v in recorded[0].items() if k != "output"} == {k: v for k, v in recorded[1].items() if k != "output"}
    assert recorded[0]["epochs"] == 3.0  # the resolved config: the track's defaults written out


def test_run_train_refuses_the_other_method():
    from kormedqa.errors import UsageError
    from kormedqa.grpo import run_train as grpo_train
    from kormedqa.sft import TrainConfig, run_train

    with pytest.raises(UsageError, match="grpo.run_train"):
        run_train(TrainConfig(track="mcq", method="grpo", data="x", output="y"))
    with pytest.raises(UsageError, match="sft.run_train"):
        grpo_train(TrainConfig(track="mcq", data="x", output="y"))
