"""Prompt/completion fine-tuning with answer-only labels, for both SFT tracks.

Built on `transformers.Trainer` (so `accelerate launch` runs it on several GPUs unchanged) with
one change to the loss: only supervised positions reach the 262k-entry lm_head, and the answer
(letter + `<end_of_turn>`) can carry a fixed share of the loss (`answer_weight`, the seed's 2/3),
because with a plain token mean the letter is ~1 of 40 supervised tokens and barely moves.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback, TrainingArguments

from .formats import END_OF_TURN, MODEL_TURN, REASONING_CLOSE, TURN_SEPARATOR
from .runs import atomic_dir, fault_point

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
    precision: str = field(default="auto", metadata={"help": "auto (bf16 on capable GPUs, else fp32), fp32, bf16"})
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


# ---------------------------------------------------------------- tokenisation


def answer_span(completion: str) -> tuple[int, int]:
    """Character span of the answer inside a completion, the closing `<end_of_turn>` included.

    With reasoning: the letter(s) after `</reasoning>` and `<end_of_turn>`. Without reasoning (the
    dictionary track, answer-only MCQs): the whole content of the model turn and `<end_of_turn>`.
    The end of turn belongs to the answer because an answer that does not stop is not one, and
    because a pretrained base never emitted it: in the letter-only span it was one of ~70 "other"
    tokens, and after 30 MCQ steps (lr 5e-4, W = 2/3) the default model gave it p = 0.001 after
    the letter of its own training examples. Greedy decoding hid that (evaluation stops once
    `</reasoning>X` is complete); sampled GRPO completions never ended, so earned no reward.
    """
    eot = completion.rfind(END_OF_TURN)
    end = len(completion) if eot < 0 else eot + len(END_OF_TURN)
    close = completion.rfind(REASONING_CLOSE)
    if close >= 0:
        return close + len(REASONING_CLOSE), end
    start = len(MODEL_TURN) if completion.startswith(MODEL_TURN) else 0
    return start, end


def tokenize_pair(tokenizer, prompt: str, completion: str, max_length: int) -> dict | None:
    """input_ids, labels (-100 on the prompt) and answer_mask; None when longer than max_length.

    Prompt and completion are tokenised separately and concatenated, so the boundary is a token
    boundary by construction (TRL does the same) and no marker string is searched for.
    """
    prompt_ids = tokenizer(prompt + TURN_SEPARATOR, add_special_tokens=True)["input_ids"]
    enc = tokenizer(completion, add_special_tokens=False, return_offsets_mapping=True)
    completion_ids = enc["input_ids"]
    start, end = answer_span(completion)
    in_answer = [int(s < end and e > start) for s, e in enc["offset_mapping"]]
    ids = prompt_ids + completion_ids
    if len(ids) > max_length:
        return None
    return {
        "input_ids": ids,
        "labels": [-100] * len(prompt_ids) + completion_ids,
        "answer_mask": [0] * len(prompt_ids) + in_answer,
    }


def tokenize_rows(tokenizer, rows: Sequence[dict], max_length: int) -> list[dict]:
    out, dropped = [], 0
    for row in rows:
        item = tokenize_pair(tokenizer, row["prompt"], row["completion"], max_length)
        if item is None:
            dropped += 1
        else:
            out.append(item)
    if dropped:
        log.warning("dropped %d of %d examples longer than max_length=%d", dropped, len(rows), max_length)
    if not out:
        raise ValueError(f"no example fits in max_length={max_length}")
    return out


class CompletionCollator:
    """Right-pads a batch; padding is -100 in labels and 0 in the masks.

    `padding_free=True` instead concatenates the batch into one row with `position_ids` restarting
    at 0 for every example and no attention mask: transformers then builds a block-diagonal causal
    mask (flash-attention varlen kernels on GPU, a packed mask for sdpa/eager), so no compute goes
    to padding (8% of tokens at batch 2 on the sample MCQs, 19% at 4, 31% at 8) and the loss is the
    padded batch's loss. Every prompt starts with labels -100, so no target crosses two examples.
    """

    def __init__(self, pad_token_id: int, padding_free: bool = False):
        self.pad_token_id = pad_token_id
        self.padding_free = padding_free

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        if self.padding_free:
            def packed(key):
                return torch.tensor([[t for f in features for t in f[key]]], dtype=torch.long)

            positions = [[i for f in features for i in range(len(f["input_ids"]))]]
            return {
                "input_ids": packed("input_ids"),
                "position_ids": torch.tensor(positions, dtype=torch.long),
                "labels": packed("labels"),
                "answer_mask": packed("answer_mask"),
            }
        width = max(len(f["input_ids"]) for f in features)

        def pad(key, value):
            return torch.tensor([f[key] + [value] * (width - len(f[key])) for f in features], dtype=torch.long)

        return {
            "input_ids": pad("input_ids", self.pad_token_id),
            "attention_mask": torch.tensor(
                [[1] * len(f["input_ids"]) + [0] * (width - len(f["input_ids"])) for f in features], dtype=torch.long
            ),
            "labels": pad("labels", -100),
            "answer_mask": pad("answer_mask", 0),
        }


# ---------------------------------------------------------------- loss


def completion_loss(
    ce: torch.Tensor,
    is_answer: torch.Tensor,
    answer_weight: float | None,
    n_answer: float,
    n_other: float,
) -> torch.Tensor:
    """Loss over supervised positions, normalised by token counts of the whole accumulation window.

    `ce` is the per-token cross-entropy of the supervised positions.
    answer_weight None: sum(CE) / (n_answer + n_other), the plain token mean TRL computes.
    Otherwise W * sum(CE_answer) / n_answer + (1 - W) * sum(CE_other) / n_other; when the window
    has tokens of one kind only, that kind takes the whole loss.
    """
    if answer_weight is None:
        return ce.sum() / max(n_answer + n_other, 1)
    is_answer = is_answer.bool()
    w = answer_weight if n_other > 0 else 1.0
    w = w if n_answer > 0 else 0.0
    loss = ce.new_zeros(())
    if n_answer > 0:
        loss = loss + w * ce[is_answer].sum() / n_answer
    if n_other > 0:
        loss = loss + (1 - w) * ce[~is_answer].sum() / n_other
    return loss


def supervised_positions(labels: torch.Tensor) -> torch.Tensor:
    """Boolean (batch, seq) mask of positions whose next token is supervised."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != -100
    return keep


class AnswerWeightedTrainer(Trainer):
    """Trainer whose loss sees only supervised positions and can weight the answer (letter + `<end_of_turn>`)."""

    def __init__(self, *args, answer_weight: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.answer_weight = answer_weight
        self.loss_is_scaled_for_ga = True  # compute_loss already divides by the window's token counts
        self._window_counts = (1.0, 1.0)
        self._parts = _LossParts()

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batch_samples, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        n_answer = n_other = 0
        for batch in batch_samples:
            supervised = batch["labels"][:, 1:] != -100
            answer = supervised & batch["answer_mask"][:, 1:].bool()
            n_answer += int(answer.sum())
            n_other += int(supervised.sum()) - int(answer.sum())
        counts = torch.tensor([n_answer, n_other], dtype=torch.float64, device=device)
        if self.args.world_size > 1:
            counts = self.accelerator.gather(counts.unsqueeze(0)).sum(0)
        self._window_counts = (float(counts[0]), float(counts[1]))
        return batch_samples, num_items

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]
        keep = supervised_positions(labels)
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"),
                        position_ids=inputs.get("position_ids"), logits_to_keep=keep)
        logits = outputs.logits.reshape(-1, outputs.logits.shape[-1])  # (n_supervised, vocab)
        targets = labels[:, 1:][keep[:, :-1]]
        is_answer = inputs["answer_mask"][:, 1:][keep[:, :-1]].bool()
        if model.training:
            n_answer, n_other = self._window_counts
        else:
            n_answer, n_other = float(is_answer.sum()), float((~is_answer).sum())
        ce = F.cross_entropy(logits.float(), targets, reduction="none")
        loss = completion_loss(ce, is_answer, self.answer_weight, n_answer, n_other)
        self._parts.add(ce.detach(), logits.detach().argmax(-1) == targets, is_answer, inputs["answer_mask"], keep)
        # DDP averages gradients over processes; counts are global, so scale back up.
        loss = loss * max(self.accelerator.num_processes, 1)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict, start_time: float | None = None) -> None:
        if "loss" in logs:
            logs.update(self._parts.summary())
            self._parts = _LossParts()
        super().log(logs, start_time)


class _LossParts:
    """Running answer/reasoning losses and teacher-forced answer accuracy between two log lines."""

    def __init__(self):
        self.sums = {"answer": 0.0, "other": 0.0}
        self.counts = {"answer": 0, "other": 0}
        self.first_hits = 0
        self.first_total = 0

    @torch.no_grad()
    def add(self, ce, hits, is_answer, answer_mask, keep):
        self.sums["answer"] += float(ce[is_answer].sum())
        self.sums["other"] += float(ce[~is_answer].sum())
        self.counts["answer"] += int(is_answer.sum())
        self.counts["other"] += int((~is_answer).sum())
        # The first token of each answer span is the letter: argmax there is the teacher-forced answer.
        first = _first_answer_flags(answer_mask, keep)
        self.first_hits += int((hits & first).sum())
        self.first_total += int(first.sum())

    def summary(self) -> dict:
        out = {}
        for kind, name in (("answer", "answer_loss"), ("other", "reasoning_loss")):
            if self.counts[kind]:
                out[name] = self.sums[kind] / self.counts[kind]
        if self.first_total:
            out["answer_token_accuracy"] = self.first_hits / self.first_total
        return out


def _first_answer_flags(answer_mask: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    # Starts of contiguous answer runs: one per example, also when a row packs several examples.
    target_answer = answer_mask[:, 1:].bool()
    before = torch.zeros_like(target_answer)
    before[:, 1:] = target_answer[:, :-1]
    first = target_answer & ~before
    return first[keep[:, :-1]]


class JsonlLogCallback(TrainerCallback):
    """Appends every log line (loss, parts, lr) to a JSONL file a user can plot or grep."""

    def __init__(self, path: Path, stage: str = ""):
        self.path = path
        self.stage = stage

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        row = {"stage": self.stage, "step": state.global_step, "epoch": state.epoch, "time": time.time(), **logs}
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        fault_point("train_step_logged")


# ---------------------------------------------------------------- the stage


def training_arguments(cfg: TrainConfig, output_dir: Path, device: torch.device, dtype: torch.dtype) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        logging_steps=cfg.logging_steps,
        save_strategy="steps" if cfg.save_steps else "no",
        save_steps=cfg.save_steps or 500,
        save_total_limit=2,
        report_to="none",  # TensorBoard is attached explicitly, so its folder outlives the work dir
        seed=cfg.seed,
        data_seed=cfg.seed,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        bf16=dtype == torch.bfloat16,
        use_cpu=device.type == "cpu",
        dataloader_pin_memory=device.type == "cuda",
        remove_unused_columns=False,
        activation_checkpointing=False,
        disable_tqdm=False,
    )


def prepare_trainable(model, cfg: TrainConfig):
    """Add a fresh LoRA adapter, or keep training the one an adapter folder loaded."""
    from peft import PeftModel, get_peft_model

    from .modeling import lora_config

    if isinstance(model, PeftModel):
        return model
    return get_peft_model(model, lora_config(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout))


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
    resume_from = _last_trainer_checkpoint(work) if cfg.resume else None
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


def save_checkpoint(trainer, tokenizer, output: Path, summary: dict, work: Path) -> None:
    """Adapter + tokenizer + training_summary.json, written atomically; then drop the work dir."""
    import shutil

    if trainer.is_world_process_zero():
        with atomic_dir(output) as scratch:
            trainer.model.save_pretrained(scratch)
            tokenizer.save_pretrained(scratch)
            (scratch / "training_summary.json").write_text(
                json.dumps(summary, indent=2, ensure_ascii=False, default=str)
            )
    trainer.accelerator.wait_for_everyone()
    shutil.rmtree(work, ignore_errors=True)


def _last_trainer_checkpoint(folder: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(folder)) if folder.is_dir() else None

