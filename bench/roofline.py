"""How far training and scoring are from this machine's dense-matmul limit, in the precision they run in.

Achieved FLOP/s: training (steady state: the steps after the second, which build oneDNN's kernels
and the optimizer state; LoRA r64 without dropout, as the demo) on seed-format MCQs at batch 2 (the
figure kept since 2026-11-27) and on each of the demo's two stages at its own batch size (dictionary
rows at 8, `dictionary_line` MCQs at 5, `common.TRACKS`; the track's mean real tokens an example,
padding not counted: the timed steps' own examples may differ from that mean by ~8% either way):
6 x params x tokens (forward + both backward matmuls of the body; LoRA freezes the weights, so this
over-counts the weight-gradient third: the fraction reported is an upper bound) plus the lm_head on supervised positions; scoring 2 x params x tokens plus the lm_head
on the scored position only. For scale, each of the model's projection products (and some of the
LoRA rank-64 shapes) is timed alone at 256 and 1,024 rows, ten products after a warm-up: roughly
what the matmuls reach with nothing else running.
Training and scoring run in the precision `--precision` resolves to
(auto: bf16 where the CPU computes it natively, else fp32; the reason is recorded) and are given
as fractions of the dense-matmul peak of that precision. The other precision's peak is measured
too, for the record, under a time budget: emulated bf16 runs ~300x slower than fp32 and would
otherwise stall the run. The CPU model and its speed-relevant flags are in `machine`.

    python bench/roofline.py [--model DIR] [--steps 8] [--precision auto|fp32|bf16]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import SAMPLE, TRACKS, load_pretrained, machine, param_counts, prepared_mcq_rows, track_rows, write_result  # noqa: E402


def shape_rates(config, dtype, rows=(256, 1024), rank: int = 64, repeats: int = 10) -> dict:
    """FLOP/s of each projection's product at the model's own shapes (rows x in -> out, and the LoRA
    rank-`rank` pair), forward only, each timed alone after a warm-up: what the matmuls could reach
    if nothing else ran. Returns {"rows x in x out": flops_per_s}."""
    import torch

    text = config.get_text_config()
    h, inter = text.hidden_size, text.intermediate_size
    q, kv = text.num_attention_heads * text.head_dim, text.num_key_value_heads * text.head_dim
    shapes = sorted({(h, q), (h, kv), (q, h), (h, inter), (inter, h), (h, rank), (rank, inter), (rank, h)})
    out = {}
    for m in rows:
        for k, n in shapes:
            a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
            a @ b
            started = time.perf_counter()
            for _ in range(repeats):
                a @ b
            out[f"{m}x{k}x{n}"] = 2 * m * k * n * repeats / (time.perf_counter() - started)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gemma3-270m")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--questions", type=int, default=48)
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    args = p.parse_args()
    if args.steps < 3:
        p.error("--steps must be at least 3 (the first two are not timed)")

    from safetensors.torch import load_file

    from kormedqa.batching import tokenize_rows
    from kormedqa.data import load_mcq
    from kormedqa.hardware import DTYPES, choose, matmul_flops
    from kormedqa.scorers import eval_prompt, letter_logprobs
    from kormedqa.sft import TrainConfig, run_training

    choice = choose("cpu", args.precision)
    used = choice.precision
    peaks = {name: matmul_flops(DTYPES[name]) for name in ("fp32", "bf16")}
    peak = peaks[used]["flops_per_s"]
    model_dir, tokenizer, model = load_pretrained(args.model, choice)
    n = param_counts(model)
    body, head = n["body"], n["lm_head"]
    shapes = shape_rates(model.config, DTYPES[used])

    qs = load_mcq(SAMPLE / "mcq", split="test")[: args.questions]
    prompts = [eval_prompt(q) for q in qs]
    tokens = sum(len(tokenizer(p)["input_ids"]) for p in prompts)
    started = time.time()
    letter_logprobs(model, tokenizer, prompts, 16)
    score_s = time.time() - started
    score_flops = 2 * body * tokens + 2 * head * len(prompts)
    del model

    def train_rate(name: str, rows: list[dict], **settings) -> dict:
        """GFLOP/s of `steps` optimizer steps of `rows` (steady: from the end of step 2), by the counts above."""
        feats = tokenize_rows(tokenizer, rows, 1024)
        mean_len = sum(len(f["input_ids"]) for f in feats) / len(feats)
        mean_sup = sum(sum(l != -100 for l in f["labels"]) for f in feats) / len(feats)
        cfg = TrainConfig(base_model=model_dir, max_steps=args.steps, grad_accum=1, device="cpu", precision=used,
                          lora_dropout=0.0, **settings)
        out = Path(__file__).resolve().parent / "work" / "roofline"
        shutil.rmtree(out, ignore_errors=True)
        summary = run_training(cfg, rows, out / "adapter", stage=name, logs_dir=out)
        stamps = [r["time"] for r in map(json.loads, (out / "train_log.jsonl").read_text().splitlines()) if "loss" in r]
        steady = args.steps - 2  # from the end of step 2 to the end of the last
        n_examples = steady * cfg.batch_size
        flops = n_examples * (6 * body * mean_len + 6 * head * mean_sup)
        # What the step must do: frozen weights need the forward and the input gradient (4 per weight
        # and token), the LoRA weights also their own gradient (6); the tied lm_head is frozen too.
        lora = sum(v.numel() for v in load_file(out / "adapter" / "adapter_model.safetensors").values())
        needed = n_examples * ((4 * body + 6 * lora) * mean_len + 4 * head * mean_sup)
        seconds = stamps[-1] - stamps[1]
        return {"precision": used, "flops_per_s": flops / seconds, "fraction_of_peak": flops / seconds / peak,
                "examples": n_examples, "batch_size": cfg.batch_size, "mean_tokens": mean_len,
                "mean_supervised_tokens": mean_sup, "seconds": seconds, "steps_timed": steady,
                "seconds_all_steps": summary["seconds"], "lora_params": lora, "needed_flops_per_s": needed / seconds,
                "needed_fraction_of_peak": needed / seconds / peak}

    # The figure kept since 2026-11-27 (seed-format MCQs, batch 2, as train_throughput), then the demo's
    # two stages at their own batch sizes, grouped by length as the demo groups them.
    training = train_rate("roofline", prepared_mcq_rows(), track="mcq", batch_size=args.batch_size,
                          answer_weight="none")
    demo = {track: train_rate(f"roofline_{track}", track_rows(track), track=track, group_by_length=True,
                              **TRACKS[track]) for track in TRACKS}
    score_fps, train_fps, needed_fps = score_flops / score_s, training["flops_per_s"], training["needed_flops_per_s"]
    other = "bf16" if used == "fp32" else "fp32"
    result = {
        "machine": machine(),
        "precision": choice.as_dict(),
        "peak_matmul_flops": {k: v["flops_per_s"] for k, v in peaks.items()},
        "matmul_sizes": peaks,
        "params": {"body": body, "lm_head": head},
        "scoring": {"precision": used, "flops_per_s": score_fps, "fraction_of_peak": score_fps / peak,
                    "questions": len(prompts), "seconds": score_s},
        "training": training,
        "demo_stages": demo,
        "matmul_at_model_shapes": {"flops_per_s": shapes, "fraction_of_peak_min": min(shapes.values()) / peak,
                                   "fraction_of_peak_max": max(shapes.values()) / peak},
    }
    result["summary"] = (
        f"roofline ({used}; {'native bf16: ' + ', '.join(choice.cpu_bf16_flags) if choice.cpu_bf16_flags else 'no native bf16'}): "
        f"{used} matmul peak {peak / 1e9:.0f} GFLOP/s "
        f"({other} {peaks[other]['flops_per_s'] / 1e9:.0f}); training {train_fps / 1e9:.1f} GFLOP/s by 6N "
        f"({train_fps / peak:.0%} of the {used} peak; {needed_fps / peak:.0%} counting only what LoRA needs), "
        f"scoring {score_fps / 1e9:.1f} GFLOP/s ({score_fps / peak:.0%}); the demo's stages "
        + ", ".join(f"{t} {r['fraction_of_peak']:.0%}" for t, r in demo.items())
        + f"; the model's matmuls alone {min(shapes.values()) / peak:.0%}-{max(shapes.values()) / peak:.0%}"
    )
    write_result("roofline", result)
    print(result["summary"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
