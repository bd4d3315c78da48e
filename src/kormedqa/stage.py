"""The frame every gradient stage (SFT, GRPO, CPT) runs in, so each stage module holds only its own step.

A stage is, in this order:

    stage = Stage(name, output, device=..., precision=..., seed=...)   # device, dtype, seed, .work folder
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

import json
import logging
import shutil
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import torch

from .launch import all_gather, is_main_process
from .runs import write_json_atomic

try:
    import resource
except ImportError:  # not a POSIX system: peak RSS is reported as None
    resource = None

log = logging.getLogger(__name__)


class Stage:
    """Device, dtype, seed, folders, logging, timing and saving of one training stage.

    `name` labels the stage's lines in `train_log.jsonl` and its TensorBoard folder (default: the
    output's folder name). `output` is the folder the stage publishes (atomically, at the end);
    `work` holds the Trainer's resumable checkpoints and is removed once the output is written
    (default: `.<output name>.work` beside the output). `logs_dir` receives `train_log.jsonl` and
    `tensorboard/<name>` (default: the folder holding `output`). `device` is a torch device string
    or "auto"; `precision` one of `checks.PRECISIONS`. Raises ModelError for a precision the
    device cannot compute in.
    """

    def __init__(self, name: str, output: str | Path, device: str = "auto", precision: str = "auto", seed: int = 42,
                 logs_dir: str | Path | None = None, work: str | Path | None = None):
        from .modeling import pick_device, pick_dtype

        self.output = Path(output)
        self.stage = name  # as given, for the summary
        self.name = name or self.output.name
        self.work = Path(work) if work is not None else self.output.parent / f".{self.output.name}.work"
        self.logs_dir = Path(logs_dir or self.output.parent)
        self.device_name = device
        self.precision = precision
        self.device = pick_device(device)
        self.dtype = pick_dtype(self.device, precision)
        self.seed = seed
        self.seconds = 0.0
        self.peak_memory: dict = {}
        self._tb_writer = None
        torch.manual_seed(seed)

    def load(self, base_model: str, tokenizer=None, model=None, trainable_adapter: bool = True):
        """(model, tokenizer) for `base_model` (a model folder, adapter folder, hub id or 'gemma3-270m').

        Either may be passed in to reuse one already loaded. An adapter folder loads as a PeftModel
        whose LoRA stays trainable when `trainable_adapter`. Raises ModelError for a model or
        tokenizer that cannot load.
        """
        from .modeling import load_model, load_tokenizer

        if tokenizer is None:
            tokenizer = load_tokenizer(base_model)
        if model is None:
            model = load_model(base_model, device=self.device_name, precision=self.precision,
                               trainable_adapter=trainable_adapter)
        return model, tokenizer

    def callbacks(self, tensorboard: bool = False) -> list:
        """Trainer callbacks: the JSONL log (every process checks losses are finite; the main one writes),
        and with `tensorboard` a TensorBoard writer on the main process (closed by `train`)."""
        from .launch import is_main_process
        from .trainer import JsonlLogCallback

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
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        try:
            with around(trainer.model) if around is not None else nullcontext():
                result = trainer.train(resume_from_checkpoint=resume_from)
        finally:
            self.seconds = time.time() - started
            if self._tb_writer is not None:
                self._tb_writer.close()
                self._tb_writer = None
        self.peak_memory = peak_memory(self.device)
        if is_main_process():
            log.info("%s: %s", self.name, memory_line(self.peak_memory))
        return result

    def summary(self, trainer, result, log_keys: tuple[str, ...] = ("loss",), **extra) -> dict:
        """The stage's training summary: stage, steps, train_loss, seconds, `extra`, and the log lines
        holding any of `log_keys` (Trainer's log history: dicts of step, loss, learning_rate ...)."""
        return {
            "stage": self.stage,
            "steps": trainer.state.global_step,
            "train_loss": result.training_loss,
            "seconds": self.seconds,
            "peak_memory": self.peak_memory,
            **extra,
            "log": [h for h in trainer.state.log_history if any(k in h for k in log_keys)],
        }

    def drop_work(self) -> None:
        """Remove the work folder (Trainer checkpoints) once the stage's output is published."""
        shutil.rmtree(self.work, ignore_errors=True)


GIB = 2**30


def peak_memory(device: torch.device) -> dict:
    """The peak memory of this training, measured, the highest over all processes (several: DDP, FSDP).

    {"processes": N, "cpu_peak_rss_gib": the process's peak resident set size since it started
    (getrusage ru_maxrss; a process that loaded something larger before training reports that),
    and on a CUDA device "gpu_max_memory_allocated_gib": torch.cuda.max_memory_allocated since
    `Stage.train` reset it (tensors only; the caching allocator reserves somewhat more)}, in GiB
    rounded to 3 places. Values are None where the platform cannot say (getrusage is POSIX).
    """
    rss_bytes = None
    if resource is not None:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rss_bytes = rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB, macOS bytes
    gpu = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    every = all_gather((rss_bytes, gpu))
    rss_bytes = max((r for r, _ in every if r is not None), default=None)
    gpu = max((g for _, g in every if g is not None), default=None)
    out = {"processes": len(every), "cpu_peak_rss_gib": None if rss_bytes is None else round(rss_bytes / GIB, 3)}
    if device.type == "cuda":
        out["gpu_max_memory_allocated_gib"] = round(gpu / GIB, 3)
    return out


def memory_line(peak: dict) -> str:
    """One line for the log: 'peak memory: GPU 12.3 GiB (max_memory_allocated), CPU RSS 5.1 GiB'."""
    parts = []
    if peak.get("gpu_max_memory_allocated_gib") is not None:
        parts.append(f"GPU {peak['gpu_max_memory_allocated_gib']:.2f} GiB (max_memory_allocated)")
    if peak.get("cpu_peak_rss_gib") is not None:
        parts.append(f"CPU RSS {peak['cpu_peak_rss_gib']:.2f} GiB")
    return "peak memory: " + (", ".join(parts) or "not measurable here")


def record_peak_memory(run_json: str | Path, peak: dict | None) -> None:
    """Add `peak` (a `peak_memory` dict) to run.json's "peak_memory", keeping the larger of each value
    already there (a loop records the peak over its stages). Main process only; nothing without run.json."""
    path = Path(run_json)
    if not peak or not is_main_process() or not path.exists():
        return
    record = json.loads(path.read_text(encoding="utf-8"))
    old = record.get("peak_memory") or {}
    record["peak_memory"] = {k: max((x for x in (v, old.get(k)) if x is not None), default=None) for k, v in peak.items()}
    write_json_atomic(path, record)
