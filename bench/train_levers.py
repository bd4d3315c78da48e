"""Training levers, one at a time: seconds per optimizer step of the demo's stages with and without each.

Runs kormedqa's own `run_training` (Gemma 3 270M, LoRA r64 on all projections, `--precision auto`)
on the demo's rows (recipes/cpu-demo.yaml): the dictionary track (rows of ~30 tokens, batch 8) and
the MCQ track (the shipped training MCQs with the `dictionary_line` rationale, batch 5), for
`--steps` optimizer steps per run. Every variant runs `--repeats` times, interleaved in one process
and in reversed order every other round (A B C, C B A, ...), so neither a change in the machine's
load nor being first falls on one of them alone; a variant's step time is the median over its runs. Per run it records
the steady step time (median of the step-to-step gaps from step 3 on: the first steps build
oneDNN's kernels and the optimizer state) and the losses of every step, compared with the
baseline's (same seed and data, so a lever that changes no numerics gives the same losses).

Variants (`--variants`, comma list; baseline first):
  baseline      the defaults (lora_dropout 0.05)
  dropout0      --lora-dropout 0 (peft's dropout becomes an identity)
  dropout0_nocast  dropout 0, so peft's cast of each LoRA input to fp32 is switched off (under bf16
                autocast a round trip; `trainer.lora_input_cast`): the demo's settings
  argmax_all    the demo's settings, but the logged answer accuracy's argmax taken over every
                supervised position's 262k logits, as before 2026-12-04 (now only at answers' first tokens)
  padded        the demo's settings, but each batch padded to one row per example instead of packed
                into one row (`--no-padding-free`): attention then skips the other examples' blocks,
                which a packed row computes and masks
  compile       the baseline under `torch.compile` (TrainingArguments.torch_compile, inductor)

Writes bench/results/train_levers.json.

    python bench/train_levers.py [--steps 12] [--repeats 2] [--tracks dict,mcq] [--variants ...]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import TRACKS, machine, track_rows, write_result  # noqa: E402

def lever(name: str):
    """The patch (a context manager) for a variant that is not a TrainConfig field; nothing otherwise."""
    from unittest import mock

    from kormedqa import sft
    from kormedqa import trainer as trainer_module

    if name == "dropout0":  # the input cast kept although dropout is 0
        return mock.patch.object(trainer_module, "lora_input_cast", lambda model, active: nullcontext())
    if name == "argmax_all":  # the old argmax's cost added
        plain_add = trainer_module._LossParts.add

        def add(self, ce, logits, *a, **kw):
            logits.argmax(-1)
            return plain_add(self, ce, logits, *a, **kw)

        return mock.patch.object(trainer_module._LossParts, "add", add)
    if name == "compile":
        plain_args = sft.training_arguments

        def compiled(*a, **kw):
            args = plain_args(*a, **kw)
            args.torch_compile, args.torch_compile_backend = True, "inductor"
            return args

        return mock.patch.object(sft, "training_arguments", compiled)
    return nullcontext()


def one_run(model_dir: str, choice, track: str, rows, variant: str, steps: int) -> dict:
    from kormedqa.sft import TrainConfig, run_training

    dropout = 0.0 if variant in ("dropout0", "dropout0_nocast", "argmax_all", "padded") else 0.05
    cfg = TrainConfig(base_model=model_dir, track=track, max_steps=steps, grad_accum=1, device="cpu",
                      precision=choice.precision, lora_dropout=dropout, group_by_length=True,
                      padding_free=variant != "padded", **TRACKS[track])
    with tempfile.TemporaryDirectory() as tmp, lever(variant):
        summary = run_training(cfg, rows, Path(tmp) / "adapter", stage=variant, logs_dir=Path(tmp), choice=choice)
        log = [json.loads(l) for l in (Path(tmp) / "train_log.jsonl").read_text().splitlines()]
    stamps = [r["time"] for r in log if "loss" in r]
    gaps = [b - a for a, b in zip(stamps[2:], stamps[3:])]
    return {"seconds": summary["seconds"], "step_s": statistics.median(gaps), "step_gaps": gaps,
            "losses": [r["loss"] for r in log if "loss" in r]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gemma3-270m")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--tracks", default="dict,mcq")
    p.add_argument("--variants", default="baseline,dropout0,dropout0_nocast,argmax_all")
    p.add_argument("--precision", default="auto")
    p.add_argument("--out", default="train_levers")
    args = p.parse_args()
    if args.steps < 5:
        p.error("--steps must be at least 5 (the steady step time starts at step 3)")

    from kormedqa.hardware import choose
    from kormedqa.modeling import resolve_model_path

    choice = choose("cpu", args.precision)
    model_dir = resolve_model_path(args.model)
    variants = args.variants.split(",")
    results: dict = {}
    for track in args.tracks.split(","):
        rows = track_rows(track)
        runs: dict[str, list] = {v: [] for v in variants}
        for round_ in range(args.repeats):
            for v in (variants if round_ % 2 == 0 else variants[::-1]):
                runs[v].append(one_run(model_dir, choice, track, rows, v, args.steps))
                print(track, v, f"{runs[v][-1]['step_s']:.3f} s/step", flush=True)
        base = runs[variants[0]]
        results[track] = {
            v: {"step_s": [r["step_s"] for r in rs], "median_step_s": statistics.median(r["step_s"] for r in rs),
                "speedup": statistics.median(r["step_s"] for r in base) / statistics.median(r["step_s"] for r in rs),
                "max_loss_delta": max(abs(a - b) for a, b in zip(rs[0]["losses"], base[0]["losses"])),
                "runs": rs}
            for v, rs in runs.items()}
    summary = "; ".join(f"{t} " + ", ".join(f"{v} {r['speedup']:.2f}x (loss delta {r['max_loss_delta']:.1e})"
                                            for v, r in res.items() if v != variants[0])
                        for t, res in results.items())
    write_result(args.out, {"machine": machine(), "precision": choice.precision, "settings": vars(args),
                            "tracks": results, "summary": f"levers ({choice.precision}): {summary}"})
    print(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
