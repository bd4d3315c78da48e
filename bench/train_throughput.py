"""Training throughput: `kormedqa train mcq` against a plain TRL SFTTrainer, same data, model, steps.

Each arm runs in its own process (so peak RSS is its own) on the shipped sample MCQs in the seed
format. Both use the plain token-mean loss here (`--answer-weight none`) so their losses can be
compared step by step; TRL is set up as `common.run_trl_sft` says (its documentation's
prompt/completion setup, at its fastest setting: activation checkpointing off), with the same
LoRA config, batch, grad-accum, lr and precision (what `--precision` resolves to for kormedqa:
auto is bf16 where the CPU computes it natively, else fp32).
Throughput is measured over `trainer.train()` in both arms (both are Hugging Face Trainer loops),
so loading the model and tokenising are outside both; the wall time with them is reported too.
Both arms train without LoRA dropout by default (`--lora-dropout`, as the demo's recipes do;
docs/decisions.md, "LoRA without dropout"): each at its fastest.

The step-1 losses must agree (delta <= 1e-3). In bf16 the arms' batches differ in shape (kormedqa
packs a batch into one row, TRL pads it), so bf16 rounding alone moves the mean loss by ~1e-3; when
the run is bf16, both arms also train the same steps in fp32 (`fp32_check`), where the same
computation gives the same numbers: the step-1 delta the target is checked on, every step's loss,
and the trained LoRA weights of both, compared entry by entry (the largest difference relative to
the largest weight; tolerance 1e-3: Adam's first steps move each weight by about the learning rate
whatever its gradient's size, so entries whose gradient is ~0 may differ in sign between the two
by rounding, as tests/test_sft.py allows for gradient accumulation).

    python bench/train_throughput.py [--model DIR] [--steps 4] [--batch-size 2] [--grad-accum 1]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from common import load_pretrained, machine, prepared_mcq_rows, run_trl_sft, write_result  # noqa: E402


def supervised_tokens(tokenizer, rows, max_length):
    from kormedqa.batching import tokenize_rows

    return [sum(l != -100 for l in f["labels"][1:]) for f in tokenize_rows(tokenizer, rows, max_length)]


def arm_kormedqa(args, rows, out: Path) -> dict:
    from kormedqa.sft import TrainConfig, run_training

    cfg = TrainConfig(
        base_model=args.model, track="mcq", max_steps=args.steps, batch_size=args.batch_size,
        grad_accum=args.grad_accum, learning_rate=args.lr, max_length=args.max_length, answer_weight="none",
        device="cpu" if args.cpu else "auto", precision=args.precision, seed=args.seed, lora_dropout=args.lora_dropout,
    )
    started = time.time()
    summary = run_training(cfg, rows, out / "adapter", stage="kormedqa", logs_dir=out)
    # summary["seconds"] times trainer.train(), as the TRL arm does; the wall time adds loading the
    # model, tokenising and writing the adapter.
    return {"seconds": summary["seconds"], "wall_seconds": time.time() - started,
            "losses": [h["loss"] for h in summary["log"]]}


def arm_trl(args, rows, out: Path) -> dict:
    from kormedqa.hardware import choose

    wall_started = time.time()
    choice = choose("cpu" if args.cpu else "auto", args.precision)
    _, tokenizer, model = load_pretrained(args.model, choice)
    run = run_trl_sft(model, tokenizer, rows, out / "trl", choice, steps=args.steps, batch_size=args.batch_size,
                      grad_accum=args.grad_accum, learning_rate=args.lr, max_length=args.max_length, seed=args.seed,
                      lora_dropout=args.lora_dropout)
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    # What peft's save_pretrained writes, under the same names as kormedqa's adapter (`_compare_lora`).
    save_file({k: v.contiguous() for k, v in get_peft_model_state_dict(run["model"]).items()},
              str(out / "adapter_model.safetensors"))
    return {"seconds": run["seconds"], "wall_seconds": time.time() - wall_started, "losses": run["losses"]}


def _precision(args) -> str:
    """What kormedqa's `--precision` resolves to here; both arms run in it."""
    from kormedqa.hardware import choose, pick_device

    return choose(pick_device("cpu" if args.cpu else "auto"), args.precision).precision


def run_arm(args) -> None:
    import torch

    from kormedqa.modeling import load_tokenizer

    torch.manual_seed(args.seed)
    rows = prepared_mcq_rows(args.seed)
    out = Path(args.work) / args.arm
    out.mkdir(parents=True, exist_ok=True)
    result = (arm_kormedqa if args.arm == "kormedqa" else arm_trl)(args, rows, out)
    tokens = supervised_tokens(load_tokenizer(args.model), rows, args.max_length)
    examples = args.steps * args.batch_size * args.grad_accum
    # Both arms draw the same examples (same sampler, same seed); the mean supervised length stands
    # in for the exact per-step count, identical for both.
    result.update(
        precision=_precision(args),
        examples=examples,
        examples_per_s=examples / result["seconds"],
        supervised_tokens_per_s=examples * (sum(tokens) / len(tokens)) / result["seconds"],
        peak_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    )
    if torch.cuda.is_available():
        result["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 2**30
    print("RESULT " + json.dumps(result))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gemma3-270m")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--precision", default="auto")
    p.add_argument("--lora-dropout", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--work", default=str(REPO / "bench" / "work" / "train"))
    p.add_argument("--arm", choices=["kormedqa", "trl"], help=argparse.SUPPRESS)
    p.add_argument("--cpu", action="store_true", default=not _has_cuda())
    args = p.parse_args()
    if args.arm:
        run_arm(args)
        return 0
    from kormedqa.modeling import resolve_model_path

    args.model = resolve_model_path(args.model)
    results = {arm: _run_arm(arm, args) for arm in ("trl", "kormedqa")}
    k, t = results["kormedqa"], results["trl"]
    ratio = k["examples_per_s"] / t["examples_per_s"]
    delta = abs(k["losses"][0] - t["losses"][0])
    if k["precision"] != t["precision"]:
        raise SystemExit(f"the arms ran in different precisions: kormedqa {k['precision']}, TRL {t['precision']}")
    work = Path(args.work)
    fp32_check = None
    if k["precision"] != "fp32":
        fp32_work = str(work / "fp32")
        one = {arm: _run_arm(arm, args, "--precision", "fp32", "--work", fp32_work) for arm in ("trl", "kormedqa")}
        fp32_check = {"kormedqa_losses": one["kormedqa"]["losses"], "trl_losses": one["trl"]["losses"],
                      "delta_step1": abs(one["kormedqa"]["losses"][0] - one["trl"]["losses"][0]),
                      "max_loss_delta": max(abs(a - b) for a, b in zip(one["kormedqa"]["losses"], one["trl"]["losses"])),
                      "lora": _compare_lora(Path(fp32_work))}
    lora = fp32_check["lora"] if fp32_check else _compare_lora(work)
    checked = fp32_check["delta_step1"] if fp32_check else delta
    summary = (f"train ({k['precision']}): kormedqa {ratio:.2f}x TRL with activation checkpointing off "
               f"(loss delta at step 1 {delta:.1e}" + (f", {checked:.1e} in fp32" if fp32_check else "")
               + f"; LoRA weights after {args.steps} steps{' in fp32' if fp32_check else ''} within "
               f"{lora['max_rel_diff']:.1e} of the largest; target >= 3x, delta <= 1e-3, weights within 1e-3)")
    write_result("train_throughput", {
        "machine": machine(), "settings": {**{k_: v for k_, v in vars(args).items() if k_ not in ("arm",)},
                                           "trl_activation_checkpointing": False},
        "kormedqa": k, "trl": t, "speedup": ratio, "loss_delta_step1": delta, "fp32_check": fp32_check, "lora": lora,
        "summary": summary,
    })
    print(summary)
    return 0


def _compare_lora(work: Path) -> dict:
    """The two arms' trained LoRA weights: the largest entry-wise difference, absolute and relative to
    the largest weight; KeyError if the arms trained different modules."""
    from safetensors.torch import load_file

    ours, theirs = (load_file(str(path)) for path in (work / "kormedqa" / "adapter" / "adapter_model.safetensors",
                                                      work / "trl" / "adapter_model.safetensors"))
    if set(ours) != set(theirs):
        raise KeyError(f"the arms trained different LoRA weights: {sorted(set(ours) ^ set(theirs))[:4]}")
    diff = max(float((ours[n].float() - theirs[n].float()).abs().max()) for n in ours)
    scale = max(float(v.float().abs().max()) for v in theirs.values())
    return {"tensors": len(ours), "max_abs_diff": diff, "max_abs_weight": scale, "max_rel_diff": diff / scale}


def _run_arm(arm: str, args, *extra: str) -> dict:
    """One arm in its own process (its own peak RSS); `extra` flags override this run's."""
    cmd = [sys.executable, __file__, "--arm", arm, *sys.argv[1:], *extra]
    if "--model" not in sys.argv:
        cmd += ["--model", args.model]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        print(proc.stderr[-4000:], file=sys.stderr)
        raise SystemExit(f"{arm} arm failed")
    return json.loads(line[len("RESULT "):])


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    raise SystemExit(main())
