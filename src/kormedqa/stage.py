"""The frame every gradient stage (SFT, GRPO, CPT) runs in, so each stage module holds only its own step.

A stage is, in this order:

    stage = Stage(name, output, choice, seed=...)   # device and dtype of the run's choice, seed, .work folder
    args = training_arguments(cfg, stage.work, stage.device, stage.dtype)  # (GRPO: its GRPOConfig)
    model, tokenizer = stage.load(base_model, tokenizer=..., model=...)
    trainer = SomeTrainer(model=model, args=args, ..., callbacks=stage.callbacks())
    result = stage.train(trainer)                                          # timed; TensorBoard closed
    summary = stage.summary(trainer, result, examples=...)
    save_checkpoint(trainer, tokenizer, stage.output, summary, stage.work)  # or the stage's own save

The training arguments come before the model because they start the distributed state (device per
process, process group) that model loading needs under `accelerate launch` (each process's GPU;
FSDP's sharded loading). Stage modules import this module and `trainer`, never each other.
"""
from __future__ import annotations

import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import torch

from .hardware import PrecisionChoice
from .launch import is_main_process
from .modeling import load_model, load_tokenizer
from .trainer import JsonlLogCallback


class Stage:
    """Device, dtype, seed, folders, logging, timing and saving of one training stage.

    `name` labels the stage's lines in `train_log.jsonl` and its TensorBoard folder (default: the
    output's folder name). `output` is the folder the stage publishes (atomically, at the end);
    `work` holds the Trainer's resumable checkpoints and is removed once the output is written
    (default: `.<output name>.work` beside the output). `logs_dir` receives `train_log.jsonl` and
    `tensorboard/<name>` (default: the folder holding `output`). `choice` is the run's device and precision
    (`hardware.choose`, decided once by the run's entry point).
    """

    def __init__(self, name: str, output: str | Path, choice: PrecisionChoice, seed: int = 42,
                 logs_dir: str | Path | None = None, work: str | Path | None = None):
        self.output = Path(output)
        self.stage = name  # as given, for the summary
        self.name = name or self.output.name
        self.work = Path(work) if work is not None else self.output.parent / f".{self.output.name}.work"
        self.logs_dir = Path(logs_dir or self.output.parent)
        self.choice = choice
        self.device = choice.torch_device
        self.dtype = choice.dtype
        self.seed = seed
        self.seconds = 0.0
        self._tb_writer = None
        torch.manual_seed(seed)

    def load(self, base_model: str, tokenizer=None, model=None, trainable_adapter: bool = True):
        """(model, tokenizer) for `base_model` (a model folder, adapter folder, hub id or 'gemma3-270m').

        Either may be passed in to reuse one already loaded. An adapter folder loads as a PeftModel
        whose LoRA stays trainable when `trainable_adapter`. Raises ModelError for a model or
        tokenizer that cannot load.
        """
        if tokenizer is None:
            tokenizer = load_tokenizer(base_model)
        if model is None:
            model = load_model(base_model, self.choice, trainable_adapter=trainable_adapter)
        return model, tokenizer

    def callbacks(self, tensorboard: bool = False) -> list:
        """Trainer callbacks: the JSONL log (every process checks losses are finite; the main one writes),
        and with `tensorboard` a TensorBoard writer on the main process (closed by `train`)."""
        callbacks = [JsonlLogCallback(self.logs_dir / "train_log.jsonl", self.name)]
        if tensorboard and is_main_process():
            from torch.utils.tensorboard import SummaryWriter
            from transformers.integrations import TensorBoardCallback

            self.logs_dir.mkdir(parents=True, exist_ok=True)
            self._tb_writer = SummaryWriter(log_dir=str(self.logs_dir / "tensorboard" / self.name))
            callbacks.append(TensorBoardCallback(self._tb_writer))
        return callbacks

    def train(self, trainer, resume_from: str | None = None, around: Callable | None = None):
        """`trainer.train(resume_from_checkpoint=resume_from)`, timed into `self.seconds` (wall seconds).

        `around(model)` is an optional context manager wrapped around the training (GRPO's
        `cpu_vocab_projection`). Returns the Trainer's `TrainOutput`; whatever it raises propagates
        (NonFiniteError for a NaN/inf loss), after the TensorBoard writer is closed.
        """
        started = time.time()
        try:
            with around(trainer.model) if around is not None else nullcontext():
                result = trainer.train(resume_from_checkpoint=resume_from)
        finally:
            self.seconds = time.time() - started
            if self._tb_writer is not None:
                self._tb_writer.close()
                self._tb_writer = None
        return result

    def summary(self, trainer, result, log_keys: tuple[str, ...] = ("loss",), **extra) -> dict:
        """The stage's training summary: stage, steps, train_loss, seconds, `extra`, and the log lines
        holding any of `log_keys` (Trainer's log history: dicts of step, loss, learning_rate ...)."""
        return {
            "stage": self.stage,
            "steps": trainer.state.global_step,
            "train_loss": result.training_loss,
            "seconds": self.seconds,
            **extra,
            "log": [h for h in trainer.state.log_history if any(k in h for k in log_keys)],
        }

    def drop_work(self) -> None:
        """Remove the work folder (Trainer checkpoints) once the stage's output is published."""
        shutil.rmtree(self.work, ignore_errors=True)
