"""The `kormedqa` command: one subcommand per stage, each parsing one typed config and calling it.

Every config is a dataclass parsed by TRL's `TrlParser`, so any flag can also come from
`--config file.yaml` (flags win over the file); the stage configs compose the shared argument
groups of `kormedqa.config` (RunArgs, ModelArgs, LoraArgs ...), so a shared flag is one declaration. Errors a user can fix (`errors.UserError`: a
mistyped flag, a bad choice or range, bad data, an existing output, a missing model) print one
line `kormedqa <command>: error: ...` on stderr and exit 2, and are all raised before an output
is claimed, so nothing is written.
"""
from __future__ import annotations

import difflib
import json
import logging
import os
import sys
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

# The commands' modules are imported by the command that runs (below): torch, transformers, peft and
# trl take seconds to import, and `kormedqa --help`, a typo'd command or a bad flag of a light
# command need none of them.
from .errors import OutputExistsError, UsageError, UserError, one_line
from .fsio import claim_output
from .launch import check_launch, is_main_process
from .numerics import NonFiniteError

USAGE = """usage: kormedqa <command> [options]   (kormedqa <command> --help for each)

commands:
  model fetch [gemma3-270m] --out DIR   build the embedded default model as a plain HF folder
  prepare dict|mcq|hub                  write the spec's prompt/completion JSONL (hub: a copy in the hub's layout)
  rationales                            a teacher writes the spec's rationales, kept only when right (STaR)
  train dict|mcq                        LoRA SFT with answer-only loss
  merge                                 merge a LoRA adapter into a full safetensors model
  eval                                  score a model on KorMedMCQA (generation, log-likelihood, loss)
  loop                                  dictionary epoch, MCQ epoch, evaluate; repeat
  cpt                                   continued pretraining on plain text, perplexity before/after
  demo                                  the whole pipeline on the default model and sample data
"""

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a Ctrl-C


@dataclass
class FetchConfig:
    """`kormedqa model fetch`."""

    name: str = field(default="gemma3-270m", metadata={"help": "only gemma3-270m is embedded", "choices": ["gemma3-270m"]})
    out: str = field(default="models/gemma3-270m", metadata={"help": "folder for the plain HF model (config.json, "
                                                                      "safetensors, tokenizer, chat template)"})
    overwrite: bool = field(default=False, metadata={"help": "rebuild the model even when --out already holds one"})


@dataclass
class MergeConfig:
    """`kormedqa merge`: write adapter + base as one plain model folder."""

    adapter: str = field(default="", metadata={"help": "LoRA adapter folder (e.g. runs/loop/best_checkpoint)"})
    output: str = field(default="", metadata={"help": "folder for the merged model (the base's architecture and "
                                                        "files: safetensors, tokenizer, processor, chat template)"})
    dtype: str = field(default="auto", metadata={"help": "dtype of the merged weights: auto (the base's own, e.g. bf16 "
                                                         "for MedGemma), bf16, fp32 or fp16",
                                                 "choices": ["auto", "bf16", "fp32", "fp16"]})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing --output"})


def parse(config_cls, argv: list[str], prog: str, **fixed):
    """Flags (and `--config file.yaml`) -> a validated `config_cls`; every mistake is a UsageError.

    argparse would print its usage block and exit 2 itself, and HfArgumentParser raises a
    ValueError for unknown flags: both become one UsageError line here, with the nearest known
    flag when the unknown one looks like a typo.
    """
    cfg = _parse_once(config_cls, argv, prog, fixed)
    recorded = _recorded_settings(cfg)
    if recorded:
        # --resume continues a run with the settings its run.json records: they become the defaults,
        # under --config and the flags, so `--resume --output DIR` alone is enough; a flag that
        # differs from the record is then refused by the command's own check (provenance.check_resume).
        cfg = _parse_once(config_cls, argv, prog, fixed, defaults=recorded)
    global _parsed
    _parsed = cfg
    return cfg


# The config the running command parsed: what its error and interrupt hints may name (its own flags).
_parsed = None


def _rerun_hint() -> str:
    """How to continue after a failure, naming only flags the running command has."""
    cfg = _parsed
    output = getattr(cfg, "output", "") or ""
    from pathlib import Path

    if hasattr(cfg, "resume") and output and Path(output).is_dir():
        return f"finished work in {output} is kept; rerun with --resume to continue"
    if hasattr(cfg, "overwrite") and output and Path(output).exists():
        return f"rerun with --overwrite to start again ({output} holds what was written so far)"
    return "nothing was written; rerun to start again"


def _drop_if_empty(path: str) -> None:
    from pathlib import Path

    folder = Path(path) if path else None
    if folder is not None and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def _parse_once(config_cls, argv: list[str], prog: str, fixed: dict, defaults: dict | None = None):
    import yaml

    parser = _one_line_parser()([config_cls], prog=prog, description=config_cls.__doc__)
    if defaults:
        parser.set_defaults_with_config(**defaults)
    try:
        cfg, unknown = parser.parse_args_and_config(argv, return_remaining_strings=True)
    except UserError:
        raise
    except yaml.YAMLError as err:
        raise UsageError(f"--config is not valid YAML: {one_line(err)}") from None
    except ValueError as err:  # TrlParser: a config file that is not a mapping, bad `env`
        raise UsageError(one_line(err)) from None
    if unknown:
        raise UsageError(_unknown_flags(parser, unknown, prog))
    return replace(cfg, **fixed) if fixed else cfg


# What --resume never takes from run.json: where to write and the flags that say how to claim it.
_NOT_RECORDED = frozenset({"output", "resume", "overwrite"})


def _recorded_settings(cfg) -> dict:
    """With `cfg.resume`, the settings run.json in `cfg.output` records for fields `cfg` has; else {}."""
    if not getattr(cfg, "resume", False) or not cfg.output or not Path(cfg.output).is_dir():
        return {}
    from .provenance import recorded_config  # defers torch

    recorded = recorded_config(cfg.output) or {}
    names = {f.name for f in fields(cfg)} - _NOT_RECORDED
    return {k: v for k, v in recorded.items() if k in names}


def _one_line_parser():
    from trl import TrlParser

    class OneLineParser(TrlParser):
        def error(self, message):  # argparse: bad choice, bad type, missing required argument
            raise UsageError(message)

    return OneLineParser


def _unknown_flags(parser, unknown: list[str], prog: str) -> str:
    # Each field has --snake_case and --kebab-case spellings; suggest the kebab one the docs use.
    known = [opt.replace("_", "-") for action in parser._actions for opt in action.option_strings]
    flags = [u for u in unknown if u.startswith("-")] or unknown
    hint = difflib.get_close_matches(flags[0].split("=")[0], known, n=1)
    return (f"unrecognized argument{'s' if len(flags) > 1 else ''} {' '.join(flags)}"
            + (f" (did you mean {hint[0]}?)" if hint else f" (see {prog} --help)"))


def _positional(argv: list[str], choices: tuple[str, ...], command: str) -> tuple[str, list[str]]:
    if not argv or argv[0] not in choices:
        if argv and argv[0] in ("-h", "--help"):
            print(f"usage: kormedqa {command} {{{'|'.join(choices)}}} [options]  (then --help for the options)")
            raise SystemExit(0)
        raise UsageError(f"kormedqa {command} needs one of: {', '.join(choices)}")
    return argv[0], argv[1:]


def cmd_model(argv):
    """`kormedqa model fetch [gemma3-270m] --out DIR`: build the embedded default; prints the folder.

    Raises UsageError for another model name, OutputExistsError when --out holds something other
    than a model (with or without --overwrite: those files are the user's).
    """
    from .default_model import fetch_default  # defers torch
    from .modeling import DEFAULT_MODEL_NAME  # defers torch

    sub, rest = _positional(argv, ("fetch",), "model")
    if rest and not rest[0].startswith("-"):
        rest = ["--name", rest[0], *rest[1:]]
    cfg = parse(FetchConfig, rest, "kormedqa model fetch")
    if cfg.name != DEFAULT_MODEL_NAME:
        raise UsageError(f"only {DEFAULT_MODEL_NAME} is embedded; any other model is used by its folder or hub id")
    out = Path(cfg.out)
    # fetch_default replaces the folder it builds; one that holds something other than a model is
    # the user's (data/sample, say), not a half-fetched model: refused, --overwrite or not, and
    # --overwrite is not offered, since it would delete the user's files.
    if out.is_file() or (out.is_dir() and not (out / "config.json").exists() and any(out.iterdir())):
        raise OutputExistsError(f"{out} exists and is not a model folder (it holds other files): choose another "
                                "--out, an empty or new folder")
    print(fetch_default(cfg.out, overwrite=cfg.overwrite))


def cmd_prepare(argv):
    """`kormedqa prepare dict|mcq|hub [flags]`: `prepare.run_prepare` (hub: `run_prepare_hub`); prints what was written as JSON."""
    from .prepare import PrepareConfig, print_info, run_prepare, run_prepare_hub  # defers torch

    track, rest = _positional(argv, ("dict", "mcq", "hub"), "prepare")
    cfg = parse(PrepareConfig, rest, f"kormedqa prepare {track}", track=track)
    print_info(run_prepare_hub(cfg) if track == "hub" else run_prepare(cfg))


def cmd_rationales(argv):
    """`kormedqa rationales [flags]`: `rationales.run_rationales` (rationales.jsonl for prepare mcq --rationales)."""
    from .rationales import RationalesConfig, run_rationales  # defers torch

    run_rationales(parse(RationalesConfig, argv, "kormedqa rationales"))


def cmd_train(argv):
    """`kormedqa train dict|mcq [flags]`: `sft.run_train` (or `grpo.run_train` for --method grpo);
    the main process prints the training summary."""
    from . import grpo, sft  # defers torch
    from .stage import memory_line, record_peak_memory  # defers torch

    track, rest = _positional(argv, ("dict", "mcq"), "train")
    cfg = parse(sft.TrainConfig, rest, f"kormedqa train {track}", track=track)
    summary = (grpo.run_train if cfg.method == "grpo" else sft.run_train)(cfg)
    record_peak_memory(Path(cfg.output) / "run.json", summary.get("peak_memory"))
    if is_main_process():
        print(json.dumps({k: v for k, v in summary.items() if k != "log"}, indent=2))
        print(memory_line(summary.get("peak_memory") or {}))
        print(f"adapter written to {Path(cfg.output) / 'adapter'}")


def cmd_merge(argv):
    """`kormedqa merge --adapter DIR --output DIR [--dtype auto]`: `modeling.merge_into_base`.

    The merged folder is the base's kind (architecture, tensor names, dtype unless --dtype, every
    non-weight file). Raises UsageError for missing flags or a folder that is not an adapter,
    ModelError for an adapter whose base is gone or an fp16 Gemma, OutputExistsError for an
    existing output without --overwrite.
    """
    from .hardware import PrecisionChoice  # defers torch
    from .modeling import adapter_base, check_precision, merge_into_base, resolve_model_path  # defers torch

    cfg = parse(MergeConfig, argv, "kormedqa merge")
    if not cfg.adapter or not cfg.output:
        raise UsageError("--adapter and --output are required")

    if adapter_base(resolve_model_path(cfg.adapter)) is None:
        raise UsageError(f"{cfg.adapter} is not a LoRA adapter folder (no adapter_config.json): nothing to merge")
    if cfg.dtype == "fp16":
        # ModelError for Gemma, before the output is claimed (not `choose`: merging settles nothing of the process)
        check_precision(cfg.adapter, PrecisionChoice("fp16", "fp16", "cpu", "fp16: --dtype"))
    claim_output(cfg.output, overwrite=cfg.overwrite, is_dir=False)
    merge_into_base(resolve_model_path(cfg.adapter), cfg.output, dtype=cfg.dtype)
    print(f"merged model written to {cfg.output}")


def cmd_eval(argv):
    """`kormedqa eval [flags]`: `evaluate.run_eval` (metrics.json and predictions.jsonl in --output)."""
    from .evaluate import EvalConfig, run_eval  # defers torch

    run_eval(parse(EvalConfig, argv, "kormedqa eval"))


def cmd_loop(argv):
    """`kormedqa loop [flags | --config recipe.yaml]`: `loop.run_loop`; prints why it stopped and the best loop."""
    from .loop import LoopConfig, run_loop  # defers torch

    history = run_loop(parse(LoopConfig, argv, "kormedqa loop"))
    if is_main_process():
        test = history.get("test")
        tested = (f"; on {test['split']}: " + ", ".join(f"{k} {v['value']:.1%}" for k, v in test["metrics"].items()
                                                       if k in ("accuracy", "loglik_accuracy", "cloze_accuracy"))
                  if test else "")
        print(f"stopped: {history['stop_reason']}; best loop {history['best']['loop']} (chosen on "
              f"{history.get('select_split', 'the eval split')}){tested}; see history.json")


def cmd_cpt(argv):
    """`kormedqa cpt [flags]`: `cpt.run_cpt` (merged model, perplexity before/after)."""
    from .cpt import CPTConfig, run_cpt  # defers torch

    run_cpt(parse(CPTConfig, argv, "kormedqa cpt"))


def cmd_demo(argv):
    """`kormedqa demo [flags]`: `demo.run_demo` (the whole pipeline and REPORT.md)."""
    from .demo import DemoConfig, run_demo  # defers torch

    run_demo(parse(DemoConfig, argv, "kormedqa demo"))


COMMANDS = {
    "model": cmd_model,
    "prepare": cmd_prepare,
    "rationales": cmd_rationales,
    "train": cmd_train,
    "merge": cmd_merge,
    "eval": cmd_eval,
    "loop": cmd_loop,
    "cpt": cmd_cpt,
    "demo": cmd_demo,
}


def main(argv: list[str] | None = None) -> int:
    """The `kormedqa` entry point: `argv` (default sys.argv[1:]) -> exit status.

    0 on success; 2 (`EXIT_USER_ERROR`) for every mistake a user can fix (`errors.UserError`, a
    missing file, a NaN/inf loss or metric, out of memory), printed as one line on stderr; 130
    (`EXIT_INTERRUPTED`) for Ctrl-C, one line saying how to continue (only flags the command has).
    Other exceptions (bugs) propagate with their traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else EXIT_USER_ERROR
    global _parsed
    _parsed = None
    command = COMMANDS.get(argv[0])
    if command is None:
        print(f"kormedqa: error: unknown command {argv[0]!r} (one of {', '.join(COMMANDS)}; see kormedqa --help)",
              file=sys.stderr)
        return EXIT_USER_ERROR
    logging.basicConfig(level=os.environ.get("KORMEDQA_LOG", "INFO"), format="%(levelname)s %(name)s: %(message)s")

    try:
        check_launch(argv[0])
        command(argv[1:])
    # An input path that is missing, a folder or unreadable is the user's to fix, whichever reader
    # met it (data files, --config, a model folder); NaN/inf: the settings, not a bug. One line each.
    except (UserError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError,
            NonFiniteError) as err:
        if is_main_process():  # under `accelerate launch` every process fails the same way; one line is enough
            print(f"kormedqa {argv[0]}: error: {one_line(err)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        # Ctrl-C: what was finished is on disk (atomic writes; a training stage keeps a checkpoint);
        # one line instead of a traceback, and the shell's exit status for SIGINT.
        _drop_if_empty(getattr(_parsed, "output", ""))  # claimed but nothing in it yet
        if is_main_process():
            print(f"kormedqa {argv[0]}: interrupted (Ctrl-C); {_rerun_hint()}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except MemoryError as err:
        print(f"kormedqa {argv[0]}: out of memory ({err}); lower {_memory_flags()}", file=sys.stderr)
        return EXIT_USER_ERROR
    except RuntimeError as err:
        if "out of memory" in str(err).lower():
            print(f"kormedqa {argv[0]}: out of memory; lower {_memory_flags()}; {_rerun_hint()}", file=sys.stderr)
            return EXIT_USER_ERROR
        raise
    return 0


def _memory_flags() -> str:
    """The running command's flags that lower memory use, as words for the out-of-memory line."""
    cfg = _parsed
    names = [n for n in ("batch_size", "eval_batch_size", "dict_batch_size", "mcq_batch_size", "max_length",
                         "max_new_tokens") if hasattr(cfg, n)]
    flags = " or ".join("--" + n.replace("_", "-") for n in names) or "the batch size"
    if hasattr(cfg, "grad_accum"):
        flags += " (raise --grad-accum to keep the effective batch)"
    return flags


if __name__ == "__main__":
    raise SystemExit(main())
