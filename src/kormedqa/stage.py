"""The frame every gradient stage (SFT, GRPO, CPT) runs in, so each stage module holds only its own step.

A stage is, in this order:

    stage = Stage(name, output, choice, seed=...)   # device and dtype of the run's choice, seed, .work folder
    args = training_arguments(cfg.trainer_settings(), stage.work, stage.device, stage.dtype)  # (GRPO: its GRPOConfig)
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
import os
import shutil
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable

import torch
from transformers import TrainerCallback

from .data import read_jsonl
from .errors import DataError, UsageError
from .fsio import write_json_atomic, write_text_atomic
from .hardware import PrecisionChoice, release_freed_memory
from .launch import all_gather, is_main_process, world_size
from .modeling import check_precision, load_model, load_tokenizer
from .provenance import RESUMABLE_CHANGES, check_resume, claim_run
from .trainer import JsonlLogCallback, last_trainer_checkpoint

try:
    import resource
except ImportError:  # not a POSIX system: peak RSS is reported as None
    resource = None

log = logging.getLogger(__name__)


class _StopOnInterrupt(TrainerCallback):
    """A Trainer callback that ends training at the next step end once `requested` (set by SIGINT)."""

    def __init__(self, save: bool):
        self.save = save
        self.requested = False

    def on_step_end(self, args, state, control, **kwargs):
        if self.requested:
            control.should_save = self.save
            control.should_training_stop = True
        return control

    @contextmanager
    def catching_sigint(self):
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self.requested:  # the second Ctrl-C: stop now
                raise KeyboardInterrupt
            self.requested = True

        previous = signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)


def work_folder(output: str | Path) -> Path:
    """Where a stage publishing `output` keeps its Trainer checkpoints: `.<name>.work` beside it."""
    output = Path(output)
    return output.parent / f".{output.name}.work"


class Stage:
    """Device, dtype, seed, folders, logging, timing and saving of one training stage.

    `name` labels the stage's lines in `train_log.jsonl` and its TensorBoard folder (default: the
    output's folder name). `output` is the folder the stage publishes (atomically, at the end);
    `work` holds the Trainer's resumable checkpoints and is removed once the output is written
    (default: `.<output name>.work` beside the output). `logs_dir` receives `train_log.jsonl` and
    `tensorboard/<name>` (default: the folder holding `output`). `choice` is the run's device and
    precision (`hardware.choose`, decided once by the run's entry point).
    """

    def __init__(self, name: str, output: str | Path, choice: PrecisionChoice, seed: int = 42,
                 logs_dir: str | Path | None = None, work: str | Path | None = None):
        self.output = Path(output)
        self.stage = name  # as given, for the summary
        self.name = name or self.output.name
        self.work = Path(work) if work is not None else work_folder(self.output)
        self.logs_dir = Path(logs_dir or self.output.parent)
        self.choice = choice
        self.device = choice.torch_device
        self.dtype = choice.dtype
        self.seed = seed
        self.seconds = 0.0
        self.peak_memory: dict = {}
        self.resumed_step = 0  # the optimizer step `train` continued from (0: from the start)
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

    def callbacks(self, report_to: tuple[str, ...] = ()) -> list:
        """Trainer callbacks: the JSONL log (every process checks losses are finite; the main one writes),
        and with "tensorboard" in `report_to` a TensorBoard writer on the main process in
        `logs_dir/tensorboard/<name>` (closed by `train`). The other trackers of `report_to` are
        transformers' own (the stage's training arguments name them); offline wandb and MLflow runs
        land in `logs_dir` unless WANDB_DIR / MLFLOW_TRACKING_URI are set."""
        if "wandb" in report_to:
            os.environ.setdefault("WANDB_DIR", str(self.logs_dir.resolve()))
        if "mlflow" in report_to:
            os.environ.setdefault("MLFLOW_TRACKING_URI", (self.logs_dir.resolve() / "mlruns").as_uri())
        callbacks = [JsonlLogCallback(self.logs_dir / "train_log.jsonl", self.name)]
        if "tensorboard" in report_to and is_main_process():
            from torch.utils.tensorboard import SummaryWriter
            from transformers.integrations import TensorBoardCallback

            self.logs_dir.mkdir(parents=True, exist_ok=True)
            self._tb_writer = SummaryWriter(log_dir=str(self.logs_dir / "tensorboard" / self.name))
            callbacks.append(TensorBoardCallback(self._tb_writer))
        return callbacks

    def train(self, trainer, resume_from: str | None = None, around: Callable | None = None,
              checkpoint_on_interrupt: bool = True):
        """`trainer.train(resume_from_checkpoint=resume_from)`, timed into `self.seconds` (wall seconds).

        `around(model)` is an optional context manager wrapped around the training (GRPO's
        `cpu_vocab_projection`). Returns the Trainer's `TrainOutput`; whatever it raises propagates
        (NonFiniteError for a NaN/inf loss), after the TensorBoard writer is closed.

        Ctrl-C (SIGINT) in a single process lets the current optimizer step finish, then (with
        `checkpoint_on_interrupt`) keeps a Trainer checkpoint in `self.work` that a resume continues
        from, and raises KeyboardInterrupt; a second Ctrl-C stops at once. An empty work folder is
        removed whatever happens, so an interrupted stage leaves no empty scratch behind.
        """
        self.resumed_step = _checkpoint_step(resume_from) if resume_from else 0
        if is_main_process():
            # Lines a killed attempt logged after the step training continues from are logged again.
            drop_logged_steps(self.logs_dir / "train_log.jsonl", self.name, after=self.resumed_step)
        stop = _StopOnInterrupt(checkpoint_on_interrupt)
        trainer.add_callback(stop)
        started = time.time()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        try:
            # Several processes would see the signal at different steps and wait for each other.
            with stop.catching_sigint() if world_size() == 1 else nullcontext():
                with around(trainer.model) if around is not None else nullcontext():
                    result = trainer.train(resume_from_checkpoint=resume_from)
            if stop.requested:
                raise KeyboardInterrupt
        finally:
            self.seconds = time.time() - started
            if self._tb_writer is not None:
                self._tb_writer.close()
                self._tb_writer = None
            if self.work.is_dir() and not any(self.work.iterdir()):
                self.work.rmdir()
            release_freed_memory()  # the steps' activations and logits, kept for reuse while they ran
        self.peak_memory = peak_memory(self.device)
        if is_main_process():
            log.info("%s: %s", self.name, memory_line(self.peak_memory))
        return result

    def summary(self, trainer, result, log_keys: tuple[str, ...] = ("loss",), **extra) -> dict:
        """The stage's training summary: stage, steps, train_loss, seconds, `extra`, and the log lines
        holding any of `log_keys` (Trainer's log history: dicts of step, loss, learning_rate ...).

        `train_loss` is the mean loss per optimizer step over the whole stage. After a resume from
        step s0, Trainer's own value averages only the steps after s0; the steps before come from
        the restored log history (each logged loss weighted by the steps it covers; exact with
        logging every step, the default)."""
        steps = trainer.state.global_step
        train_loss = result.training_loss
        if self.resumed_step and steps > self.resumed_step:
            covered, total, last = 0, 0.0, 0
            for h in trainer.state.log_history:
                if "loss" in h and h.get("step", 0) <= self.resumed_step:
                    total += h["loss"] * (h["step"] - last)
                    covered, last = h["step"], h["step"]
            after = steps - self.resumed_step
            train_loss = (total + result.training_loss * after) / (covered + after)
        return {
            "stage": self.stage,
            "steps": steps,
            "train_loss": train_loss,
            "seconds": self.seconds,
            "peak_memory": self.peak_memory,
            **extra,
            "log": [h for h in trainer.state.log_history if any(k in h for k in log_keys)],
        }

    def drop_work(self) -> None:
        """Remove the work folder (Trainer checkpoints) once the stage's output is published."""
        shutil.rmtree(self.work, ignore_errors=True)


def _checkpoint_step(checkpoint: str | Path) -> int:
    return int(json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))["global_step"])


def drop_logged_steps(log_file: Path, stage: str, after: int) -> None:
    """Remove `stage`'s lines with a step above `after` from the JSONL log `log_file` (atomically), so a
    stage that restarts from step `after` logs each step once. Other stages' lines stay as they are."""
    if not log_file.exists():
        return
    lines = log_file.read_text(encoding="utf-8").splitlines(keepends=True)

    def stale(line: str) -> bool:
        try:
            row = json.loads(line)
        except ValueError:  # a line cut by a kill: never a finished step
            return True
        return row.get("stage") == stage and row.get("step", 0) > after

    kept = [line if line.endswith("\n") else line + "\n" for line in lines if not stale(line)]
    if len(kept) != len(lines):
        write_text_atomic(log_file, kept)


def read_prepared_rows(path: str) -> list[dict]:
    """`kormedqa prepare`'s JSONL rows at `path`, each checked to hold string "prompt" and "completion".

    Raises DataError naming the file, line and field of the first bad row (FileNotFoundError,
    DataError for an unreadable or empty file, from `data.read_jsonl`).
    """
    rows = read_jsonl(path)
    for line, row in enumerate(rows, start=1):
        if not isinstance(row.get("prompt"), str) or not isinstance(row.get("completion"), str):
            raise DataError(path, line, "prompt/completion", "a prepared row needs string 'prompt' and 'completion'")
    return rows


def check_train_paths(cfg) -> None:
    """--data and --output given: the first check of a train command, before a resume point or a row
    is read. `cfg` is an `sft.TrainConfig`. UsageError."""
    if not cfg.data or not cfg.output:
        raise UsageError("--data (a prepared JSONL) and --output are required")


def check_train_inputs(cfg, choice: PrecisionChoice):
    """The train command's checks that need no output: the model's tokenizer and the run's precision
    `choice` for it (after `check_train_paths`). `cfg` is an `sft.TrainConfig`; returns the tokenizer.
    UsageError, ModelError."""
    tokenizer = load_tokenizer(cfg.base_model)  # ModelError for a missing model or an adapter without its base
    check_precision(cfg.base_model, choice)  # fp16 Gemma refused before the output is claimed
    return tokenizer


# Settings a resumed train run may change besides provenance.RESUMABLE_CHANGES: how often it keeps checkpoints
# and where it reports to change nothing that is computed.
TRAIN_RESUMABLE_CHANGES = RESUMABLE_CHANGES | {"save_steps", "report_to"}


def train_resume_point(cfg, work: Path) -> tuple[dict | None, str | None]:
    """For `kormedqa train --resume`: (the finished run's training summary, None) when `cfg.output`'s
    adapter is already written, else (None, the newest complete Trainer checkpoint in `work`).

    Checks first that the folder is a train run with the same settings and data (`provenance.check_resume`).
    Raises UsageError when there is nothing to resume from (no folder, or no complete checkpoint
    kept: --save-steps 0, the default, keeps none), so a resume never silently starts again.
    """
    if not cfg.output:
        raise UsageError("--output (the run folder to resume) is required")
    out = Path(cfg.output)
    if not check_resume(cfg.resolved(), "train", {"data": cfg.data}, TRAIN_RESUMABLE_CHANGES):
        raise UsageError(f"{out}: nothing to resume from (no earlier run there); drop --resume to start one")
    summary = out / "adapter" / "training_summary.json"
    if summary.exists():
        return json.loads(summary.read_text(encoding="utf-8")), None
    checkpoint = last_trainer_checkpoint(work)
    if checkpoint is None:
        raise UsageError(f"{out}: nothing to resume from: the run kept no complete checkpoint (--save-steps 0, the "
                         "default, keeps none); pass --overwrite to start again, with --save-steps N to keep one every "
                         "N steps")
    return None, checkpoint


def claim_train_output(cfg, choice: PrecisionChoice) -> Path:
    """Claim `cfg.output` for the train command and write its run.json (the resolved config, the data's
    SHA-256, the precision `choice`); returns the folder. OutputExistsError for an existing output without --resume/--overwrite;
    UsageError for a --resume into another command's folder or with other settings (`provenance.claim_run`)."""
    return claim_run(cfg.resolved(), "train", {"data": cfg.data}, TRAIN_RESUMABLE_CHANGES, choice)


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
