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
from typing import Sequence

import torch

from .batching import CompletionCollator, tokenize_rows
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
    track: str = field(default="mcq", metadata={"help": "dict or mcq (sets the seed defaults)"})
    method: str = field(default="sft", metadata={"help": "sft, or grpo (reward = the seed's reasoning score; mcq only, after SFT)"})
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
    precision: str = field(default="auto", metadata={"help": "auto (bf16 where the GPU or CPU computes it natively, else fp32; run.json says which and why), fp32, bf16"})
    seed: int = 42
    group_by_length: bool = field(default=False, metadata={"help": "batch similar lengths together (less padding, faster; changes the data order)"})
    padding_free: bool = field(default=True, metadata={"help": "pack each batch into one row with restarting position_ids (no padding compute; same loss)"})
    logging_steps: int = 1
    save_steps: int = field(default=0, metadata={"help": "also keep a resumable Trainer checkpoint every N steps (0: none)"})
    resume: bool = False
    overwrite: bool = False

    def resolved(self) -> "TrainConfig":
        from dataclasses import replace

        defaults = TRACK_DEFAULTS[self.track]
        return replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})


def parse_answer_weight(value: str | float | None) -> float | None:
    """'none' -> None (plain token mean); '2/3' or '0.667' -> a float in [0, 1]."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "")):
        return None
    weight = float(Fraction(value)) if isinstance(value, str) else float(value)
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"--answer-weight must lie in [0, 1] or be 'none', got {value}")
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
) -> dict:
    """Train on prompt/completion rows and write the adapter + tokenizer to `output` atomically.

    Returns the training summary (steps, losses, time). `model`/`tokenizer` may be passed in by the
    loop to avoid reloading; otherwise `cfg.base_model` is loaded. `logs_dir` receives
    `train_log.jsonl` and `tensorboard/<stage>`; by default the folder holding `output`.
    """
    from .modeling import load_model, load_tokenizer, pick_device, pick_dtype

    cfg = cfg.resolved()
    weight = parse_answer_weight(cfg.answer_weight)
    output = Path(output)
    device = pick_device(cfg.device)
    dtype = pick_dtype(device, cfg.precision)
    torch.manual_seed(cfg.seed)
    if tokenizer is None:
        tokenizer = load_tokenizer(cfg.base_model)
    if model is None:
        model = load_model(cfg.base_model, device=cfg.device, precision=cfg.precision, trainable_adapter=True)
    model = prepare_trainable(model, cfg)
    features = tokenize_rows(tokenizer, rows, cfg.max_length)
    from datasets import Dataset

    dataset = Dataset.from_list(features)
    work = output.parent / f".{output.name}.work"  # resumable Trainer checkpoints; removed when done
    logs_dir = Path(logs_dir or output.parent)
    logs_dir.mkdir(parents=True, exist_ok=True)
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    tb_writer = SummaryWriter(log_dir=str(logs_dir / "tensorboard" / (stage or output.name)))
    trainer = AnswerWeightedTrainer(
        model=model,
        args=training_arguments(cfg, work, device, dtype),
        train_dataset=dataset,
        data_collator=CompletionCollator(tokenizer.pad_token_id, padding_free=cfg.padding_free),
        answer_weight=weight,
        callbacks=[JsonlLogCallback(logs_dir / "train_log.jsonl", stage or output.name), TensorBoardCallback(tb_writer)],
    )
    resume_from = last_trainer_checkpoint(work) if cfg.resume else None
    started = time.time()
    try:
        result = trainer.train(resume_from_checkpoint=resume_from)
    finally:
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


