"""Where a demo-shaped training step spends its time: the PyTorch profiler over kormedqa's dictionary stage.

A stage of the demo (recipes/cpu-demo.yaml), on the rows and batch `bench/train_levers.py` uses
for it: `--track dict`, dictionary rows of about 30 tokens, batch 8; `--track mcq`, the training
MCQs with the `dictionary_line` rationale, batch 5. Grad-accum 1, lr 5e-4, LoRA r64 on all
projections without dropout, Gemma 3 270M, `--precision auto`. kormedqa's own `run_training`
runs `--steps` optimizer steps; the profiler (CPU activities) records the steps after the first
(the first builds kernels and the optimizer state). Writes bench/results/profile_train.json
(dict) or profile_train_mcq.json: the top ops by self CPU time, each with its share of the
profiled ops' total and its calls, plus the profiled steps' wall time.

    python bench/profile_train.py [--track dict|mcq] [--model DIR] [--steps 4] [--top 15]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import TRACKS, machine, track_rows, write_result  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gemma3-270m")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--precision", default="auto")
    p.add_argument("--track", choices=sorted(TRACKS), default="dict")
    args = p.parse_args()

    import torch
    from transformers import TrainerCallback

    from kormedqa import stage as stage_module
    from kormedqa.hardware import choose
    from kormedqa.modeling import resolve_model_path
    from kormedqa.sft import TrainConfig, run_training

    class Profile(TrainerCallback):
        """Profiles from the start of step 2 to the end of training."""

        def __init__(self):
            self.prof, self.started, self.seconds = None, None, None

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 1 and self.prof is None:
                self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
                self.prof.__enter__()
                self.started = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            if self.prof is not None and self.seconds is None:
                self.seconds = time.perf_counter() - self.started
                self.prof.__exit__(None, None, None)

    profile = Profile()
    plain_callbacks = stage_module.Stage.callbacks
    stage_module.Stage.callbacks = lambda self, **kw: plain_callbacks(self, **kw) + [profile]

    choice = choose("cpu", args.precision)
    rows = track_rows(args.track)
    cfg = TrainConfig(base_model=resolve_model_path(args.model), track=args.track, max_steps=args.steps, grad_accum=1,
                      device="cpu", precision=choice.precision, lora_dropout=0.0, **TRACKS[args.track])
    with tempfile.TemporaryDirectory() as tmp:
        run_training(cfg, rows, Path(tmp) / "adapter", stage="profile", logs_dir=Path(tmp), choice=choice)
    events = list(profile.prof.key_averages())  # by op name: one row per op, all shapes together
    total = sum(e.self_cpu_time_total for e in events)
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[: args.top]
    ops = [{"op": e.key, "self_cpu_ms": e.self_cpu_time_total / 1e3, "share": e.self_cpu_time_total / total,
            "calls": e.count} for e in top]
    profiled_steps = args.steps - 1
    summary = (f"profile: {profiled_steps} {args.track} steps (batch {TRACKS[args.track]['batch_size']}, "
               f"{choice.precision}) took {profile.seconds:.1f} s; top op {ops[0]['op']} {ops[0]['share']:.0%} of self CPU time")
    write_result("profile_train" + ("" if args.track == "dict" else f"_{args.track}"), {
        "machine": machine(), "precision": choice.precision, "track": args.track, "steps_profiled": profiled_steps,
        "profiled_seconds": profile.seconds, "top_ops": ops, "summary": summary})
    print(summary)
    for op in ops:
        print(f"{op['share']:6.1%} {op['self_cpu_ms']:9.1f} ms {op['calls']:6d}  {op['op']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
