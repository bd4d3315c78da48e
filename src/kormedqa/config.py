"""The argument groups every command shares, composed by each command's config.

Each command's config (`sft.TrainConfig`, `cpt.CPTConfig`, `loop.LoopConfig`, `evaluate.EvalConfig`,
`prepare.PrepareConfig`, `demo.DemoConfig`) is one dataclass that inherits the groups it takes,
so a flag shared by several commands is declared once, with one help text and one range, and keeps
its name everywhere (`--device`, `--seed`, `--lora-r` ...). `cli.parse` hands the composed class to
TRL's `TrlParser`, so every flag can also come from `--config file.yaml` (flags win over the file).

    RunArgs            --output --overwrite --seed           every command that writes a run
    ResumableRunArgs   RunArgs + --resume                    train, loop, demo
    DeviceArgs         --device --precision                  every command that computes
    ModelArgs          DeviceArgs + --base-model             train, cpt, loop
    LoraArgs           --lora-r --lora-alpha                 train, cpt, loop
                       --gradient-checkpointing
    LmEvalArgs         --num-fewshot --apply-chat-template   eval, loop (the lm-eval protocol)
                       --lm-eval-gen-kwargs
    ReportArgs         --report-to                           train, cpt, loop

A command that needs another default redeclares the field with `arg` (it keeps its place). Field
metadata holds only argparse keywords (`help`, `choices`), because HfArgumentParser passes it to
`add_argument`; ranges live in each class's `RANGES` and are merged along the class hierarchy by
`checks.check_config`, which every config's `__post_init__` calls.
"""
from __future__ import annotations

from dataclasses import MISSING, dataclass, field
from typing import Any, Callable, ClassVar, Sequence

from .checks import Range, parse_report_to
from .hardware import PRECISIONS

# The shipped sample dictionaries: the default of every command that reads a dictionary.
SAMPLE_DICTIONARIES = ("data/sample/dictionary.json", "data/sample/characters.json")
# transformers' `lr_scheduler_type` names offered by the training commands (no warm-up in any).
LR_SCHEDULES = ("linear", "constant", "cosine")
# Optimizer steps of a GRPO stage unless told otherwise (`train --method grpo` with --max-steps -1,
# `grpo.GRPOStageConfig`, `loop --grpo-max-steps`): GRPO has no epochs to bound it.
GRPO_MAX_STEPS = 20
DEFAULT_MODEL_HELP = "HF model folder, hub id (owner/name), LoRA adapter folder, or 'gemma3-270m' (the embedded default)"


def arg(default: Any = MISSING, help: str = "", choices: Sequence | None = None,
        factory: Callable[[], Any] | None = None):
    """A dataclass field with its `--help` text (and argparse `choices`); `factory` for list defaults."""
    metadata: dict[str, Any] = {"help": help}
    if choices is not None:
        metadata["choices"] = list(choices)
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class RunArgs:
    """Where a command writes, whether it may replace what is there, and its random seed."""

    output: str = arg("", "where the command writes (a folder; prepare: a JSONL file)")
    overwrite: bool = arg(False, "replace an existing output instead of refusing")
    seed: int = arg(42, "random seed (data order, LoRA initialisation, sampling); the same seed gives the same run")


@dataclass
class ResumableRunArgs(RunArgs):
    """`RunArgs` for commands that can continue an interrupted run."""

    resume: bool = arg(False, "continue the run in --output from its last finished step instead of refusing it")


@dataclass
class DeviceArgs:
    """Where and in which precision a command computes."""

    device: str = arg("auto", "auto (cuda when available, else cpu), cpu, cuda, cuda:N or mps")
    precision: str = arg("auto", "auto (bf16 where the GPU or CPU computes it natively, else fp32; run.json says "
                                 "which and why), fp32, bf16 (fp16 is refused for Gemma)", choices=PRECISIONS)


@dataclass
class ModelArgs(DeviceArgs):
    """The model a command starts from, and where it computes."""

    base_model: str = arg("gemma3-270m", DEFAULT_MODEL_HELP)


@dataclass
class LoraArgs:
    """The LoRA adapter a training command adds (an adapter folder given as model keeps its own)."""

    lora_r: int = arg(64, "LoRA rank")
    lora_alpha: int = arg(128, "LoRA alpha (the update is scaled by alpha / r)")
    gradient_checkpointing: bool = arg(False, "recompute each layer's activations in the backward pass (activation "
                                              "checkpointing): far less activation memory for about a third more "
                                              "compute; off by default, where memory allows (docs/medgemma.md)")

    RANGES: ClassVar[dict] = {"lora_r": Range(low=1), "lora_alpha": Range(low=0, low_open=True)}


@dataclass
class ReportArgs:
    """Where a training command reports its logs besides train_log.jsonl (always written)."""

    report_to: str = arg("tensorboard", "experiment trackers, a comma list of transformers' integration names "
                                        "(tensorboard, wandb, mlflow, trackio, comet_ml, ...), or none; "
                                        "TensorBoard files go to <output>/tensorboard, offline wandb / mlflow runs "
                                        "under <output> unless WANDB_DIR / MLFLOW_TRACKING_URI say otherwise")

    def report_targets(self) -> tuple[str, ...]:
        """--report-to as a tuple of integration names (() for none); UsageError for an unknown or missing one."""
        return parse_report_to(self.report_to)


@dataclass
class LmEvalArgs:
    """The lm-eval protocol's choices, as lm-evaluation-harness names them (kormedqa.lm_eval_protocol)."""

    num_fewshot: int = arg(0, "lm-eval protocol: examples from the fewshot split before each question (0, lm-eval's "
                              "default, or 5: all of them)", choices=[0, 5])
    apply_chat_template: bool = arg(False, "lm-eval protocol: lm-eval's --apply_chat_template (few-shot as multi-turn); "
                                           "recorded in metrics.json")
    lm_eval_gen_kwargs: str = arg("", "lm-eval protocol: lm-eval's --gen_kwargs (e.g. max_gen_toks=64); '' keeps the "
                                      "task's (greedy, 1024 tokens at most, stops at '.' and a blank line)")
