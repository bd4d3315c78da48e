"""Loop training (the spec's train_01_02_loop): dictionary epoch, MCQ epoch, evaluate, repeat.

Layout of a run folder (the spec's, plus provenance and metrics):

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
from dataclasses import replace
from pathlib import Path

from .augment import option_rotations, rotation_batches
from .batching import REHEARSAL_FORMAT
from .data import load_dictionary, load_mcq, load_mcq_sources
from .errors import UsageError
from .evaluate import evaluate_dict, evaluate_mcq, summary_line, write_eval
from .formats import Glossary
from .fsio import atomic_dir, write_json_atomic
from .grpo import GRPOStageConfig, grpo_rows_from_mcqs, run_grpo
from .hardware import PrecisionChoice
from .launch import is_main_process, start_processes, wait_for_everyone
from .lm_eval_protocol import data_configs, lm_eval_settings
from .loop_config import SELECT_BY, SELECTABLE_BY_SCORER, LoopConfig, TrackArgs, check_select_by, track_args
from .modeling import load_model, load_tokenizer, resolve_model_path
from .prepare import check_overlap, dict_rows, load_rationales, mcq_rows
from .provenance import claim_run, run_precision
from .scorer_table import BY_NAME, HISTORY_METRICS, parse_eval_mode
from .sft import TrainConfig, run_training
from .stage import record_peak_memory

__all__ = ["SELECT_BY", "SELECTABLE_BY_SCORER", "LoopConfig", "LoopRecipe", "TrackArgs", "check_select_by",
           "copy_checkpoint", "evaluate_checkpoint", "rehearsal_rows", "run_loop", "track_args"]

log = logging.getLogger(__name__)


def _stage_config(cfg: LoopConfig, track: str, base: str, loop: int) -> TrainConfig:
    args = track_args(cfg, track)
    return TrainConfig(
        base_model=base,
        track=track,
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        learning_rate=args.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler_type,
        answer_weight=cfg.answer_weight,
        group_by_length=cfg.group_by_length,
        pad_to_multiple_of=cfg.pad_to_multiple_of,
        keep_order=track == "mcq" and cfg.rotation_batches,  # rotation_batches orders the rows
        lora_r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        gradient_checkpointing=cfg.gradient_checkpointing,
        device=cfg.device,
        precision=cfg.precision,
        seed=cfg.seed + loop,  # a different data order each loop, the same on every rerun
        resume=cfg.resume,  # a stage stopped by Ctrl-C continues from the checkpoint it kept
        report_to=cfg.report_to,
    )


def rehearsal_rows(dict_rows: list[dict], count: float, seed: int) -> list[dict]:
    """`round(count)` dictionary rows (cycling through all of them, shuffled by `seed`) marked as
    rehearsal (`batching.REHEARSAL_FORMAT`), to mix into an MCQ stage. Different loops (seeds) draw
    different rows, so several loops go over the whole dictionary."""
    import random

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


def copy_checkpoint(src: Path, dest: Path, card_note: str = "") -> None:
    """Copy the checkpoint folder `src` to `dest` atomically (`fsio.atomic_dir`), replacing `dest`;
    `card_note` (Markdown) is appended to the copy's model card (README.md)."""
    with atomic_dir(dest) as scratch:
        shutil.copytree(src, scratch, dirs_exist_ok=True)
        card = scratch / "README.md"
        if card_note and card.exists():
            card.write_text(card.read_text(encoding="utf-8") + "\n" + card_note + "\n", encoding="utf-8")


def evaluate_checkpoint(model_path: str, tokenizer, questions: list, folder: Path, *, eval_mode: str,
                        eval_batch_size: int, max_new_tokens: int, glossary=None, rationale_template: str | None = None,
                        entries: list | None = None, dict_eval_limit: int = 0, dict_folder: Path | None = None,
                        choice: PrecisionChoice, extra: dict | None = None, data: str | None = None,
                        split: str = "test", lm_eval=None) -> dict:
    """Score one model on `questions` (and on the first `dict_eval_limit` dictionary `entries`), write
    `folder`/{metrics.json, predictions.jsonl} (and `dict_folder` likewise) and return the metrics.

    The one evaluation step behind each loop's `loop_N/eval`, the demo's `eval_before` and
    experiments/learning.py's untrained base, so all three score alike. `model_path` is a full model or a
    LoRA adapter folder (merged for inference), loaded in the run's precision `choice`; `extra` entries are added to the metrics before they
    are written. Dictionary recall adds `dict_exact_match`, `dict_chrf` ({value, total}) and
    `dict_reverse_exact_match` (the term from its description) to the MCQ metrics. The lm_eval scorer reads `questions` from `data`/`split` with the `lm_eval`
    settings (`lm_eval_protocol.lm_eval_settings`) and loads `model_path` itself (an adapter as peft=).
    Raises ModelError for a model that cannot load, UsageError for a bad `eval_mode`.
    """
    template = {} if rationale_template is None else {"rationale_template": rationale_template}
    in_process = any(BY_NAME[s].needs_model for s in parse_eval_mode(eval_mode)) or (dict_eval_limit and entries)
    model = load_model(model_path, choice, merge_adapter=True) if in_process else None
    metrics, preds = evaluate_mcq(model, tokenizer, questions, eval_mode, eval_batch_size, max_new_tokens, glossary,
                                  model_path=model_path, data=data, split=split, lm_eval=lm_eval, **template)
    metrics.update(extra or {})
    if dict_eval_limit and entries:
        dict_metrics, dict_preds = evaluate_dict(model, tokenizer, entries[:dict_eval_limit], eval_batch_size)
        if is_main_process():
            write_eval(dict_folder if dict_folder is not None else folder.with_name(folder.name + "_dict"),
                       dict_metrics, dict_preds)
        metrics["dict_exact_match"] = dict_metrics["exact_match"]
        metrics["dict_chrf"] = {"value": dict_metrics["chrf"], "total": dict_metrics["n"]}
        metrics["dict_reverse_exact_match"] = dict_metrics["reverse_exact_match"]
    del model
    if is_main_process():  # several processes: each has all records (gathered); one writes them
        write_eval(folder, metrics, preds)
    wait_for_everyone()
    return metrics


class LoopRecipe:
    """`kormedqa loop` as named steps, in the shape of a torchtune recipe:

        recipe = LoopRecipe(cfg)
        recipe.setup()                       # validate inputs, claim the output, replay history
        for loop in recipe.loops():
            checkpoint = recipe.train(loop)  # the stages of one loop -> loop_N/after_typeK
            record = recipe.evaluate(loop, checkpoint)   # loop_N/eval (skipped if already in history)
            if recipe.save_checkpoint(loop, record):     # best_checkpoint, history.json; True = stop
                break
        history = recipe.cleanup()           # final/, stop reason

    `run()` does exactly that. Each step reads what it needs from disk, so a killed run resumed with
    `--resume` repeats only what had not finished.
    """

    def __init__(self, cfg: LoopConfig, choice: PrecisionChoice | None = None):
        self.cfg = cfg
        self.choice = choice  # the run's precision; decided in setup() when not given
        self.stop_reason = "max_loops"
        self.previous: str | None = None  # adapter folder the next stage continues from
        self._best_value: float | None = None  # replayed from history on --resume, so patience counts the same
        self._stale = 0
        self._summaries: dict[str, dict] = {}  # the current loop's stage summaries, for its history record

    def setup(self) -> None:
        """Load and check every input (DataError, LeakageError, ModelError, UsageError before anything
        is written), then claim the output (OutputExistsError without --resume/--overwrite), write
        run.json and read history.json when resuming; build the training rows of both tracks."""
        cfg = self.cfg
        check_select_by(cfg.select_by, cfg.eval_mode)  # also checked at parse time; code callers get it here
        self.stages = [s.strip() for s in cfg.stages.split(",") if s.strip()]
        unknown = set(self.stages) - {"dict", "mcq", "grpo"}
        if unknown:
            raise UsageError(f"unknown stage(s) {sorted(unknown)}; known: dict, mcq, grpo")

        self.entries = load_dictionary(*cfg.dictionary)
        self.train_questions = load_mcq_sources([cfg.train_data, *cfg.extra_train_data], cfg.train_split)
        self.evaluation = self._subset(load_mcq(cfg.eval_data, split=cfg.eval_split))
        self.overlap = check_overlap(self.train_questions, self.evaluation, cfg.allow_overlap)
        # The reported split: scored once, with best_checkpoint, in cleanup().
        self.test_questions = self._subset(load_mcq(cfg.eval_data, split=cfg.test_split)) if cfg.test_split else []
        if self.test_questions:
            check_overlap(self.train_questions, self.test_questions, cfg.allow_overlap)
            if {q.id for q in self.test_questions} == {q.id for q in self.evaluation}:
                log.warning("--eval-data %s gives the same questions for --eval-split %s and --test-split %s (a file "
                            "has no splits): best_checkpoint is chosen on the questions it is reported on",
                            cfg.eval_data, cfg.eval_split, cfg.test_split)
        self.choice = self.choice or run_precision(cfg)
        base = resolve_model_path(cfg.base_model)
        self.base = str(Path(base).resolve()) if Path(base).exists() else base
        self.tokenizer = load_tokenizer(self.base)
        self.lm_eval = None
        if "lm_eval" in parse_eval_mode(cfg.eval_mode):
            data_configs(cfg.eval_data)  # UsageError for data lm-eval cannot read, before the output is claimed
            self.lm_eval = lm_eval_settings(cfg, self.choice, cfg.eval_batch_size)
        given = load_rationales(cfg.rationales) if cfg.rationales else {}  # DataError before the output is claimed

        # Several processes (accelerate launch): all join now, the main one claims the output and
        # writes run.json, the others read what it wrote after the barrier.
        start_processes(cpu=self.choice.torch_device.type == "cpu")
        # Refuses another command's folder and changed settings or data on --resume (nothing written).
        self.out = claim_run(cfg, "loop", {"train": cfg.train_data, "eval": cfg.eval_data,
                                            **{f"train_extra_{i}": d for i, d in enumerate(cfg.extra_train_data, 1)}},
                             choice=self.choice)
        wait_for_everyone()
        self.history_path = self.out / "history.json"
        history = _read_json(self.history_path) if cfg.resume and self.history_path.exists() else {}
        history.setdefault("select_by", cfg.select_by)
        history.setdefault("select_split", cfg.eval_split)
        history.setdefault("loops", [])
        history["overlap"] = self.overlap
        self.history = history

        self.glossary = Glossary(self.entries)
        mcq_train = self.train_questions
        if given:
            # As a record's cot: used as written, and option_rotations keeps such a question unrotated.
            mcq_train = [replace(q, cot=given[q.id]) if q.id in given and not q.cot.strip() else q for q in mcq_train]
        mcq_train = option_rotations(mcq_train, cfg.option_rotations, cfg.seed)
        self.rows = {"dict": dict_rows(self.entries, cfg.dict_directions, cfg.dict_phrasings),
                     "mcq": mcq_rows(mcq_train, cfg.seed, self.glossary, template=cfg.rationale_template)}

    def _subset(self, questions: list) -> list:
        """Every --eval-every-th question, the first --eval-limit of them (both splits alike)."""
        picked = questions[:: max(self.cfg.eval_every, 1)]
        return picked[: self.cfg.eval_limit] if self.cfg.eval_limit else picked

    def loops(self) -> range:
        """Loop numbers 1..max_loops."""
        return range(1, self.cfg.max_loops + 1)

    def train(self, loop: int) -> str:
        """Run the stages of loop `loop` not yet on disk, each from the previous stage's checkpoint
        folder (the base model for the very first). Returns the last stage's folder; the training
        summaries (returned by the stages or, for stages finished earlier, read back) are kept for
        `evaluate`."""
        cfg = self.cfg
        loop_dir = self.out / f"loop_{loop}"
        self._summaries = {}
        for i, track in enumerate(self.stages, start=1):
            stage_dir = loop_dir / f"after_type{i}"
            if stage_dir.exists():
                log.info("loop %d %s: finished earlier, skipping", loop, track)
                summary_file = stage_dir / "training_summary.json"
                summary = _read_json(summary_file) if summary_file.exists() else None
            elif track == "grpo":
                grpo_cfg = GRPOStageConfig(
                    base_model=self.previous or self.base, device=cfg.device, precision=cfg.precision,
                    seed=cfg.seed + loop, max_steps=cfg.grpo_max_steps, num_generations=cfg.num_generations,
                    max_completion_length=cfg.max_completion_length, batch_size=cfg.num_generations * 2,
                    learning_rate=cfg.grpo_learning_rate, report_to=cfg.report_to)
                summary = run_grpo(grpo_cfg, grpo_rows_from_mcqs(self.train_questions), stage_dir,
                                   logs_dir=self.out, stage=f"loop_{loop}_grpo", choice=self.choice)
            else:
                stage_cfg = _stage_config(cfg, track, self.previous or self.base, loop)
                stage_rows = self.rows[track]
                extra = (rehearsal_rows(self.rows["dict"], cfg.dict_rehearsal * len(stage_rows), cfg.seed + loop)
                         if track == "mcq" and cfg.dict_rehearsal else [])
                if track == "mcq" and cfg.rotation_batches:
                    stage_rows = rotation_batches(stage_rows, extra, stage_cfg.resolved().batch_size, cfg.seed + loop)
                else:
                    stage_rows = stage_rows + extra
                summary = run_training(stage_cfg, stage_rows, stage_dir, tokenizer=self.tokenizer,
                                       stage=f"loop_{loop}_{track}", logs_dir=self.out, choice=self.choice)
            if summary is not None:
                self._summaries[track] = _training_part(summary)
                record_peak_memory(self.out / "run.json", summary.get("peak_memory"))
            self.previous = str(stage_dir.resolve())
        return self.previous

    def evaluate(self, loop: int, checkpoint: str) -> dict:
        """Score `checkpoint` into loop_N/eval (and loop_N/eval_dict) and return the loop's history
        record {loop, checkpoint, selected_metric, metrics, training}; a loop already recorded in
        history.json (a resumed run) is returned as recorded, not scored again."""
        done = next((l for l in self.history["loops"] if l["loop"] == loop), None)
        if done is not None:
            return done
        cfg = self.cfg
        loop_dir = self.out / f"loop_{loop}"
        metrics = evaluate_checkpoint(
            checkpoint, self.tokenizer, self.evaluation, loop_dir / "eval", eval_mode=cfg.eval_mode,
            eval_batch_size=cfg.eval_batch_size, max_new_tokens=cfg.max_new_tokens, glossary=self.glossary,
            rationale_template=cfg.rationale_template, entries=self.entries, dict_eval_limit=cfg.dict_eval_limit,
            dict_folder=loop_dir / "eval_dict", choice=self.choice,
            extra={"overlap": self.overlap}, data=cfg.eval_data, split=cfg.eval_split, lm_eval=self.lm_eval)

        record = {
            "loop": loop,
            "checkpoint": str(Path(checkpoint).relative_to(self.out.resolve())),
            "selected_metric": _metric(metrics, cfg.select_by),
            "metrics": _history_metrics(metrics),
            "training": dict(self._summaries),
        }
        self.history["loops"].append(record)
        log.info("loop %d: %s", loop, summary_line(metrics))
        return record

    def save_checkpoint(self, loop: int, record: dict) -> bool:
        """Track the best loop by --select-by (copied to best_checkpoint/), write history.json, and
        return True when the loop should stop: target accuracy reached or --patience loops without
        improvement (the reason goes to `stop_reason`)."""
        cfg = self.cfg
        value = record["selected_metric"]
        if self._best_value is None or value > self._best_value:
            self._best_value, self._stale = value, 0
            self.history["best"] = {"loop": loop, cfg.select_by: value, "checkpoint": record["checkpoint"]}
        else:
            self._stale += 1
        best_src = self.history["best"]["checkpoint"]
        if self.history.get("best_checkpoint_from") != best_src or not (self.out / "best_checkpoint").exists():
            if is_main_process():
                best = self.history["best"]
                note = (f"## How it was chosen\n\nkormedqa loop's best_checkpoint: loop {best['loop']} ({best_src}), "
                        f"{cfg.select_by} {best[cfg.select_by]:.4f} on {cfg.eval_data} (split {cfg.eval_split}, "
                        f"{len(self.evaluation)} questions); the other loops' scores are in history.json.")
                copy_checkpoint(self.out / best_src, self.out / "best_checkpoint", card_note=note)
            self.history["best_checkpoint_from"] = best_src
        if is_main_process():
            write_json_atomic(self.history_path, self.history)
        wait_for_everyone()
        m = record["metrics"]
        reached = m.get("accuracy", m.get("loglik_accuracy", m.get("lm_eval_exact_match")))
        if reached is not None and _metric({"m": reached}, "m") * 100 >= cfg.target_accuracy:
            self.stop_reason = "target_reached"
            return True
        if self._stale >= cfg.patience:
            self.stop_reason = "patience"
            return True
        return False

    def cleanup(self) -> dict:
        """Copy the last trained checkpoint to final/, record the stop reason, score best_checkpoint once on
        --test-split (test/, history's "test"), write and return the history."""
        self.history["stop_reason"] = self.stop_reason
        self.history["final"] = str(Path(self.previous).relative_to(self.out.resolve()))
        if is_main_process():
            copy_checkpoint(Path(self.previous), self.out / "final")
            write_json_atomic(self.history_path, self.history)
        wait_for_everyone()
        if self.test_questions:
            self.test()
        return self.history

    def test(self) -> dict:
        """Score best_checkpoint on --test-split into test/ (once: a resumed run that already did keeps it)
        and record it in history.json as "test": {split, loop, checkpoint, n, metrics}."""
        cfg = self.cfg
        best = self.history["best"]
        done = self.history.get("test")
        if done and done.get("checkpoint") == best["checkpoint"] and (self.out / "test" / "metrics.json").exists():
            return done
        metrics = evaluate_checkpoint(
            str((self.out / "best_checkpoint").resolve()), self.tokenizer, self.test_questions, self.out / "test",
            eval_mode=cfg.eval_mode, eval_batch_size=cfg.eval_batch_size, max_new_tokens=cfg.max_new_tokens,
            glossary=self.glossary, rationale_template=cfg.rationale_template, choice=self.choice,
            extra={"overlap": self.overlap, "split": cfg.test_split}, data=cfg.eval_data, split=cfg.test_split,
            lm_eval=self.lm_eval)
        self.history["test"] = {"split": cfg.test_split, "loop": best["loop"], "checkpoint": best["checkpoint"],
                                "chosen_on": cfg.eval_split, "n": len(self.test_questions),
                                "metrics": _history_metrics(metrics)}
        if is_main_process():
            write_json_atomic(self.history_path, self.history)
        log.info("best_checkpoint (loop %d, chosen on %s) on %s: %s", best["loop"], cfg.eval_split, cfg.test_split,
                 summary_line(metrics))
        return self.history["test"]

    def run(self) -> dict:
        """setup, then train / evaluate / save_checkpoint per loop until a stop, then cleanup."""
        self.setup()
        for loop in self.loops():
            record = self.evaluate(loop, self.train(loop))
            if self.save_checkpoint(loop, record):
                break
        return self.cleanup()


def run_loop(cfg: LoopConfig, choice: PrecisionChoice | None = None) -> dict:
    """`kormedqa loop`: train the stages of `cfg.stages` and evaluate, loop after loop, in `cfg.output`.

    Returns the history also written to history.json: {"loops": [{loop, checkpoint,
    selected_metric, metrics, training}], "best", "select_by", "overlap", "stop_reason"
    (target_reached, patience or max_loops), "final", "test" (best_checkpoint scored once on
    --test-split, when set: {split, loop, checkpoint, chosen_on, n, metrics})}. Every loop is
    scored on --eval-split (dev by default) and best_checkpoint chosen there, so the reported test
    figure is not a selection effect. Raises DataError, LeakageError, ModelError
    or UsageError before the output is claimed; OutputExistsError for an existing output without
    --resume or --overwrite. `choice` is the run's precision (`hardware.choose`), decided from `cfg`
    when the caller has none. The steps: `LoopRecipe`.
    """
    return LoopRecipe(cfg, choice).run()


def _history_metrics(metrics: dict) -> dict:
    """The metrics the scorer table keeps per loop (`history=True`), in the shape metrics.json has them."""
    return {k: metrics[k] for k in HISTORY_METRICS if k in metrics}


def _training_part(summary: dict) -> dict:
    """What history.json keeps of a stage's training summary: losses, steps, seconds."""
    last = summary["log"][-1] if summary.get("log") else {}
    return {
        "train_loss": summary.get("train_loss"),
        "steps": summary.get("steps"),
        "seconds": summary.get("seconds"),
        "peak_memory": summary.get("peak_memory"),
        **{k: last[k] for k in ("answer_loss", "reasoning_loss", "answer_token_accuracy") if k in last},
    }


def _read_json(path: Path):
    import json

    return json.loads(path.read_text(encoding="utf-8"))

