"""The trainer every gradient stage shares: `transformers.Trainer` with the supervised loss.

`AnswerWeightedTrainer` is used by SFT (`sft`) and CPT (`cpt`); `JsonlLogCallback` by every stage
through `stage.Stage` (the frame each stage runs in: device, dtype, folders, logging, timing);
`save_checkpoint` by SFT and GRPO. Only supervised positions reach the 262k-entry
lm_head, and the answer (letter + `<end_of_turn>`) can carry a fixed share of the loss.
Because it is `Trainer`, `accelerate launch` runs it on several processes (DDP, FSDP).

Several processes train the model one process would: the loss of a step is normalised by the token
counts of the GLOBAL batch (every process's micro-batches of the accumulation window, gathered in
`get_batch_samples`), and scaled by the number of processes because DDP/FSDP average gradients;
so the summed gradient is the one-process gradient of the same examples (tested against a real
two-process gloo run, `tests/test_multiprocess.py`). Transformers' own `average_tokens_across_devices`
does the same for a single count; this loss needs two (answer and other tokens). The logged loss
is Trainer's mean over processes of these scaled losses, i.e. the global value, and the answer /
reasoning parts are summed over processes before they are logged, once, by the main process.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback, TrainingArguments

from .batching import completion_loss, supervised_positions
from .fsio import atomic_dir, fault_point
from .hardware import keep_trainable_fp32
from .modeling import lora_config, record_base
from .numerics import NonFiniteError, check_finite_number

log = logging.getLogger(__name__)


class AnswerWeightedTrainer(Trainer):
    """Trainer whose loss sees only supervised positions and can weight the answer (letter + `<end_of_turn>`)."""

    def __init__(self, *args, answer_weight: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.answer_weight = answer_weight
        self.loss_is_scaled_for_ga = True  # compute_loss already divides by the window's token counts
        self._window_counts = (1.0, 1.0)
        self._parts = _LossParts()

    def _save_optimizer_and_scheduler(self, output_dir):
        super()._save_optimizer_and_scheduler(output_dir)
        # A checkpoint with weights and optimizer but no trainer_state.json yet: where the crash tests
        # kill a save (last_trainer_checkpoint must then skip it).
        fault_point("trainer_checkpoint_saving")

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """Trainer's micro-batches of one accumulation window, and the window's answer / other supervised
        token counts (summed over processes) that `compute_loss` divides by.
        """
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
        """The answer-weighted supervised loss of one micro-batch (a 0-dim tensor; with the outputs when
        `return_outputs`), normalised by the window's global token counts and scaled by the process count.

        Raises NonFiniteError, on every process at once, when the loss is NaN or inf.
        """
        labels = inputs["labels"]
        keep = supervised_positions(labels)
        # use_cache=False: transformers derives the block-diagonal mask of a packed (padding-free)
        # row from its position_ids only when no cache exists; Gemma's config has use_cache=True,
        # and with a cache every packed example would attend to the ones before it.
        # Only where accelerate's autocast wraps the forward (not FSDP, whose mixed-precision policy
        # casts instead), and not under activation checkpointing (the recomputed forward runs outside).
        skip_cast = (self.args.bf16 and model.training and not self.args.activation_checkpointing
                     and not getattr(self, "is_fsdp_enabled", False))
        with lora_input_cast(model, skip_cast):
            outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"),
                            position_ids=inputs.get("position_ids"), logits_to_keep=keep, use_cache=False)
        logits = outputs.logits.reshape(-1, outputs.logits.shape[-1])  # (n_supervised, vocab)
        targets = labels[:, 1:][keep[:, :-1]]
        is_answer = inputs["answer_mask"][:, 1:][keep[:, :-1]].bool()
        if model.training:
            n_answer, n_other = self._window_counts
        else:
            n_answer, n_other = float(is_answer.sum()), float((~is_answer).sum())
        ce = F.cross_entropy(logits.float(), targets, reduction="none")
        loss = completion_loss(ce, is_answer, self.answer_weight, n_answer, n_other)
        self._check_finite(loss)
        self._parts.add(ce.detach(), logits.detach(), targets, is_answer, inputs["answer_mask"], keep)
        # DDP averages gradients over processes; counts are global, so scale back up.
        loss = loss * max(self.accelerator.num_processes, 1)
        return (loss, outputs) if return_outputs else loss

    def _check_finite(self, loss: torch.Tensor) -> None:
        """Stop before a NaN/inf loss is back-propagated; every process stops together (no DDP hang)."""
        bad = (~torch.isfinite(loss.detach())).float().reshape(1)
        if self.accelerator.num_processes > 1:
            bad = self.accelerator.reduce(bad, reduction="sum")
        if bool(bad.item()):
            raise NonFiniteError(f"training loss at step {self.state.global_step + 1} is {float(loss)} "
                                 f"(on at least one process); nothing of this step is kept. {_NONFINITE_HINT}")

    def log(self, logs: dict, start_time: float | None = None) -> None:
        """Trainer's log line plus answer_loss, reasoning_loss and answer_token_accuracy since the last one."""
        if "loss" in logs:
            # Every process reaches this line at the same step, so the sum over processes is safe here.
            reduce = self.accelerator.reduce if self.args.world_size > 1 else None
            logs.update(self._parts.summary(reduce, self.args.device))
            self._parts = _LossParts()
        super().log(logs, start_time)


def lora_input_cast(model, under_autocast: bool):
    """A context in which peft's LoRA layers skip casting their input to the LoRA weights' dtype, when
    that cast is a round trip: `under_autocast` (bf16 mixed precision, where the frozen base computes
    in bf16, the LoRA weights stay fp32 and autocast casts the input back to bf16 for their matmul)
    and no LoRA dropout (with dropout the mask is applied in fp32 between the two casts, so they are
    kept). The same numbers either way, bit for bit (tests/test_sft.py), without two copies of every
    projection's input per step (the time saved: docs/decisions.md, "LoRA without dropout")."""
    from contextlib import nullcontext

    if not under_autocast:
        return nullcontext()
    from peft.helpers import disable_input_dtype_casting

    dropouts = [d for m in model.modules() for d in getattr(m, "lora_dropout", {}).values()]
    if not dropouts or any(not isinstance(d, torch.nn.Identity) for d in dropouts):
        return nullcontext()
    return disable_input_dtype_casting(model)


_NONFINITE_HINT = "Try --precision fp32 or a lower --learning-rate; finished checkpoints are kept."


class _LossParts:
    """Running answer/reasoning losses and teacher-forced answer accuracy between two log lines."""

    def __init__(self):
        self.sums = {"answer": 0.0, "other": 0.0}
        self.counts = {"answer": 0, "other": 0}
        self.first_hits = 0
        self.first_total = 0

    @torch.no_grad()
    def add(self, ce, logits, targets, is_answer, answer_mask, keep):
        """Add one micro-batch's per-position losses `ce` (n,), split by `is_answer` (n,), and whether
        the argmax of `logits` (n, vocab) is the target (n,) at each answer's first token."""
        self.sums["answer"] += float(ce[is_answer].sum())
        self.sums["other"] += float(ce[~is_answer].sum())
        self.counts["answer"] += int(is_answer.sum())
        self.counts["other"] += int((~is_answer).sum())
        # The first token of each answer span is the letter: argmax there is the teacher-forced answer.
        # The argmax only where it is counted: over the 262k-wide rows of every supervised position
        # it cost 6-8% of a step (docs/decisions.md, "LoRA without dropout ... the argmax").
        first = _first_answer_flags(answer_mask, keep)
        self.first_hits += int((logits[first].argmax(-1) == targets[first]).sum())
        self.first_total += int(first.sum())

    def summary(self, reduce=None, device=None) -> dict:
        """Mean answer / reasoning losses and answer accuracy; `reduce(tensor, "sum")` sums over processes."""
        totals = [self.sums["answer"], self.sums["other"], self.counts["answer"], self.counts["other"],
                  self.first_hits, self.first_total]
        if reduce is not None:
            totals = reduce(torch.tensor(totals, dtype=torch.float64, device=device), "sum").tolist()
        sum_answer, sum_other, n_answer, n_other, hits, total = totals
        out = {}
        if n_answer:
            out["answer_loss"] = sum_answer / n_answer
        if n_other:
            out["reasoning_loss"] = sum_other / n_other
        if total:
            out["answer_token_accuracy"] = hits / total
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
        """Append `logs` as one JSON line (main process only); NonFiniteError on a NaN/inf loss or grad norm."""
        # Before the rank check: the logged loss is already averaged over processes, so all stop.
        for key in ("loss", "grad_norm"):
            if logs and key in logs:
                value = logs[key].item() if hasattr(logs[key], "item") else logs[key]
                check_finite_number(value, f"{self.stage} {key} at step {state.global_step}")
        if not state.is_world_process_zero or not logs:
            return
        row = {"stage": self.stage, "step": state.global_step, "epoch": state.epoch, "time": time.time(), **logs}
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        fault_point("train_step_logged")


@dataclass(frozen=True)
class TrainerSettings:
    """The schedule every gradient stage hands the Trainer (`training_arguments`), one typed field each.

    Each stage's config builds it (`sft.TrainConfig.trainer_settings`, `cpt.CPTConfig.trainer_settings`),
    so a field a stage forgets is a TypeError at construction, never a silent default. Units:
    `epochs` passes over the data, `max_steps` optimizer steps (-1: `epochs` decides), `batch_size`
    examples per device and micro-batch, `grad_accum` micro-batches per optimizer step,
    `learning_rate` the peak (no warm-up), `logging_steps` / `save_steps` optimizer steps (save 0:
    no Trainer checkpoints), `lr_scheduler_type` transformers' name. `keep_order` trains on the rows
    in the order given and wins over `group_by_length`. `gradient_checkpointing` recomputes each
    layer's activations in the backward pass instead of keeping them. `report_to` names transformers' integrations
    (e.g. ("tensorboard", "wandb")); the JSONL log and, where a stage asks, TensorBoard are attached
    by `stage.Stage` whatever it holds.
    """

    epochs: float
    max_steps: int
    batch_size: int
    grad_accum: int
    learning_rate: float
    seed: int
    lr_scheduler_type: str
    logging_steps: int
    save_steps: int
    group_by_length: bool
    keep_order: bool
    gradient_checkpointing: bool
    report_to: tuple[str, ...] = ()


def training_arguments(settings: TrainerSettings, output_dir: Path, device: torch.device,
                       dtype: torch.dtype) -> TrainingArguments:
    """`TrainingArguments` for one stage from its `TrainerSettings` (TypeError for anything else)."""
    if not isinstance(settings, TrainerSettings):
        raise TypeError(f"training_arguments takes a TrainerSettings, got {type(settings).__name__}")
    return TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps,
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.grad_accum,
        learning_rate=settings.learning_rate,
        lr_scheduler_type=settings.lr_scheduler_type,
        warmup_steps=0,
        weight_decay=0.0,
        logging_steps=settings.logging_steps,
        save_strategy="steps" if settings.save_steps else "no",
        save_steps=settings.save_steps or 500,
        save_total_limit=2,
        # TensorBoard is attached by stage.Stage (its folder outlives the work dir); the other trackers here.
        report_to=[n for n in settings.report_to if n != "tensorboard"] or "none",
        seed=settings.seed,
        data_seed=settings.seed,
        train_sampling_strategy=("sequential" if settings.keep_order else
                                 "group_by_length" if settings.group_by_length else "random"),
        bf16=dtype == torch.bfloat16,
        use_cpu=device.type == "cpu",
        dataloader_pin_memory=device.type == "cuda",
        remove_unused_columns=False,
        activation_checkpointing=settings.gradient_checkpointing,
        # Non-reentrant: gradients reach the LoRA weights although the frozen embeddings' output needs none.
        activation_checkpointing_kwargs={"use_reentrant": False},
        disable_tqdm=False,
    )


def prepare_trainable(model, cfg):
    """Add a fresh LoRA adapter, or keep training the one an adapter folder loaded."""
    from peft import PeftModel, get_peft_model

    if not isinstance(model, PeftModel):
        model = get_peft_model(model, lora_config(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, model))
    keep_trainable_fp32(model)  # a bf16 base still trains fp32 LoRA weights (and fp32 Adam state)
    return model


def adapter_card(base: str, method: str, data: dict[str, str], settings: dict, summary: dict) -> str:
    """The adapter's model card (README.md, in the Hub's format: YAML front matter, then Markdown).

    Says what was trained (`base`, `method`), on which data (`data`: name -> what it was, e.g. the
    file and its example count and SHA-256), with which settings (`settings`: name -> value) and
    with which result (`summary`: kormedqa's training summary, steps, train_loss, seconds). PEFT
    writes an empty template in its place; this replaces it.
    """
    from importlib import metadata

    try:
        version = metadata.version("kormedqa")
    except metadata.PackageNotFoundError:
        version = "(source)"
    loss = summary.get("train_loss")
    lines = [
        "---", f"base_model: {json.dumps(str(base))}", "library_name: peft",
        f"tags: [kormedqa, lora, {method.lower()}]", "---", "",
        f"# {summary.get('stage') or 'adapter'}: a LoRA adapter trained by kormedqa", "",
        f"A LoRA adapter for `{base}`, trained with {method} by kormedqa {version}. Load it with "
        "`peft.AutoPeftModelForCausalLM.from_pretrained(<this folder>)` or give the folder to any kormedqa command "
        "as a model.", "",
        "## Data", "", *[f"- {name}: {what}" for name, what in data.items()], "",
        "## Training", "", "| setting | value |", "|---|---|",
        *[f"| {name} | {value} |" for name, value in settings.items()], "",
        "## Result", "",
        f"- {summary.get('steps')} optimizer steps in {summary.get('seconds', 0):.0f} s (wall)",
        f"- train loss {loss:.4f} (mean per optimizer step over the whole run)" if isinstance(loss, (int, float))
        else "- train loss: not recorded",
        "- Not evaluated here: `kormedqa eval --model <this folder>` scores it (a loop's best_checkpoint/ says "
        "below how it was chosen).", "",
    ]
    return "\n".join(lines)


def save_checkpoint(trainer, tokenizer, output: Path, summary: dict, work: Path, card: str | None = None) -> None:
    """Adapter + tokenizer + training_summary.json (+ the model card `card` as README.md), written
    atomically to `output`; then drop the work dir.

    `summary` is the JSON-ready training summary. Under FSDP every process gathers the weights;
    raises RuntimeError when the accelerate config does not gather a FULL_STATE_DICT.

    The adapter records its base as an absolute path and relative to `output` (`modeling.record_base`),
    so it loads from any working directory, and after its run folder moved together with its base.
    """
    import shutil

    state_dict = None
    if getattr(trainer, "is_fsdp_enabled", False):
        # Sharded parameters: every process takes part in gathering them (as Trainer.save_model does).
        if "FULL_STATE_DICT" not in str(trainer.accelerator.state.fsdp_plugin.state_dict_type):
            raise RuntimeError("kormedqa saves adapters from a full state dict: set fsdp_state_dict_type: "
                               "FULL_STATE_DICT in the accelerate config (recipes/accelerate/fsdp.yaml does)")
        state_dict = trainer.accelerator.get_state_dict(trainer.model)
    if trainer.is_world_process_zero():
        with atomic_dir(output) as scratch:
            trainer.model.save_pretrained(scratch, state_dict=state_dict)
            tokenizer.save_pretrained(scratch)
            peft_config = getattr(trainer.model, "peft_config", None) or {}
            base = next((c.base_model_name_or_path for c in peft_config.values()), None)
            if base and (scratch / "adapter_config.json").exists():
                record_base(scratch, output, base)
            (scratch / "training_summary.json").write_text(
                json.dumps(summary, indent=2, ensure_ascii=False, default=str)
            )
            if card is not None:
                (scratch / "README.md").write_text(card, encoding="utf-8")
    trainer.accelerator.wait_for_everyone()
    shutil.rmtree(work, ignore_errors=True)


def last_trainer_checkpoint(folder: Path) -> str | None:
    """The newest COMPLETE `checkpoint-N` folder in `folder` (a path string), or None when there is none.

    Trainer writes a checkpoint's trainer_state.json last (after the weights, optimizer, scheduler
    and RNG state), so a checkpoint without a readable one was cut short by a kill during the save:
    it is skipped with a warning, and the one before it (`save_total_limit` 2 keeps it until the
    new one is complete) is used. transformers' `get_last_checkpoint` would pick it and fail.
    """
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = []
    for path in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        step = path.name.rsplit("-", 1)[1]
        if path.is_dir() and step.isdigit():
            found.append((int(step), path))
    for _, path in sorted(found, reverse=True):
        try:
            json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))["global_step"]
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("%s is incomplete (no readable trainer_state.json: the save was cut short); skipping it", path)
            continue
        return str(path)
    return None
