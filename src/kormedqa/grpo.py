"""Reward training with the spec's own score (TRL GRPOTrainer).

The reward is `reasoning_score(output, gold)`: 2/3 for the right letter, +1/3 with the detailed
format, 1/4 for the format alone, paid only when the letter follows `</reasoning>` (see
`seed_reward`). Generations stop at `<end_of_turn>`; one that runs to the length limit earns 0. Meant to run after SFT,
from its adapter (the adapter keeps training); from a plain model a fresh LoRA is added.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from .errors import UsageError
from .extract import AFTER_REASONING, reasoning_score
from .formats import GENERATION_PREFIX, REASONING_CLOSE, mcq_prompt
from .records import MCQ
from .text import normalize_text


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
    from .errors import DataError
    from .extract import extract_answer

    out = []
    for line, r in enumerate(rows, start=1):
        gold = extract_answer(r["completion"])
        if not gold or gold not in "ABCDE":
            raise DataError(str(source), line, "completion", "no answer letter A-E to reward (grpo needs prepared MCQ rows)")
        out.append({"prompt": r["prompt"] + GENERATION_PREFIX, "gold": gold})
    return out


def run_grpo(
    base_model: str,
    rows: Sequence[dict],
    output: str | Path,
    max_steps: int = 20,
    num_generations: int = 4,
    max_completion_length: int = 128,
    batch_size: int = 4,
    learning_rate: float = 1e-5,
    temperature: float = 1.0,
    device: str = "auto",
    precision: str = "auto",
    seed: int = 42,
    logs_dir: str | Path | None = None,
    stage: str = "grpo",
) -> dict:
    """Reward-train `base_model` on GRPO rows and write the adapter + tokenizer to `output` atomically.

    `rows` are {"prompt": rendered chat prompt, "gold": letter A-E} (`grpo_rows_from_mcqs`,
    `grpo_rows_from_prepared`). `batch_size` completions per optimizer step, rounded down to a
    multiple of `num_generations` (at least one prompt); `max_completion_length` in tokens.
    From an adapter folder the adapter keeps training; from a plain model a fresh LoRA is added.
    `logs_dir` receives `train_log.jsonl` (default: the folder holding `output`).

    Returns {"stage", "steps", "train_loss", "seconds" (wall), "eos_token_ids", "log": [log dicts
    with "loss" or "reward"]}, also written to `output/training_summary.json`. Raises UsageError
    for a row without a gold letter A-E, ModelError for a model that cannot load.
    """
    from datasets import Dataset
    from peft import PeftModel
    from trl import GRPOConfig, GRPOTrainer

    from .batching import strip_leading_bos
    from .modeling import cpu_vocab_projection, lora_config, stop_token_ids
    from .stage import Stage
    from .trainer import save_checkpoint

    if any(r["gold"] not in "ABCDE" or not r["gold"] for r in rows):
        raise UsageError("every GRPO row needs a gold letter A-E")
    run = Stage(stage, output, device=device, precision=precision, seed=seed, logs_dir=logs_dir)
    # Each optimizer step sees batch_size completions = batch_size / num_generations prompts.
    per_device = max(num_generations, batch_size - batch_size % num_generations)
    args = GRPOConfig(
        output_dir=str(run.work),
        max_steps=max_steps,
        per_device_train_batch_size=per_device,
        num_generations=num_generations,
        max_completion_length=max_completion_length,
        learning_rate=learning_rate,
        temperature=temperature,
        # Completions that run to the length limit stay in the loss with reward 0: that is how
        # the policy learns to end at the letter (see seed_reward); masked, they taught nothing.
        mask_truncated_completions=False,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=seed,
        bf16=run.dtype == torch.bfloat16,
        use_cpu=run.device.type == "cpu",
        # TRL turns activation checkpointing on by default; on CPU memory is not the limit and the
        # recomputation costs a third more compute. GPU runs keep TRL's default.
        **({"activation_checkpointing": False} if run.device.type == "cpu" else {}),
    )
    # After GRPOConfig, which starts the distributed state the model loading needs (see kormedqa.stage).
    model, tokenizer = run.load(base_model)
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
        callbacks=run.callbacks(),
    )
    # Sampling is most of a CPU step; cpu_vocab_projection speeds up its lm_head (docs/decisions.md).
    result = run.train(trainer, around=cpu_vocab_projection)
    summary = run.summary(trainer, result, log_keys=("loss", "reward"), eos_token_ids=list(trainer.eos_token_ids))
    save_checkpoint(trainer, tokenizer, run.output, summary, run.work)
    return summary
