"""`kormedqa loop`'s settings: LoopConfig (every flag, typed and checked at parse time), the
--select-by metrics each scorer computes, and each training track's view of the flags (TrackArgs).

The loop itself (kormedqa.loop) reads only these; `from kormedqa.loop import LoopConfig` still works.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .checks import Range, check_config, parse_answer_weight
from .config import (DEFAULT_MODEL_HELP, GRPO_MAX_STEPS, LR_SCHEDULES, SAMPLE_DICTIONARIES, LmEvalArgs, LoraArgs,
                     ModelArgs, ReportArgs, ResumableRunArgs, arg)
from .errors import UsageError
from .formats import DEFAULT_RATIONALE_TEMPLATE, FORWARD_PHRASINGS, RATIONALE_TEMPLATES
from .prepare import parse_dict_directions
# The --select-by metrics each evaluation scorer computes: declared with the scorers.
from .scorer_table import MODE_HELP, SELECT_BY, SELECTABLE_BY_SCORER, parse_eval_mode, scorer_of
from .sft import TRACK_DEFAULTS


def check_select_by(select_by: str, eval_mode: str) -> None:
    """UsageError unless `--eval-mode` runs the scorer that computes `--select-by`.

    Checked when the config is parsed: a mismatch used to surface only after the first loop had
    trained, as a traceback.
    """
    scorers = parse_eval_mode(eval_mode)
    needs = scorer_of(select_by) if select_by in SELECT_BY else None
    if needs is None:
        raise UsageError(f"--select-by must be one of {', '.join(SELECT_BY)}; got {select_by!r}")
    if needs not in scorers:
        have = [m for s in scorers for m in SELECTABLE_BY_SCORER[s]]
        raise UsageError(
            f"--select-by {select_by} needs the {needs} scorer, which --eval-mode {eval_mode} does not run: "
            f"use --eval-mode {','.join((*scorers, needs))}"
            + (f" or select by {' or '.join(have)}" if have else "")
        )


@dataclass
class LoopConfig(ModelArgs, LoraArgs, LmEvalArgs, ReportArgs, ResumableRunArgs):
    """`kormedqa loop`: alternate dictionary and MCQ training until the target accuracy."""

    output: str = arg("runs/loop", "run folder: loop_N/ checkpoints and evaluations, best_checkpoint/, final/, "
                                   "history.json")
    base_model: str = arg("gemma3-270m", "model to start from (e.g. the CPT output): " + DEFAULT_MODEL_HELP)
    dictionary: list[str] = arg(help="dictionary JSON(s) of the dictionary stage (Track 1)",
                                factory=lambda: list(SAMPLE_DICTIONARIES))
    train_data: str = arg("data/sample/mcq", "KorMedMCQA training file/folder/hub id")
    train_split: str = arg("train", "split of --train-data to train on (a folder or hub id)")
    eval_data: str = arg("data/sample/mcq", "KorMedMCQA evaluation file/folder/hub id (with the lm_eval scorer: a hub "
                                            "id or a folder in the hub's layout, see kormedqa prepare hub)")
    eval_split: str = arg("dev", "split of --eval-data scored after every loop, on which best_checkpoint is chosen "
                                 "(a folder or hub id); dev, so the reported split never chooses")
    test_split: str = arg("test", "split of --eval-data scored once, with best_checkpoint, at the end: the figure "
                                  "to report ('' to skip; the same split as --eval-split is refused)")
    max_loops: int = arg(10, "loops at most")
    target_accuracy: float = arg(90.0, "percent; stop when reached")
    patience: int = arg(3, "stop after this many loops without improvement")
    select_by: str = arg("accuracy", "metric that picks best_checkpoint", choices=SELECT_BY)
    stages: str = arg("dict,mcq", "stages per loop, in order: a comma list of dict, mcq, grpo")
    epochs_per_stage: float = arg(1.0, "epochs of each stage per loop (the spec: 1)")
    dict_epochs: float | None = arg(None, "epochs of each dictionary stage (default: --epochs-per-stage)")
    mcq_epochs: float | None = arg(None, "epochs of each MCQ stage (default: --epochs-per-stage)")
    dict_max_steps: int = arg(-1, "bound each dictionary stage (-1: its epochs)")
    mcq_max_steps: int = arg(-1, "bound each MCQ stage (-1: its epochs)")
    grpo_max_steps: int = arg(GRPO_MAX_STEPS, "optimizer steps of each grpo stage")
    grpo_learning_rate: float = arg(1e-5, "learning rate of each grpo stage")
    num_generations: int = arg(4, "grpo: completions per prompt (a grpo step samples 2 prompts)")
    max_completion_length: int = arg(128, "grpo: generated tokens at most")
    dict_learning_rate: float | None = arg(None, "learning rate of each dictionary stage (default: the spec's 2e-5)")
    mcq_learning_rate: float | None = arg(None, "learning rate of each MCQ stage (default: the spec's 1e-5)")
    dict_batch_size: int | None = arg(None, "micro-batch of each dictionary stage (default: the spec's 4)")
    mcq_batch_size: int | None = arg(None, "micro-batch of each MCQ stage (default: the spec's 2)")
    dict_grad_accum: int | None = arg(None, "micro-batches per optimizer step, dictionary stages (default: 4)")
    mcq_grad_accum: int | None = arg(None, "micro-batches per optimizer step, MCQ stages (default: 8)")
    lr_scheduler_type: str = arg("linear", "learning-rate schedule of each stage: linear (decays to 0 over the "
                                           "stage), constant or cosine", choices=LR_SCHEDULES)
    answer_weight: str = arg("2/3", "share of the loss on the answer (see kormedqa train --help) or 'none'")
    option_rotations: int = arg(1, "copies of each MCQ training question, options rotated so the answer sits at that "
                                   "many letters (1: off, at most 5); the letter then has to follow the option text")
    rotation_batches: bool = arg(False, "put each question's rotated copies side by side in one MCQ batch (needs "
                                        "--mcq-batch-size a multiple of --option-rotations; rows in a fixed shuffled "
                                        "order instead of --group-by-length): only the letter differs within a batch, "
                                        "so only reading it off the options lowers the loss")
    dict_directions: str = arg("forward", "dictionary stage: comma list of forward (term -> definition, the spec's) "
                                          "and reverse (Korean description -> term), beyond the spec")
    dict_phrasings: int = arg(1, "dictionary stage: wordings of each row per direction, 1-3 (1: the spec's prompt)")
    extra_train_data: list[str] = arg(help="more KorMedMCQA-style files/folders whose --train-split questions join "
                                      "the MCQ stage (e.g. the same kind of terms asked the other way round)",
                                      factory=list)
    dict_rehearsal: float = arg(0.0, "dictionary rows mixed into each MCQ stage, as a fraction of its MCQ rows "
                                     "(rehearsal against forgetting; their tokens count with the reasoning, not the "
                                     "weighted answer; 0: off)")
    rationale_template: str = arg(DEFAULT_RATIONALE_TEMPLATE, "template rationale for MCQs without cot: linked, "
                                  "recall, dictionary_line or verdict (see kormedqa prepare mcq --help)", choices=RATIONALE_TEMPLATES)
    rationales: str | None = arg(None, "JSONL of {id, rationale} for the MCQ track (kormedqa rationales' "
                                       "rationales.jsonl, as prepare mcq --rationales): those questions train on it, "
                                       "as written and unrotated (its letters name the options in their order)")
    group_by_length: bool = arg(False, "batch similar lengths together (less padding; changes the data order)")
    pad_to_multiple_of: int = arg(64, "round each training batch's length up to a multiple of N tokens (same loss; "
                                      "fewer distinct shapes, faster on CPU: kormedqa train --help); 0: exact lengths")
    lora_dropout: float = arg(0.05, "dropout on the LoRA input, in [0, 1) (0: several processes train exactly the "
                                    "one-process model; dropout draws differ per process)")
    eval_mode: str = arg("all", "scorers per loop: all (every one of the spec's protocol), or a comma list of " + MODE_HELP)
    eval_limit: int | None = arg(None, "score only the first N evaluation questions (after --eval-every)")
    eval_every: int = arg(1, "score every k-th evaluation question (a quicker, stratified subset)")
    dict_eval_limit: int = arg(0, "also score Track 1 on this many dictionary entries per loop (0: off)")
    eval_batch_size: int = arg(8, "questions per scoring batch")
    max_new_tokens: int = arg(256, "generation budget per answer, in tokens")
    allow_overlap: bool = arg(False, "train even when training questions appear in the evaluation set")

    RANGES: ClassVar[dict] = {
        "max_loops": Range(low=1), "target_accuracy": Range(low=0, high=100, low_open=True), "patience": Range(low=1),
        "epochs_per_stage": Range(low=0, low_open=True), "dict_epochs": Range(low=0, low_open=True),
        "mcq_epochs": Range(low=0, low_open=True), "dict_max_steps": Range(low=1, also=(-1,)),
        "mcq_max_steps": Range(low=1, also=(-1,)), "grpo_max_steps": Range(low=1),
        "grpo_learning_rate": Range(low=0, low_open=True), "num_generations": Range(low=2),
        "max_completion_length": Range(low=1), "dict_learning_rate": Range(low=0, low_open=True),
        "mcq_learning_rate": Range(low=0, low_open=True), "dict_batch_size": Range(low=1),
        "mcq_batch_size": Range(low=1), "dict_grad_accum": Range(low=1), "mcq_grad_accum": Range(low=1),
        "eval_limit": Range(low=1), "eval_every": Range(low=1), "dict_eval_limit": Range(low=0),
        "eval_batch_size": Range(low=1), "pad_to_multiple_of": Range(low=0), "dict_phrasings": Range(low=1, high=len(FORWARD_PHRASINGS)), "max_new_tokens": Range(low=1), "dict_rehearsal": Range(low=0),
        "option_rotations": Range(low=1, high=5), "lora_dropout": Range(low=0, high=1, high_open=True),
    }

    def __post_init__(self):
        """Choices, ranges and --select-by against --eval-mode at parse time, before any training."""
        check_config(self)
        parse_answer_weight(self.answer_weight)
        check_select_by(self.select_by, self.eval_mode)
        stages = [s.strip() for s in self.stages.split(",") if s.strip()]
        unknown = sorted(set(stages) - {"dict", "mcq", "grpo"})
        if not stages or unknown:
            raise UsageError(f"--stages is a comma-separated list of dict, mcq, grpo; got {self.stages!r}")
        check_rotation_batches(self.rotation_batches, self.option_rotations, self.mcq_batch_size)
        parse_dict_directions(self.dict_directions)
        if self.test_split and self.test_split == self.eval_split:
            raise UsageError(f"--test-split {self.test_split} is also --eval-split: best_checkpoint would be chosen on "
                             "the questions it is reported on; choose on another split (dev) or pass --test-split ''")


def check_rotation_batches(enabled: bool, rotations: int, mcq_batch_size: int | None) -> None:
    """UsageError unless --rotation-batches (when on) has batches that hold whole questions."""
    batch = mcq_batch_size or TRACK_DEFAULTS["mcq"]["batch_size"]
    if enabled and (rotations < 2 or batch % rotations):
        raise UsageError(f"--rotation-batches needs --option-rotations >= 2 and --mcq-batch-size a multiple of it; "
                         f"got {rotations} rotations, batch {batch}")


@dataclass(frozen=True)
class TrackArgs:
    """One training track's settings in a loop, read from LoopConfig's `dict_*` / `mcq_*` flags."""

    epochs: float
    max_steps: int
    batch_size: int | None
    grad_accum: int | None
    learning_rate: float | None


def track_args(cfg: LoopConfig, track: str) -> TrackArgs:
    """The `dict_*` (track "dict") or `mcq_*` (track "mcq") flags of `cfg`; epochs default to
    `--epochs-per-stage`. None leaves TrainConfig's per-track default (the spec's). Raises
    ValueError for another track."""
    if track == "dict":
        return TrackArgs(cfg.epochs_per_stage if cfg.dict_epochs is None else cfg.dict_epochs, cfg.dict_max_steps,
                         cfg.dict_batch_size, cfg.dict_grad_accum, cfg.dict_learning_rate)
    if track == "mcq":
        return TrackArgs(cfg.epochs_per_stage if cfg.mcq_epochs is None else cfg.mcq_epochs, cfg.mcq_max_steps,
                         cfg.mcq_batch_size, cfg.mcq_grad_accum, cfg.mcq_learning_rate)
    raise ValueError(f"no SFT settings for track {track!r} (dict or mcq)")
