"""Prompt/completion fine-tuning with answer-only labels, for both SFT tracks.

Built on `transformers.Trainer` (so `accelerate launch` runs it on several GPUs unchanged) with
one change to the loss: only supervised positions reach the 262k-entry lm_head, and the answer
(letter + `<end_of_turn>`) can carry a fixed share of the loss (`answer_weight`, the seed's 2/3),
because with a plain token mean the letter is ~1 of 40 supervised tokens and barely moves.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import ClassVar, Sequence

import torch

from .batching import CompletionCollator, tokenize_rows
from .checks import PRECISIONS, Range, check_config, check_device
from .errors import UsageError
from .trainer import (AnswerWeightedTrainer, JsonlLogCallback, last_trainer_checkpoint, prepare_trainable,
                      save_checkpoint, training_arguments)

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


# ---------------------------------------------------------------- loss


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

    Returns the training summary (steps, losses, time). `model`/`tokenizer` may be passed in by the
    loop to avoid reloading; otherwise `cfg.base_model` is loaded. `features` are `rows` already
    tokenised (`batching.tokenize_rows`, as the CLI does before claiming the output). `logs_dir`
    receives `train_log.jsonl` and `tensorboard/<stage>`; by default the folder holding `output`.
    Under several processes only the main one writes anything.
    """
    from .modeling import load_model, load_tokenizer, pick_device, pick_dtype

    cfg = cfg.resolved()
    weight = parse_answer_weight(cfg.answer_weight)
    output = Path(output)
    device = pick_device(cfg.device)
    dtype = pick_dtype(device, cfg.precision)
    torch.manual_seed(cfg.seed)
    work = output.parent / f".{output.name}.work"  # resumable Trainer checkpoints; removed when done
    # TrainingArguments first: it starts the distributed state (device per process, process group),
    # which model loading needs under accelerate launch (each process's GPU; FSDP's sharded loading).
    args = training_arguments(cfg, work, device, dtype)
    if tokenizer is None:
        tokenizer = load_tokenizer(cfg.base_model)
    if model is None:
        model = load_model(cfg.base_model, device=cfg.device, precision=cfg.precision, trainable_adapter=True)
    model = prepare_trainable(model, cfg)
    if features is None:
        features = tokenize_rows(tokenizer, rows, cfg.max_length, source=cfg.data or stage or output.name)
    from datasets import Dataset

    from .launch import is_main_process

    dataset = Dataset.from_list(features)
    logs_dir = Path(logs_dir or output.parent)
    callbacks = [JsonlLogCallback(logs_dir / "train_log.jsonl", stage or output.name)]
    tb_writer = None
    if is_main_process():
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback

        logs_dir.mkdir(parents=True, exist_ok=True)
        tb_writer = SummaryWriter(log_dir=str(logs_dir / "tensorboard" / (stage or output.name)))
        callbacks.append(TensorBoardCallback(tb_writer))
    trainer = AnswerWeightedTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=CompletionCollator(tokenizer.pad_token_id, padding_free=cfg.padding_free),
        answer_weight=weight,
        callbacks=callbacks,
    )
    resume_from = last_trainer_checkpoint(work) if cfg.resume else None
    started = time.time()
    try:
        result = trainer.train(resume_from_checkpoint=resume_from)
    finally:
        if tb_writer is not None:
            tb_writer.close()
    summary = {
        "stage": stage,
        "examples": len(features),
        "steps": trainer.state.global_step,
        "train_loss": result.training_loss,
        "seconds": time.time() - started,
        "answer_weight": weight,
        "log": [h for h in trainer.state.log_history if "loss" in h],
    }
    save_checkpoint(trainer, tokenizer, output, summary, work)
    return summary


