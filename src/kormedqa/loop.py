"""Loop training (the seed's train_01_02_loop): dictionary epoch, MCQ epoch, evaluate, repeat.

Layout of a run folder (the seed's, plus provenance and metrics):

    run/
      run.json  history.json  train_log.jsonl  tensorboard/
      loop_1/after_type1/  loop_1/after_type2/  loop_1/eval/{metrics.json,predictions.jsonl}
      ...
      best_checkpoint/   highest --select-by metric so far
      final/             the model the loop ended with (stop reason in history.json)

Every checkpoint is a LoRA adapter folder written atomically. Each stage starts from the previous
stage's folder on disk, never from memory, so `--resume` after a kill continues from the last
finished stage and reaches exactly the state an uninterrupted run would.
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from .formats import DEFAULT_RATIONALE_TEMPLATE, RATIONALE_TEMPLATES
from .checks import Range, check_config, parse_answer_weight, parse_eval_mode
from .config import DEFAULT_MODEL_HELP, SAMPLE_DICTIONARIES, LoraArgs, ModelArgs, ResumableRunArgs, arg
from .errors import UsageError
from .runs import atomic_dir, claim_output, provenance, write_json_atomic
from .sft import TrainConfig, run_training

log = logging.getLogger(__name__)

# The --select-by metrics each evaluation scorer computes (`loss` computes none worth selecting by).
SELECTABLE_BY_SCORER = {
    "generate": ("accuracy", "reasoning_score"),
    "loglik": ("loglik_accuracy",),
    "cloze": ("cloze_accuracy", "cloze_accuracy_norm"),
    "loss": (),
}
SELECT_BY = tuple(m for names in SELECTABLE_BY_SCORER.values() for m in names)


def check_select_by(select_by: str, eval_mode: str) -> None:
    """UsageError unless `--eval-mode` runs the scorer that computes `--select-by`.

    Checked when the config is parsed: a mismatch used to surface only after the first loop had
    trained, as a traceback.
    """
    scorers = parse_eval_mode(eval_mode)
    needs = next((s for s, names in SELECTABLE_BY_SCORER.items() if select_by in names), None)
    if needs is None:
        known = [m for names in SELECTABLE_BY_SCORER.values() for m in names]
        raise UsageError(f"--select-by must be one of {', '.join(known)}; got {select_by!r}")
    if needs not in scorers:
        have = [m for s in scorers for m in SELECTABLE_BY_SCORER[s]]
        raise UsageError(
            f"--select-by {select_by} needs the {needs} scorer, which --eval-mode {eval_mode} does not run: "
            f"use --eval-mode {','.join((*scorers, needs))}"
            + (f" or select by {' or '.join(have)}" if have else "")
        )


@dataclass
class LoopConfig(ModelArgs, LoraArgs, ResumableRunArgs):
    """`kormedqa loop`: alternate dictionary and MCQ training until the target accuracy."""

    output: str = arg("runs/loop", "run folder: loop_N/ checkpoints and evaluations, best_checkpoint/, final/, "
                                   "history.json")
    base_model: str = arg("gemma3-270m", "model to start from (e.g. the CPT output): " + DEFAULT_MODEL_HELP)
    dictionary: list[str] = arg(help="dictionary JSON(s) of the dictionary stage (Track 1)",
                                factory=lambda: list(SAMPLE_DICTIONARIES))
    train_data: str = arg("data/sample/mcq", "KorMedMCQA training file/folder/hub id")
    train_split: str = arg("train", "split of --train-data to train on (a folder or hub id)")
    eval_data: str = arg("data/sample/mcq", "KorMedMCQA evaluation file/folder/hub id")
    eval_split: str = arg("test", "split of --eval-data to evaluate on (a folder or hub id)")
    max_loops: int = arg(10, "loops at most")
    target_accuracy: float = arg(90.0, "percent; stop when reached")
    patience: int = arg(3, "stop after this many loops without improvement")
    select_by: str = arg("accuracy", "metric that picks best_checkpoint", choices=SELECT_BY)
    stages: str = arg("dict,mcq", "stages per loop, in order: a comma list of dict, mcq, grpo")
    epochs_per_stage: float = arg(1.0, "epochs of each stage per loop (the seed: 1)")
    dict_epochs: float | None = arg(None, "epochs of each dictionary stage (default: --epochs-per-stage)")
    mcq_epochs: float | None = arg(None, "epochs of each MCQ stage (default: --epochs-per-stage)")
    dict_max_steps: int = arg(-1, "bound each dictionary stage (-1: its epochs)")
    mcq_max_steps: int = arg(-1, "bound each MCQ stage (-1: its epochs)")
    grpo_max_steps: int = arg(20, "optimizer steps of each grpo stage")
    grpo_learning_rate: float = arg(1e-5, "learning rate of each grpo stage")
    num_generations: int = arg(4, "grpo: completions per prompt (a grpo step samples 2 prompts)")
    max_completion_length: int = arg(128, "grpo: generated tokens at most")
    dict_learning_rate: float | None = arg(None, "learning rate of each dictionary stage (default: the seed's 2e-5)")
    mcq_learning_rate: float | None = arg(None, "learning rate of each MCQ stage (default: the seed's 1e-5)")
    dict_batch_size: int | None = arg(None, "micro-batch of each dictionary stage (default: the seed's 4)")
    mcq_batch_size: int | None = arg(None, "micro-batch of each MCQ stage (default: the seed's 2)")
    dict_grad_accum: int | None = arg(None, "micro-batches per optimizer step, dictionary stages (default: 4)")
    mcq_grad_accum: int | None = arg(None, "micro-batches per optimizer step, MCQ stages (default: 8)")
    answer_weight: str = arg("2/3", "share of the loss on the answer (see kormedqa train --help) or 'none'")
    option_rotations: int = arg(1, "copies of each MCQ training question, options rotated so the answer sits at that "
                                   "many letters (1: off, at most 5); the letter then has to follow the option text")
    dict_rehearsal: float = arg(0.0, "dictionary rows mixed into each MCQ stage, as a fraction of its MCQ rows "
                                     "(rehearsal against forgetting; their tokens count with the reasoning, not the "
                                     "weighted answer; 0: off)")
    rationale_template: str = arg(DEFAULT_RATIONALE_TEMPLATE, "template rationale for MCQs without cot: linked, "
                                  "recall or verdict (see kormedqa prepare mcq --help)", choices=RATIONALE_TEMPLATES)
    group_by_length: bool = arg(False, "batch similar lengths together (less padding; changes the data order)")
    eval_mode: str = arg("all", "scorers per loop: all, or a comma list of generate, loglik, cloze, loss")
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
        "eval_batch_size": Range(low=1), "max_new_tokens": Range(low=1), "dict_rehearsal": Range(low=0),
        "option_rotations": Range(low=1, high=5),
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


def _stage_config(cfg: LoopConfig, track: str, base: str, loop: int) -> TrainConfig:
    pick = lambda name: getattr(cfg, f"{track}_{name}")  # noqa: E731
    return TrainConfig(
        base_model=base,
        track=track,
        epochs=cfg.epochs_per_stage if pick("epochs") is None else pick("epochs"),
        max_steps=pick("max_steps"),
        batch_size=pick("batch_size"),
        grad_accum=pick("grad_accum"),
        learning_rate=pick("learning_rate"),
        answer_weight=cfg.answer_weight,
        group_by_length=cfg.group_by_length,
        lora_r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        device=cfg.device,
        precision=cfg.precision,
        seed=cfg.seed + loop,  # a different data order each loop, the same on every rerun
    )


def rehearsal_rows(dict_rows: list[dict], count: float, seed: int) -> list[dict]:
    """`round(count)` dictionary rows (cycling through all of them, shuffled by `seed`) marked as
    rehearsal (`batching.REHEARSAL_FORMAT`), to mix into an MCQ stage. Different loops (seeds) draw
    different rows, so several loops go over the whole dictionary."""
    import random

    from .batching import REHEARSAL_FORMAT

    order = list(range(len(dict_rows)))
    random.Random(seed).shuffle(order)
    n = round(count)
    return [{**dict_rows[order[i % len(order)]], "format": REHEARSAL_FORMAT} for i in range(n)] if order else []


def _metric(metrics: dict, name: str) -> float:
    value = metrics.get(name)
    if isinstance(value, dict):
        return float(value["value"])
    if value is None:
        raise ValueError(f"--select-by {name} needs an evaluation mode that computes it (got {metrics.get('mode')})")
    return float(value)


def copy_checkpoint(src: Path, dest: Path) -> None:
    """Copy the checkpoint folder `src` to `dest` atomically (`runs.atomic_dir`), replacing `dest`."""
    with atomic_dir(dest) as scratch:
        shutil.copytree(src, scratch, dirs_exist_ok=True)


def run_loop(cfg: LoopConfig) -> dict:
    """`kormedqa loop`: train the stages of `cfg.stages` and evaluate, loop after loop, in `cfg.output`.

    Returns the history also written to history.json: {"loops": [{loop, checkpoint,
    selected_metric, metrics, training}], "best", "select_by", "overlap", "stop_reason"
    (target_reached, patience or max_loops), "final"}. Raises DataError, LeakageError, ModelError
    or UsageError before the output is claimed; OutputExistsError for an existing output without
    --resume or --overwrite.
    """
    from .augment import option_rotations
    from .data import load_dictionary, load_mcq
    from .evaluate import evaluate_dict, evaluate_mcq, summary_line, write_eval
    from .formats import Glossary
    from .modeling import load_model, load_tokenizer, resolve_model_path
    from .prepare import check_overlap, dict_rows, mcq_rows

    check_select_by(cfg.select_by, cfg.eval_mode)  # also checked at parse time; code callers get it here
    stages = [s.strip() for s in cfg.stages.split(",") if s.strip()]
    unknown = set(stages) - {"dict", "mcq", "grpo"}
    if unknown:
        raise UsageError(f"unknown stage(s) {sorted(unknown)}; known: dict, mcq, grpo")

    # Everything that can fail on bad input fails here, before any training.
    entries = load_dictionary(*cfg.dictionary)
    train = load_mcq(cfg.train_data, split=cfg.train_split)
    evaluation = load_mcq(cfg.eval_data, split=cfg.eval_split)[:: max(cfg.eval_every, 1)]
    if cfg.eval_limit:
        evaluation = evaluation[: cfg.eval_limit]
    overlap = check_overlap(train, evaluation, cfg.allow_overlap)
    base = resolve_model_path(cfg.base_model)
    base = str(Path(base).resolve()) if Path(base).exists() else base
    tokenizer = load_tokenizer(base)

    out = claim_output(cfg.output, resume=cfg.resume, overwrite=cfg.overwrite)
    history_path = out / "history.json"
    history = _read_json(history_path) if cfg.resume and history_path.exists() else {}
    if not (out / "run.json").exists():
        write_json_atomic(out / "run.json", provenance(cfg, {"train": cfg.train_data, "eval": cfg.eval_data}))
    history.setdefault("select_by", cfg.select_by)
    history.setdefault("loops", [])
    history["overlap"] = overlap

    glossary = Glossary(entries)
    mcq_train = option_rotations(train, cfg.option_rotations, cfg.seed)
    rows = {"dict": dict_rows(entries), "mcq": mcq_rows(mcq_train, cfg.seed, glossary, template=cfg.rationale_template)}
    previous = None  # adapter folder the next stage continues from
    best_value = None  # replayed from history on --resume, so patience counts the same
    stale = 0
    stop_reason = "max_loops"

    for loop in range(1, cfg.max_loops + 1):
        loop_dir = out / f"loop_{loop}"
        done = next((l for l in history["loops"] if l["loop"] == loop), None)
        for i, track in enumerate(stages, start=1):
            stage_dir = loop_dir / f"after_type{i}"
            if stage_dir.exists():
                log.info("loop %d %s: finished earlier, skipping", loop, track)
            elif track == "grpo":
                from .grpo import grpo_rows_from_mcqs, run_grpo

                run_grpo(previous or base, grpo_rows_from_mcqs(train), stage_dir, max_steps=cfg.grpo_max_steps,
                         num_generations=cfg.num_generations, max_completion_length=cfg.max_completion_length,
                         batch_size=cfg.num_generations * 2, learning_rate=cfg.grpo_learning_rate, device=cfg.device,
                         precision=cfg.precision, seed=cfg.seed + loop, logs_dir=out, stage=f"loop_{loop}_grpo")
            else:
                stage_cfg = _stage_config(cfg, track, previous or base, loop)
                stage_rows = rows[track]
                if track == "mcq" and cfg.dict_rehearsal:
                    stage_rows = stage_rows + rehearsal_rows(rows["dict"], cfg.dict_rehearsal * len(stage_rows), cfg.seed + loop)
                run_training(stage_cfg, stage_rows, stage_dir, tokenizer=tokenizer, stage=f"loop_{loop}_{track}", logs_dir=out)
            previous = str(stage_dir.resolve())
        if done is None:
            model = load_model(previous, device=cfg.device, precision=cfg.precision, merge_adapter=True)
            metrics, preds = evaluate_mcq(
                model, tokenizer, evaluation, cfg.eval_mode, cfg.eval_batch_size, cfg.max_new_tokens, glossary,
                rationale_template=cfg.rationale_template,
            )
            metrics["overlap"] = overlap
            if cfg.dict_eval_limit:
                dict_metrics, dict_preds = evaluate_dict(model, tokenizer, entries[: cfg.dict_eval_limit], cfg.eval_batch_size)
                write_eval(loop_dir / "eval_dict", dict_metrics, dict_preds)
                metrics["dict_exact_match"] = dict_metrics["exact_match"]
                metrics["dict_chrf"] = {"value": dict_metrics["chrf"], "total": dict_metrics["n"]}
            del model
            write_eval(loop_dir / "eval", metrics, preds)
            done = {
                "loop": loop,
                "checkpoint": str(Path(previous).relative_to(out.resolve())),
                "selected_metric": _metric(metrics, cfg.select_by),
                "metrics": _history_metrics(metrics),
                "training": _training_parts(loop_dir, stages),
            }
            history["loops"].append(done)
            log.info("loop %d: %s", loop, summary_line(metrics))
        value = done["selected_metric"]
        if best_value is None or value > best_value:
            best_value, stale = value, 0
            history["best"] = {"loop": loop, cfg.select_by: value, "checkpoint": done["checkpoint"]}
        else:
            stale += 1
        best_src = history["best"]["checkpoint"]
        if history.get("best_checkpoint_from") != best_src or not (out / "best_checkpoint").exists():
            copy_checkpoint(out / best_src, out / "best_checkpoint")
            history["best_checkpoint_from"] = best_src
        write_json_atomic(history_path, history)
        reached = done["metrics"].get("accuracy", done["metrics"].get("loglik_accuracy"))
        if reached is not None and _metric({"m": reached}, "m") * 100 >= cfg.target_accuracy:
            stop_reason = "target_reached"
            break
        if stale >= cfg.patience:
            stop_reason = "patience"
            break

    copy_checkpoint(Path(previous), out / "final")
    history["stop_reason"] = stop_reason
    history["final"] = str(Path(previous).relative_to(out.resolve()))
    write_json_atomic(history_path, history)
    return history


HISTORY_METRICS = ("accuracy", "loglik_accuracy", "cloze_accuracy", "cloze_accuracy_norm", "parse_rate",
                   "format_parse_rate", "accuracy_among_parsed", "teacher_forced_answer_accuracy", "reasoning_score",
                   "valid_format_rate", "reasoning_tag_rate", "reference_loss", "reference_answer_loss",
                   "dict_exact_match", "dict_chrf")


def _history_metrics(metrics: dict) -> dict:
    """The metrics worth plotting per loop, in the shape metrics.json has them ({value, ci95, ...})."""
    return {k: metrics[k] for k in HISTORY_METRICS if k in metrics}


def _training_parts(loop_dir: Path, stages: list[str]) -> dict:
    """Last logged training losses per stage, read back from each checkpoint's summary."""
    import json

    parts = {}
    for i, track in enumerate(stages, start=1):
        summary = loop_dir / f"after_type{i}" / "training_summary.json"
        if summary.exists():
            data = json.loads(summary.read_text())
            last = data["log"][-1] if data.get("log") else {}
            parts[track] = {
                "train_loss": data.get("train_loss"),
                "steps": data.get("steps"),
                "seconds": data.get("seconds"),
                **{k: last[k] for k in ("answer_loss", "reasoning_loss", "answer_token_accuracy") if k in last},
            }
    return parts


def _read_json(path: Path):
    import json

    return json.loads(path.read_text(encoding="utf-8"))

