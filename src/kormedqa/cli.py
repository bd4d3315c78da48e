"""The `kormedqa` command: one subcommand per stage, each parsing one typed config and calling it.

Every config is a dataclass parsed by TRL's `TrlParser`, so any flag can also come from
`--config file.yaml` (flags win over the file). Errors a user can fix (bad data, existing
output, a missing model) print one line and exit 2; nothing is left half-written.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field, replace

USAGE = """usage: kormedqa <command> [options]   (kormedqa <command> --help for each)

commands:
  model fetch [gemma3-270m] --out DIR   build the embedded default model as a plain HF folder
  prepare dict|mcq                      write the seed's prompt/completion JSONL
  train dict|mcq                        LoRA SFT with answer-only loss
  merge                                 merge a LoRA adapter into a full safetensors model
  eval                                  score a model on KorMedMCQA (generation, log-likelihood, loss)
  loop                                  dictionary epoch, MCQ epoch, evaluate; repeat
  cpt                                   continued pretraining on plain text, perplexity before/after
  demo                                  the whole pipeline on the default model and sample data
"""

EXIT_USER_ERROR = 2


@dataclass
class FetchConfig:
    """`kormedqa model fetch`."""

    name: str = field(default="gemma3-270m", metadata={"help": "only gemma3-270m is embedded"})
    out: str = "models/gemma3-270m"
    overwrite: bool = False


@dataclass
class MergeConfig:
    """`kormedqa merge`: write adapter + base as one plain model folder."""

    adapter: str = field(default="", metadata={"help": "LoRA adapter folder (e.g. runs/loop/best_checkpoint)"})
    output: str = ""
    overwrite: bool = False


def parse(config_cls, argv: list[str], prog: str, **fixed):
    from trl import TrlParser

    parser = TrlParser([config_cls], prog=prog, description=config_cls.__doc__)
    (cfg,) = parser.parse_args_and_config(argv)
    return replace(cfg, **fixed) if fixed else cfg


def _positional(argv: list[str], choices: tuple[str, ...], command: str) -> tuple[str, list[str]]:
    if not argv or argv[0] not in choices:
        if argv and argv[0] in ("-h", "--help"):
            print(f"usage: kormedqa {command} {{{'|'.join(choices)}}} [options]  (then --help for the options)")
            raise SystemExit(0)
        raise UsageError(f"kormedqa {command} needs one of: {', '.join(choices)}")
    return argv[0], argv[1:]


class UsageError(ValueError):
    pass


def cmd_model(argv):
    sub, rest = _positional(argv, ("fetch",), "model")
    if rest and not rest[0].startswith("-"):
        rest = ["--name", rest[0], *rest[1:]]
    cfg = parse(FetchConfig, rest, "kormedqa model fetch")
    from .modeling import DEFAULT_MODEL_NAME, fetch_default

    if cfg.name != DEFAULT_MODEL_NAME:
        raise UsageError(f"only {DEFAULT_MODEL_NAME} is embedded; any other model is used by its folder or hub id")
    print(fetch_default(cfg.out, overwrite=cfg.overwrite))


def cmd_prepare(argv):
    from .prepare import PrepareConfig, print_info, run_prepare

    kind, rest = _positional(argv, ("dict", "mcq"), "prepare")
    print_info(run_prepare(parse(PrepareConfig, rest, f"kormedqa prepare {kind}", kind=kind)))


def cmd_train(argv):
    from pathlib import Path

    from .data import read_jsonl
    from .modeling import check_precision
    from .runs import claim_output, provenance, write_json_atomic
    from .sft import TrainConfig, run_training

    track, rest = _positional(argv, ("dict", "mcq"), "train")
    cfg = parse(TrainConfig, rest, f"kormedqa train {track}", track=track)
    if not cfg.data or not cfg.output:
        raise UsageError("--data (a prepared JSONL) and --output are required")
    rows = read_jsonl(cfg.data)
    for line, row in enumerate(rows, start=1):
        if not isinstance(row.get("prompt"), str) or not isinstance(row.get("completion"), str):
            from .records import DataError

            raise DataError(cfg.data, line, "prompt/completion", "a prepared row needs string 'prompt' and 'completion'")
    check_precision(cfg.base_model, cfg.device, cfg.precision)  # before the output is claimed
    out = claim_output(cfg.output, resume=cfg.resume, overwrite=cfg.overwrite)
    write_json_atomic(out / "run.json", provenance(cfg.resolved(), {"data": cfg.data}))
    if cfg.method == "grpo":
        if track != "mcq":
            raise UsageError("--method grpo trains MCQs: use kormedqa train mcq")
        from .grpo import grpo_rows_from_prepared, run_grpo

        r = cfg.resolved()
        summary = run_grpo(cfg.base_model, grpo_rows_from_prepared(rows), Path(out) / "adapter",
                           max_steps=cfg.max_steps if cfg.max_steps > 0 else 20, num_generations=cfg.num_generations,
                           max_completion_length=cfg.max_completion_length, batch_size=r.batch_size * r.grad_accum,
                           learning_rate=r.learning_rate, device=cfg.device, precision=cfg.precision, seed=cfg.seed,
                           logs_dir=out)
    elif cfg.method == "sft":
        summary = run_training(cfg, rows, Path(out) / "adapter", stage=track, logs_dir=out)
    else:
        raise UsageError(f"--method is sft or grpo, not {cfg.method!r}")
    print(json.dumps({k: v for k, v in summary.items() if k != "log"}, indent=2))
    print(f"adapter written to {Path(out) / 'adapter'}")


def cmd_merge(argv):
    cfg = parse(MergeConfig, argv, "kormedqa merge")
    if not cfg.adapter or not cfg.output:
        raise UsageError("--adapter and --output are required")
    from .modeling import load_model, load_tokenizer
    from .runs import atomic_dir, claim_output

    claim_output(cfg.output, overwrite=cfg.overwrite, is_dir=False)
    merged = load_model(cfg.adapter, device="cpu", precision="fp32", merge_adapter=True)
    tokenizer = load_tokenizer(cfg.adapter)
    with atomic_dir(cfg.output) as scratch:
        merged.save_pretrained(scratch, safe_serialization=True)
        tokenizer.save_pretrained(scratch)
    print(f"merged model written to {cfg.output}")


def cmd_eval(argv):
    from .evaluate import EvalConfig, run_eval

    run_eval(parse(EvalConfig, argv, "kormedqa eval"))


def cmd_loop(argv):
    from .loop import LoopConfig, run_loop

    history = run_loop(parse(LoopConfig, argv, "kormedqa loop"))
    print(f"stopped: {history['stop_reason']}; best loop {history['best']['loop']}; see history.json")


def cmd_cpt(argv):
    from .cpt import CPTConfig, run_cpt

    run_cpt(parse(CPTConfig, argv, "kormedqa cpt"))


def cmd_demo(argv):
    from .demo import DemoConfig, run_demo

    run_demo(parse(DemoConfig, argv, "kormedqa demo"))


COMMANDS = {
    "model": cmd_model,
    "prepare": cmd_prepare,
    "train": cmd_train,
    "merge": cmd_merge,
    "eval": cmd_eval,
    "loop": cmd_loop,
    "cpt": cmd_cpt,
    "demo": cmd_demo,
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else EXIT_USER_ERROR
    command = COMMANDS.get(argv[0])
    if command is None:
        print(f"kormedqa: unknown command {argv[0]!r}\n\n{USAGE}", file=sys.stderr)
        return EXIT_USER_ERROR
    logging.basicConfig(level=os.environ.get("KORMEDQA_LOG", "INFO"), format="%(levelname)s %(name)s: %(message)s")
    from .modeling import ModelError
    from .numerics import NonFiniteError
    from .prepare import LeakageError
    from .records import DataError
    from .runs import OutputExistsError

    try:
        command(argv[1:])
    except (DataError, LeakageError, OutputExistsError, ModelError, UsageError, FileExistsError, FileNotFoundError,
            NonFiniteError) as err:
        print(f"kormedqa {argv[0]}: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except MemoryError as err:
        print(f"kormedqa {argv[0]}: out of memory ({err}); lower --batch-size or --max-length", file=sys.stderr)
        return EXIT_USER_ERROR
    except RuntimeError as err:
        if "out of memory" in str(err).lower():
            print(
                f"kormedqa {argv[0]}: out of memory; lower --batch-size (and raise --grad-accum to keep the "
                "effective batch) or --max-length. Finished checkpoints are kept; rerun with --resume.",
                file=sys.stderr,
            )
            return EXIT_USER_ERROR
        raise
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
