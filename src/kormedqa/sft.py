"""Prompt/completion fine-tuning with answer-only labels, for both SFT tracks.

Built on `transformers.Trainer` (so `accelerate launch` runs it on several GPUs unchanged) with
one change to the loss: only supervised positions reach the 262k-entry lm_head, and the answer
(letter + `<end_of_turn>`) can carry a fixed share of the loss (`answer_weight`, the seed's 2/3),
because with a plain token mean the letter is ~1 of 40 supervised tokens and barely moves.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import ClassVar, Sequence

import torch

from .batching import CompletionCollator, tokenize_rows
from .checks import PRECISIONS, Range, check_config, check_device
from .errors import UsageError
from .trainer import (AnswerWeightedTrainer, last_trainer_checkpoint, prepare_trainable, save_checkpoint,
                      training_arguments)

log = logging.getLogger(__name__)

TRACK_DEFAULTS = {
    # The seed's hyperparameters (SEED_SPEC.md, "Hyperparameters").
    "dict": dict(epochs=3.0, batch_size=4, grad_accum=4, learning_rate=2e-5, max_length=512),
    "mcq": dict(epochs=5.0, batch_size=2, grad_accum=8, learning_rate=1e-5, max_length=1024),
}


@dataclass
class TrainConfig:
    """`kormedqa train dict|mcq`. Unset (None) values take the seed's defaults for the track."""

    data: str = field(default="", metadata={"help": "prepared prompt/completion JSONL (kormedqa prepare)"})
    output: str = field(default="", metadata={"help": "folder for the adapter, logs and run.json"})
    base_model: str = field(default="gemma3-270m", metadata={"help": "HF folder, hub id, adapter folder, or 'gemma3-270m'"})
    track: str = field(default="mcq", metadata={"help": "dict or mcq (sets the seed defaults)", "choices": ["dict", "mcq"]})
    method: str = field(default="sft", metadata={"help": "sft, or grpo (reward = the seed's reasoning score; mcq only, after SFT)",
                                                 "choices": ["sft", "grpo"]})
    num_generations: int = field(default=4, metadata={"help": "grpo: completions per prompt"})
    max_completion_length: int = field(default=128, metadata={"help": "grpo: generated tokens at most"})
    epochs: float | None = None
    max_steps: int = field(default=-1, metadata={"help": "stop after this many optimizer steps (overrides epochs)"})
    batch_size: int | None = None
    grad_accum: int | None = None
    learning_rate: float | None = None
    max_length: int | None = None
    answer_weight: str = field(
        default="2/3", metadata={"help": "share of the loss on the answer (letter + <end_of_turn>; e.g. 2/3, 1, 0.5) or 'none' for the plain token mean"}
    )
    lora_r: int = 64
    lora_alpha: int = 128
    lora_dropout: float = 0.05
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:0 ..."})
    precision: str = field(default="auto", metadata={"help": "auto (bf16 where the GPU or CPU computes it natively, else fp32; run.json says which and why), fp32, bf16",
                                                     "choices": list(PRECISIONS)})
    seed: int = 42
    group_by_length: bool = field(default=False, metadata={"help": "batch similar lengths together (less padding, faster; changes the data order)"})
    padding_free: bool = field(default=True, metadata={"help": "pack each batch into one row with restarting position_ids (no padding compute; same loss)"})
    logging_steps: int = 1
    save_steps: int = field(default=0, metadata={"help": "also keep a resumable Trainer checkpoint every N steps (0: none)"})
    resume: bool = False
    overwrite: bool = False

    RANGES: ClassVar[dict] = {
        "num_generations": Range(low=2), "max_completion_length": Range(low=1), "epochs": Range(low=0, low_open=True),
        "max_steps": Range(low=1, also=(-1,)), "batch_size": Range(low=1), "grad_accum": Range(low=1),
        "learning_rate": Range(low=0, low_open=True), "max_length": Range(low=2), "lora_r": Range(low=1),
        "lora_alpha": Range(low=0, low_open=True), "lora_dropout": Range(low=0, high=1, high_open=True),
        "logging_steps": Range(low=1), "save_steps": Range(low=0),
    }

    def __post_init__(self):
        """Choices and ranges at parse time (UsageError), so a mistake never reaches a claimed output."""
        check_config(self)
        check_device(self.device)
        parse_answer_weight(self.answer_weight)
        if self.method == "grpo" and self.track != "mcq":
            raise UsageError("--method grpo trains MCQs: use kormedqa train mcq")

    def resolved(self) -> "TrainConfig":
        from dataclasses import replace

        defaults = TRACK_DEFAULTS[self.track]
        return replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})


def parse_answer_weight(value: str | float | None) -> float | None:
    """'none' -> None (plain token mean); '2/3' or '0.667' -> a float in [0, 1]; else UsageError."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "")):
        return None
    try:
        weight = float(Fraction(value.strip())) if isinstance(value, str) else float(value)
    except (ValueError, ZeroDivisionError):
        raise UsageError(f"--answer-weight must be a number or fraction in [0, 1] or 'none', got {value!r}") from None
    if not 0.0 <= weight <= 1.0:
        raise UsageError(f"--answer-weight must lie in [0, 1] or be 'none', got {value}")
    return weight


# ---------------------------------------------------------------- the stage


def run_training(
    cfg: TrainConfig,
    rows: Sequence[dict],
    output: str | Path,
    model=None,
    tokenizer=None,
    stage: str = "",
    logs_dir: Path | None = None,
    features: list[dict] | None = None,
) -> dict:
    """Train on prompt/completion rows and write the adapter + tokenizer to `output` atomically.

    `rows` are dicts with string "prompt" and "completion" (kormedqa prepare's JSONL rows);
    `features` the same rows already tokenised (`batching.tokenize_rows`, as the CLI does before
    claiming the output). `model`/`tokenizer` may be passed in by the loop to avoid reloading;
    otherwise `cfg.base_model` is loaded. `stage` names the run in the logs; `logs_dir` receives
    `train_log.jsonl` and `tensorboard/<stage>` (default: the folder holding `output`).
    Under several processes only the main one writes anything.

    Returns the training summary: {"stage", "steps", "train_loss", "seconds" (wall), "examples",
    "answer_weight", "log": [Trainer log dicts with "loss"]}, also written to
    `output/training_summary.json`. Raises UsageError for a bad answer weight, ModelError for a
    model that cannot load, NonFiniteError when a loss becomes NaN/inf.
    """
    from datasets import Dataset

    from .stage import Stage

    cfg = cfg.resolved()
    weight = parse_answer_weight(cfg.answer_weight)
    run = Stage(stage, output, device=cfg.device, precision=cfg.precision, seed=cfg.seed, logs_dir=logs_dir)
    args = training_arguments(cfg, run.work, run.device, run.dtype)  # before loading: see kormedqa.stage
    model, tokenizer = run.load(cfg.base_model, tokenizer=tokenizer, model=model)
    model = prepare_trainable(model, cfg)
    if features is None:
        features = tokenize_rows(tokenizer, rows, cfg.max_length, source=cfg.data or stage or run.output.name)
    trainer = AnswerWeightedTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(features),
        data_collator=CompletionCollator(tokenizer.pad_token_id, padding_free=cfg.padding_free),
        answer_weight=weight,
        callbacks=run.callbacks(tensorboard=True),
    )
    result = run.train(trainer, resume_from=last_trainer_checkpoint(run.work) if cfg.resume else None)
    summary = run.summary(trainer, result, examples=len(features), answer_weight=weight)
    save_checkpoint(trainer, tokenizer, run.output, summary, run.work)
    return summary
