"""Reward training with the spec's own score (TRL GRPOTrainer).

The reward is `reasoning_score(output, gold)`: 2/3 for the right letter, +1/3 with the detailed
format, 1/4 for the format alone, paid only when the letter follows `</reasoning>` (see
`seed_reward`). Generations stop at `<end_of_turn>`; one that runs to the length limit earns 0. Meant to run after SFT,
from its adapter (the adapter keeps training); from a plain model a fresh LoRA is added.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Sequence

import torch

from .batching import strip_leading_bos
from .chat import stop_token_ids
from .checks import Range, check_config
from .config import GRPO_MAX_STEPS, ModelArgs, ReportArgs, arg
from .errors import DataError, UsageError
from .extract import AFTER_REASONING, extract_answer, reasoning_score
from .formats import GENERATION_PREFIX, REASONING_CLOSE, mcq_prompt
from .hardware import PrecisionChoice, choose
from .provenance import run_precision
from .modeling import cpu_vocab_projection, lora_config
from .records import MCQ
from .stage import (Stage, check_train_inputs, check_train_paths, claim_train_output, read_prepared_rows,
    train_resume_point, work_folder)
from .text import normalize_text
from .trainer import adapter_card, save_checkpoint


def seed_reward(completions: Sequence, gold: Sequence[str], **_) -> list[float]:
    r"""TRL reward function: the spec's reasoning score, paid only to an answer that ends at its letter.

    `completions`: strings or conversational [{"role", "content"}] lists, as TRL passes them
    (`<end_of_turn>` already removed); `gold`: the letters, one per completion (the dataset
    column). Returns one float per completion in [0, 1]: `reasoning_score` when the completion
    has exactly one `</reasoning>` with the letter right after it and nothing after the letter,
    else 0. Why the stricter rule: docs/decisions.md ("GRPO pays only answers that end").

    >>> seed_reward(["<reasoning>\nA) ... ✓\n</reasoning>A"], ["A"])
    [0.6666666666666666]
    >>> seed_reward(["<reasoning>\nA) ... ✓\n</reasoning>A</reasoning>B"], ["A"])
    [0.0]
    >>> seed_reward(["<reasoning>\n</reasoning>B"], ["A"])
    [0.0]
    """
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    # TRL hands each row's columns beside its completions; a length mismatch would shift golds, so fail.
    return [reasoning_score(t, g) if _ends_at_answer(t) else 0.0 for t, g in zip(texts, gold, strict=True)]


def _ends_at_answer(text: str) -> bool:
    text = normalize_text(text).rstrip()  # the form reasoning_score reads, so positions agree
    found = AFTER_REASONING.search(text)
    return found is not None and text.count(REASONING_CLOSE) == 1 and found.end() == len(text)


def grpo_rows_from_mcqs(mcqs: Sequence[MCQ]) -> list[dict]:
    """MCQs -> GRPO rows {"prompt": the spec's prompt + the model turn (what scoring continues), "gold": letter}."""
    return [{"prompt": mcq_prompt(q) + GENERATION_PREFIX, "gold": q.answer} for q in mcqs]


def grpo_rows_from_prepared(rows: Sequence[dict], source: str = "prepared rows") -> list[dict]:
    """Prepared SFT rows -> GRPO prompts; the gold letter is the one the reference completion gives.

    A completion without a letter A-E is a DataError naming `source` and its line (a dictionary
    row given to `train mcq --method grpo`, say), raised before anything is written.
    """
    out = []
    for line, r in enumerate(rows, start=1):
        gold = extract_answer(r["completion"])
        if not gold or gold not in "ABCDE":
            raise DataError(str(source), line, "completion", "no answer letter A-E to reward (grpo needs prepared MCQ rows)")
        out.append({"prompt": r["prompt"] + GENERATION_PREFIX, "gold": gold})
    return out


@dataclass
class GRPOStageConfig(ModelArgs, ReportArgs):
    """One GRPO stage (`run_grpo`): the model it starts from and its schedule.

    Built by `run_train` from `kormedqa train mcq --method grpo`'s TrainConfig and by the loop from
    its `--grpo-*` flags; a plain dataclass, so `TrlParser` composes it like every other config.
    """

    seed: int = arg(42, "random seed (sampling, LoRA initialisation)")
    max_steps: int = arg(GRPO_MAX_STEPS, "optimizer steps")
    num_generations: int = arg(4, "completions per prompt")
    max_completion_length: int = arg(128, "generated tokens at most")
    batch_size: int = arg(4, "completions per optimizer step, rounded down to a multiple of --num-generations "
                             "(at least one prompt)")
    learning_rate: float = arg(1e-5, "peak learning rate")
    temperature: float = arg(1.0, "sampling temperature")

    RANGES: ClassVar[dict] = {
        "max_steps": Range(low=1), "num_generations": Range(low=2), "max_completion_length": Range(low=1),
        "batch_size": Range(low=1), "learning_rate": Range(low=0, low_open=True),
        "temperature": Range(low=0, low_open=True),
    }

    def __post_init__(self):
        """Choices and ranges (UsageError) when built, before any model is loaded."""
        check_config(self)


def run_grpo(cfg: GRPOStageConfig, rows: Sequence[dict], output: str | Path, logs_dir: str | Path | None = None,
             stage: str = "grpo", choice: PrecisionChoice | None = None) -> dict:
    """Reward-train `cfg.base_model` on GRPO rows and write the adapter + tokenizer to `output` atomically.

    `rows` are {"prompt": rendered chat prompt, "gold": letter A-E} (`grpo_rows_from_mcqs`,
    `grpo_rows_from_prepared`). Each optimizer step sees `cfg.batch_size` completions, rounded down
    to a multiple of `num_generations` (at least one prompt); `max_completion_length` in tokens.
    From an adapter folder the adapter keeps training; from a plain model a fresh LoRA is added.
    `logs_dir` receives `train_log.jsonl` (default: the folder holding `output`). `choice` is the run's
    precision (`hardware.choose`), decided here from `cfg` when the caller has none.

    Returns {"stage", "steps", "train_loss", "seconds" (wall), "eos_token_ids", "log": [log dicts
    with "loss" or "reward"]}, also written to `output/training_summary.json`. Raises UsageError
    for a row without a gold letter A-E, ModelError for a model that cannot load.
    """
    from datasets import Dataset
    from peft import PeftModel
    from trl import GRPOConfig, GRPOTrainer

    if any(r["gold"] not in "ABCDE" or not r["gold"] for r in rows):
        raise UsageError("every GRPO row needs a gold letter A-E")
    run = Stage(stage, output, choice or choose(cfg.device, cfg.precision), seed=cfg.seed, logs_dir=logs_dir)
    # Each optimizer step sees batch_size completions = batch_size / num_generations prompts.
    per_device = max(cfg.num_generations, cfg.batch_size - cfg.batch_size % cfg.num_generations)
    args = GRPOConfig(
        output_dir=str(run.work),
        max_steps=cfg.max_steps,
        per_device_train_batch_size=per_device,
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length,
        learning_rate=cfg.learning_rate,
        temperature=cfg.temperature,
        # Completions that run to the length limit stay in the loss with reward 0: that is how
        # the policy learns to end at the letter (see seed_reward); masked, they taught nothing.
        mask_truncated_completions=False,
        logging_steps=1,
        save_strategy="no",
        report_to=[n for n in cfg.report_targets() if n != "tensorboard"] or "none",  # TensorBoard: Stage.callbacks
        seed=cfg.seed,
        bf16=run.dtype == torch.bfloat16,
        use_cpu=run.device.type == "cpu",
        # TRL turns activation checkpointing on by default; on CPU memory is not the limit and the
        # recomputation costs a third more compute. GPU runs keep TRL's default.
        **({"activation_checkpointing": False} if run.device.type == "cpu" else {}),
    )
    # After GRPOConfig, which starts the distributed state the model loading needs (see kormedqa.stage).
    model, tokenizer = run.load(cfg.base_model)
    # TRL encodes string prompts with the tokenizer's own BOS: a rendered `<bos>` would double it.
    rows = [dict(r, prompt=strip_leading_bos(tokenizer, r["prompt"])[0]) for r in rows]
    # TRL both stops generation and ends a completion's loss mask at the model's generation_config
    # eos ids, which for many Gemma checkpoints is <eos> alone: <end_of_turn> must be among them.
    model.generation_config.eos_token_id = stop_token_ids(tokenizer)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=seed_reward,
        args=args,
        train_dataset=Dataset.from_list(list(rows)),
        processing_class=tokenizer,
        peft_config=None if isinstance(model, PeftModel) else lora_config(model=model),
        callbacks=run.callbacks(report_to=cfg.report_targets()),
    )
    # Sampling is most of a CPU step; cpu_vocab_projection speeds up its lm_head (docs/decisions.md).
    # GRPO keeps no checkpoints to resume from (grpo.run_train), so Ctrl-C keeps none either.
    result = run.train(trainer, around=cpu_vocab_projection, checkpoint_on_interrupt=False)
    summary = run.summary(trainer, result, log_keys=("loss", "reward"), eos_token_ids=list(trainer.eos_token_ids))
    settings = {k: getattr(cfg, k) for k in ("max_steps", "num_generations", "max_completion_length", "batch_size",
                                                 "learning_rate", "temperature", "seed")}
    card = adapter_card(cfg.base_model, "GRPO (reward: the spec's reasoning score, paid only to answers that end "
                        "at their letter)", {"prompts": f"{len(rows)} MCQ prompts with gold letters"},
                        {**settings, "precision": str(run.dtype).replace("torch.", "")}, summary)
    save_checkpoint(trainer, tokenizer, run.output, summary, run.work, card=card)
    return summary


def run_train(cfg) -> dict:
    """`kormedqa train mcq --method grpo` from Python: `cfg` (an `sft.TrainConfig`) -> `cfg.output`/adapter.

    The prepared MCQ rows of `cfg.data` become GRPO prompts whose gold letter is the reference
    completion's; the schedule is `cfg.resolved()`'s (--max-steps -1 is `config.GRPO_MAX_STEPS`;
    `batch_size * grad_accum` completions per step). Everything is checked before the output is
    claimed (UsageError, DataError, ModelError, OutputExistsError); writes run.json,
    train_log.jsonl and adapter/; returns the training summary (`run_grpo`).
    """
    if cfg.method != "grpo":
        raise UsageError(f"grpo.run_train trains --method grpo; --method {cfg.method} is kormedqa.sft.run_train")
    check_train_paths(cfg)
    if cfg.resume:  # GRPO keeps no Trainer checkpoints: only a finished run can be "resumed"
        finished, _ = train_resume_point(cfg, work_folder(Path(cfg.output) / "adapter"))
        return finished
    rows = read_prepared_rows(cfg.data)
    choice = run_precision(cfg)  # the run's precision, decided once (kept on resume) and passed down
    check_train_inputs(cfg, choice)
    grpo_rows = grpo_rows_from_prepared(rows, source=cfg.data)
    r = cfg.resolved()
    stage_cfg = GRPOStageConfig(base_model=r.base_model, device=r.device, precision=r.precision, seed=r.seed,
                                max_steps=r.max_steps, num_generations=r.num_generations,
                                max_completion_length=r.max_completion_length, batch_size=r.batch_size * r.grad_accum,
                                learning_rate=r.learning_rate, report_to=r.report_to)
    out = claim_train_output(cfg, choice)
    return run_grpo(stage_cfg, grpo_rows, out / "adapter", logs_dir=out, choice=choice)
