"""Experiment tracking (issue 26, item 7): --report-to takes transformers' integration names; adapters carry a
model card saying what was trained on which data with which result."""
from __future__ import annotations

import json

import pytest
import torch

from helpers import TERMS

ROWS = [{"prompt": f"<start_of_turn>user\n{t}<end_of_turn>\n", "completion": f"<start_of_turn>model\n{d}<end_of_turn>"}
        for t, d in TERMS]


def test_report_to_takes_transformers_names_and_refuses_others():
    from kormedqa.cpt import CPTConfig
    from kormedqa.errors import UsageError
    from kormedqa.loop import LoopConfig
    from kormedqa.sft import TrainConfig
    from kormedqa.trainer import training_arguments

    from dataclasses import replace

    cfg = TrainConfig(track="dict", report_to="tensorboard, tensorboard", batch_size=1, grad_accum=1,
                      learning_rate=1e-3, epochs=1.0)
    assert cfg.report_targets() == ("tensorboard",)
    # TensorBoard is attached by kormedqa itself (its folder is the run's); the others go to transformers.
    settings = replace(cfg.trainer_settings(), report_to=("tensorboard", "wandb", "mlflow"))
    args = training_arguments(settings, "/tmp/unused", torch.device("cpu"), torch.float32)
    assert args.report_to == ["wandb", "mlflow"]
    assert training_arguments(cfg.trainer_settings(), "/tmp/unused", torch.device("cpu"), torch.float32).report_to == []
    assert TrainConfig(track="dict", report_to="none").report_targets() == ()
    for cls in (TrainConfig, CPTConfig, LoopConfig):
        with pytest.raises(UsageError, match="--report-to takes transformers' integration names"):
            cls(report_to="tensorbord")


def test_a_tracker_that_is_not_installed_is_one_line_before_anything_is_written(tmp_path, capsys):
    from transformers.integrations.integration_utils import get_available_reporting_integrations

    from kormedqa.cli import main

    missing = next(n for n in ("wandb", "mlflow", "comet_ml", "neptune") if n not in get_available_reporting_integrations())
    code = main(["train", "dict", "--data", "x.jsonl", "--output", str(tmp_path / "out"), "--report-to", missing])
    err = capsys.readouterr().err
    assert code == 2 and f"--report-to {missing}: not installed" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_tensorboard_and_the_model_card(tmp_path, tiny_model_dir, tokenizer):
    """A tiny SFT run: TensorBoard event files as --report-to tensorboard asks, none with --report-to none,
    and README.md in the adapter says base, data, settings and result instead of PEFT's template."""
    from kormedqa.sft import TrainConfig, run_training

    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS), encoding="utf-8")
    for report_to in ("tensorboard", "none"):
        cfg = TrainConfig(track="dict", base_model=str(tiny_model_dir), data=str(data), max_steps=2, batch_size=2,
                          grad_accum=1, learning_rate=1e-3, device="cpu", precision="fp32", lora_r=4, lora_alpha=8,
                          report_to=report_to)
        out = tmp_path / report_to
        summary = run_training(cfg, ROWS, out / "adapter", tokenizer=tokenizer, stage="dict", logs_dir=out)
        events = list((out / "tensorboard").rglob("events.out.tfevents.*")) if (out / "tensorboard").exists() else []
        assert bool(events) == (report_to == "tensorboard")
    card = (tmp_path / "tensorboard" / "adapter" / "README.md").read_text()
    assert card.startswith("---\nbase_model: ") and str(tiny_model_dir) in card and "library_name: peft" in card
    assert f"{data} (6 examples)" in card and "| learning_rate | 0.001 |" in card
    assert f"train loss {summary['train_loss']:.4f}" in card and "2 optimizer steps" in card
    assert "[More Information Needed]" not in card  # PEFT's empty template is gone
