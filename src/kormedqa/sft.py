"""Prompt/completion fine-tuning with answer-only labels, for both SFT tracks.

Built on `transformers.Trainer` (so `accelerate launch` runs it on several GPUs unchanged) with
one change to the loss: only supervised positions reach the 262k-entry lm_head, and the answer
(letter + `<end_of_turn>`) can carry a fixed share of the loss (`answer_weight`, the spec's 2/3),
because with a plain token mean the letter is ~1 of 40 supervised tokens and barely moves.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar, Sequence

from .batching import CompletionCollator, tokenize_rows
from .checks import Range, check_config, parse_answer_weight
from .config import GRPO_MAX_STEPS, LR_SCHEDULES, LoraArgs, ModelArgs, ReportArgs, ResumableRunArgs, arg
from .errors import UsageError
from .hardware import PrecisionChoice, choose
from .provenance import run_precision
from .stage import (Stage, check_train_inputs, check_train_paths, claim_train_output, read_prepared_rows,
    train_resume_point, work_folder)
from .trainer import (AnswerWeightedTrainer, TrainerSettings, adapter_card, last_trainer_checkpoint, prepare_trainable,
                      save_checkpoint, training_arguments)

log = logging.getLogger(__name__)

TRACK_DEFAULTS = {
    # The spec's hyperparameters (SEED_SPEC.md, "Hyperparameters").
    "dict": dict(epochs=3.0, batch_size=4, grad_accum=4, learning_rate=2e-5, max_length=512),
    "mcq": dict(epochs=5.0, batch_size=2, grad_accum=8, learning_rate=1e-5, max_length=1024),
}


@dataclass
class TrainConfig(ModelArgs, LoraArgs, ReportArgs, ResumableRunArgs):
    """`kormedqa train dict|mcq`. Unset (None) values take the spec's defaults for the track."""

    output: str = arg("", "folder for the adapter, logs and run.json")
    data: str = arg("", "prepared prompt/completion JSONL (kormedqa prepare)")
    track: str = arg("mcq", "dict or mcq (sets the spec's defaults)", choices=["dict", "mcq"])
    method: str = arg("sft", "sft, or grpo (reward = the spec's reasoning score; mcq only, after SFT)",
                      choices=["sft", "grpo"])
    num_generations: int = arg(4, "grpo: completions per prompt")
    max_completion_length: int = arg(128, "grpo: generated tokens at most")
    epochs: float | None = arg(None, "passes over the data (default: the track's, dict 3, mcq 5)")
    max_steps: int = arg(-1, "stop after this many optimizer steps (overrides epochs; -1: sft trains --epochs, "
                             f"grpo, which has no epochs, {GRPO_MAX_STEPS} steps)")
    batch_size: int | None = arg(None, "examples per device and micro-batch (default: the track's, dict 4, mcq 2)")
    grad_accum: int | None = arg(None, "micro-batches per optimizer step (default: the track's, dict 4, mcq 8)")
    learning_rate: float | None = arg(None, "peak learning rate, no warm-up (default: the track's, "
                                            "dict 2e-5, mcq 1e-5)")
    lr_scheduler_type: str = arg("linear", "learning-rate schedule over the stage (transformers' names): linear "
                                           "(decays to 0), constant or cosine", choices=LR_SCHEDULES)
    max_length: int | None = arg(None, "tokens per example at most; longer examples are dropped (default: the "
                                       "track's, dict 512, mcq 1024)")
    answer_weight: str = arg("2/3", "share of the loss on the answer (letter + <end_of_turn>; e.g. 2/3, 1, 0.5) or "
                                    "'none' for the plain token mean")
    lora_dropout: float = arg(0.05, "dropout on the LoRA input, in [0, 1)")
    group_by_length: bool = arg(False, "batch similar lengths together (less padding, faster; changes the data order)")
    keep_order: bool = arg(False, "train on the rows in the order given, batch after batch, without shuffling "
                                  "(for data ordered on purpose, e.g. kormedqa loop --rotation-batches)")
    padding_free: bool = arg(True, "pack each batch into one row with restarting position_ids (no padding compute; "
                                   "same loss)")
    pad_to_multiple_of: int = arg(64, "round each batch's length up to a multiple of N tokens (padding, or a pad "
                                      "segment when packed; same loss): few distinct shapes, so oneDNN's kernels "
                                      "are reused (docs/decisions.md, \"Lengths in buckets\"); 0: exact lengths")
    logging_steps: int = arg(1, "log the loss every N optimizer steps")
    save_steps: int = arg(0, "also keep a resumable Trainer checkpoint every N steps (0: none)")

    RANGES: ClassVar[dict] = {
        "num_generations": Range(low=2), "max_completion_length": Range(low=1), "epochs": Range(low=0, low_open=True),
        "max_steps": Range(low=1, also=(-1,)), "batch_size": Range(low=1), "grad_accum": Range(low=1),
        "learning_rate": Range(low=0, low_open=True), "max_length": Range(low=2),
        "lora_dropout": Range(low=0, high=1, high_open=True), "logging_steps": Range(low=1), "save_steps": Range(low=0),
        "pad_to_multiple_of": Range(low=0),
    }

    def __post_init__(self):
        """Choices and ranges at parse time (UsageError), so a mistake never reaches a claimed output."""
        check_config(self)
        parse_answer_weight(self.answer_weight)
        if self.method == "grpo" and self.track != "mcq":
            raise UsageError("--method grpo trains MCQs: use kormedqa train mcq")

    def resolved(self) -> "TrainConfig":
        """A copy with every unset (None) schedule field set to the track's seed default (`TRACK_DEFAULTS`),
        and, for --method grpo, --max-steps -1 set to `GRPO_MAX_STEPS` (GRPO has no epochs)."""
        defaults = TRACK_DEFAULTS[self.track]
        steps = {"max_steps": GRPO_MAX_STEPS} if self.method == "grpo" and self.max_steps == -1 else {}
        return replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None}, **steps)

    def trainer_settings(self) -> TrainerSettings:
        """The Trainer's schedule (`trainer.TrainerSettings`) of this config, track defaults applied."""
        r = self.resolved()
        return TrainerSettings(epochs=r.epochs, max_steps=r.max_steps, batch_size=r.batch_size,
                               grad_accum=r.grad_accum, learning_rate=r.learning_rate, seed=r.seed,
                               lr_scheduler_type=r.lr_scheduler_type, logging_steps=r.logging_steps,
                               save_steps=r.save_steps, group_by_length=r.group_by_length, keep_order=r.keep_order,
                               gradient_checkpointing=r.gradient_checkpointing, report_to=r.report_targets())


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
    resume_from: str | None = None,
    choice: PrecisionChoice | None = None,
) -> dict:
    """Train on prompt/completion rows and write the adapter + tokenizer to `output` atomically.

    `rows` are dicts with string "prompt" and "completion" (kormedqa prepare's JSONL rows);
    `features` the same rows already tokenised (`batching.tokenize_rows`, as the CLI does before
    claiming the output). `model`/`tokenizer` may be passed in by the loop to avoid reloading;
    otherwise `cfg.base_model` is loaded. `stage` names the run in the logs; `logs_dir` receives
    `train_log.jsonl` and `tensorboard/<stage>` (default: the folder holding `output`).
    `resume_from` is a Trainer checkpoint folder to continue from; with `cfg.resume` and none
    given, the newest complete one in the stage's work folder (`stage.work_folder`), if any.
    `choice` is the run's precision (`hardware.choose`), decided here from `cfg` when the caller has none.
    Under several processes only the main one writes anything.

    Returns the training summary: {"stage", "steps", "train_loss", "seconds" (wall), "examples",
    "answer_weight", "log": [Trainer log dicts with "loss"]}, also written to
    `output/training_summary.json`. Raises UsageError for a bad answer weight, ModelError for a
    model that cannot load, NonFiniteError when a loss becomes NaN/inf.
    """
    from datasets import Dataset

    cfg = cfg.resolved()
    weight = parse_answer_weight(cfg.answer_weight)
    run = Stage(stage, output, choice or choose(cfg.device, cfg.precision), seed=cfg.seed, logs_dir=logs_dir)
    args = training_arguments(cfg.trainer_settings(), run.work, run.device, run.dtype)  # before loading: see kormedqa.stage
    model, tokenizer = run.load(cfg.base_model, tokenizer=tokenizer, model=model)
    model = prepare_trainable(model, cfg)
    if features is None:
        features = tokenize_rows(tokenizer, rows, cfg.max_length, source=cfg.data or stage or run.output.name)
    trainer = AnswerWeightedTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(features),
        data_collator=CompletionCollator(tokenizer.pad_token_id, padding_free=cfg.padding_free,
                                         pad_to_multiple_of=cfg.pad_to_multiple_of or None),
        answer_weight=weight,
        callbacks=run.callbacks(report_to=cfg.report_targets()),
    )
    if resume_from is None and cfg.resume:
        resume_from = last_trainer_checkpoint(run.work)
    result = run.train(trainer, resume_from=resume_from)
    summary = run.summary(trainer, result, examples=len(features), answer_weight=weight)
    card = adapter_card(cfg.base_model, f"SFT ({cfg.track} track, answer-only loss)",
                        {"training rows": f"{cfg.data or stage or run.output.name} ({len(features)} examples)"},
                        _card_settings(cfg, run), summary)
    save_checkpoint(trainer, tokenizer, run.output, summary, run.work, card=card)
    return summary


def _card_settings(cfg: TrainConfig, run) -> dict:
    """The settings an SFT adapter's model card lists (`cfg` resolved; the precision the stage chose)."""
    keys = ("epochs", "max_steps", "batch_size", "grad_accum", "learning_rate", "lr_scheduler_type", "max_length",
            "answer_weight", "lora_r", "lora_alpha", "lora_dropout", "padding_free", "pad_to_multiple_of", "seed")
    return {**{k: getattr(cfg, k) for k in keys}, "precision": str(run.dtype).replace("torch.", "")}


def run_train(cfg: TrainConfig) -> dict:
    """`kormedqa train dict|mcq` (--method sft) from Python: `cfg.data`'s prepared rows -> `cfg.output`.

    Rows, model, precision and lengths are all checked before the output is claimed (UsageError,
    DataError, ModelError; OutputExistsError for an existing output without --resume/--overwrite).
    Writes run.json, train_log.jsonl, tensorboard/ and adapter/ (with training_summary.json) in
    `cfg.output`; returns the training summary (`run_training`). `--method grpo` is
    `grpo.run_train` (the CLI picks by --method; a stage never calls another): UsageError here.
    With `cfg.resume` the run continues from its newest complete checkpoint, after the checks of
    `stage.train_resume_point` (same command, settings and data; UsageError when nothing was
    kept); a finished run is returned as it was.
    """
    if cfg.method != "sft":
        raise UsageError(f"sft.run_train trains --method sft; --method {cfg.method} is kormedqa.grpo.run_train")
    check_train_paths(cfg)
    checkpoint = None
    if cfg.resume:  # first: a resume that cannot be done is refused before any input is read
        finished, checkpoint = train_resume_point(cfg, work_folder(Path(cfg.output) / "adapter"))
        if finished is not None:
            log.warning("%s: the run finished earlier; nothing to resume", cfg.output)
            return finished
    rows = read_prepared_rows(cfg.data)
    choice = run_precision(cfg)  # the run's precision, decided once (kept on resume) and passed down
    tokenizer = check_train_inputs(cfg, choice)
    features = tokenize_rows(tokenizer, rows, cfg.resolved().max_length, source=cfg.data)
    out = claim_train_output(cfg, choice)
    return run_training(cfg, rows, out / "adapter", tokenizer=tokenizer, stage=cfg.track, logs_dir=out,
                        features=features, resume_from=checkpoint, choice=choice)
