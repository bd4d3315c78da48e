"""GPU check: kormedqa's training and scoring speed on random-initialised Gemma 3 models, in one command.

For each size (270M, and 4B = MedGemma-4B's text model), a Gemma 3 built from its config with
random weights, in bf16 (what `--precision auto` picks on a GPU), measures:

- LoRA training (r64, all projections; kormedqa's own Trainer, collator and loss, padding-free):
  tokens/s over the steps after the first, and model FLOPs utilisation (MFU) against the bf16
  peak (790 TFLOP/s on an H200, `--peak-tflops`; the matmul peak measured here is recorded too).
  Model FLOPs per step: 6 x body params x tokens + 6 x lm_head params x supervised tokens (the lm_head
  runs on supervised positions only); attention's seq^2 term is left out (sequences ~250 tokens).
- The same against TRL's SFTTrainer at its fastest setting (activation checkpointing off, bf16,
  same LoRA, data, batch, lr and seed): tokens/s and the step-1 loss of both (they must agree).
  TRL is set up by `common.run_trl_sft`, the same as in bench/train_throughput.py. The library
  stack (transformers, peft, accelerate, trl, datasets at the project's pins) comes as wheels in the
  carried assets folder (bench/gpu_assets.py) and goes first on sys.path when it imports on the
  machine's torch; else the machine's own packages run (recorded in `machine.library_stack`) and,
  without TRL, the TRL arm is skipped with a message.
- Letter log-likelihood (A-E) and cloze log-likelihood (`kormedqa.scorers.option_logprobs`, when
  present) in questions/s on the shipped sample test split.
- Batched greedy generation in new tokens/s (a random model never stops, so every row runs to
  `--gen-tokens`), and how many of a few outputs equal Hugging Face `generate`'s.

Writes bench/results/gpu.json after every part, so a time-out still leaves what finished. Parts
that would start after `--budget-s` are skipped and say so.

    .venv/bin/python bench/gpu_assets.py         # here, first: the real tokenizer + wheels into bench/gpu_assets/
    python3 bench/gpu_check.py [--profile]       # on the GPU machine, with bench/gpu_assets carried along
    .venv/bin/python bench/gpu_check.py --smoke  # CPU, a tiny config, well under a minute (run by make test);
                                                 # a fresh checkout after `make install`; writes bench/work/gpu_smoke.json

Nothing is downloaded at run time; the sizes are configs, the weights random.
"""
from __future__ import annotations

import argparse
import gc
import inspect
import platform
import sys
import time
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "src"))  # the GPU machine runs the checkout as it is, no install
import gpu_assets  # noqa: E402
from common import RESULTS, SAMPLE, machine, param_counts, prepared_mcq_rows, repo_relative, run_trl_sft  # noqa: E402

H200_BF16_PEAK_TFLOPS = 790.0

# Gemma 3 text configs. 270M: the default model's config.json. 4B: google/gemma-3-4b-it's text_config
# (MedGemma-4B has the same shape), checked against transformers' Gemma3TextConfig fields. Left out:
# the 4B's linear RoPE scaling (factor 8) for long contexts, which changes no FLOP count.
SIZES = {
    "270m": dict(vocab_size=262144, hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
                 num_attention_heads=4, num_key_value_heads=1, head_dim=256, sliding_window=512,
                 max_position_embeddings=32768),
    "4b": dict(vocab_size=262208, hidden_size=2560, intermediate_size=10240, num_hidden_layers=34,
               num_attention_heads=8, num_key_value_heads=4, head_dim=256, sliding_window=1024,
               max_position_embeddings=131072),
    # --smoke: the test suite's tiny shape with the real vocabulary.
    "tiny": dict(vocab_size=262144, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=2, num_key_value_heads=1, head_dim=32, sliding_window=512,
                 max_position_embeddings=2048),
}
SLIDING_PATTERN = 6  # five sliding-window layers, then one global, as in every Gemma 3


class Budget:
    def __init__(self, seconds: float):
        self.deadline = time.time() + seconds

    def left(self) -> float:
        return self.deadline - time.time()


# ---------------------------------------------------------------- set-up


def build_model(size: str, tokenizer, device, dtype, seed: int):
    """A Gemma 3 of `size` with random weights, initialised directly on `device` (seconds for 4B)."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from kormedqa.chat import stop_token_ids

    shape = dict(SIZES[size])
    shape["vocab_size"] = max(shape["vocab_size"], len(tokenizer))
    layers = shape["num_hidden_layers"]
    config = Gemma3TextConfig(
        **shape, query_pre_attn_scalar=256,
        layer_types=["full_attention" if (i + 1) % SLIDING_PATTERN == 0 else "sliding_attention" for i in range(layers)],
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=stop_token_ids(tokenizer),
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = Gemma3ForCausalLM(config)
    model.to(dtype)
    model.generation_config.eos_token_id = stop_token_ids(tokenizer)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- training


class StepClock:
    """Wall time at the end of every optimizer step (synchronised), as a Trainer callback."""

    def __init__(self, device):
        from transformers import TrainerCallback

        clock = self
        self.device, self.times = device, []

        class _CB(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                if not clock.times:
                    _sync(clock.device)
                    clock.times.append(time.perf_counter())

            def on_step_end(self, args, state, control, **kw):
                _sync(clock.device)
                clock.times.append(time.perf_counter())

        self.callback = _CB()

    def steady_seconds(self) -> tuple[float, int]:
        """Seconds and steps after the first step (CUDA and kernel warm-up stay out)."""
        if len(self.times) < 3:
            return self.times[-1] - self.times[0], len(self.times) - 1
        return self.times[-1] - self.times[1], len(self.times) - 2


class TokenCount:
    """Wraps a data collator and records real and supervised tokens of every batch, in order.

    Batches are collated in the order the steps use them (accelerate may collate one ahead, so the
    list can be one longer than the steps). Real tokens: the attention mask's ones, or every
    position of a padding-free row.
    """

    def __init__(self, collate):
        self.collate, self.tokens, self.supervised = collate, [], []

    def __call__(self, features):
        batch = self.collate(features)
        mask = batch.get("attention_mask")
        self.tokens.append(int(mask.sum()) if mask is not None else int(batch["input_ids"].numel()))
        self.supervised.append(int((batch["labels"] != -100).sum()))
        return batch


def train_kormedqa(model, tokenizer, rows, args, device, choice, work: Path) -> dict:
    """kormedqa's training step (AnswerWeightedTrainer, padding-free collator, token-mean loss)."""
    from kormedqa.batching import CompletionCollator, tokenize_rows
    from kormedqa.sft import TrainConfig
    from kormedqa.trainer import AnswerWeightedTrainer, prepare_trainable, training_arguments

    cfg = TrainConfig(track="mcq", epochs=1.0, max_steps=args.steps, batch_size=args.batch_size, grad_accum=1,
                      learning_rate=1e-4, seed=args.seed, lora_r=64, lora_alpha=128, lora_dropout=0.0, logging_steps=1)
    model = prepare_trainable(model, cfg)
    feats = tokenize_rows(tokenizer, rows, args.max_length)
    clock, count = StepClock(device), TokenCount(CompletionCollator(tokenizer.pad_token_id, padding_free=True))
    # A plain list is a map-style dataset to the Trainer: `datasets` is not needed on the GPU machine.
    trainer = AnswerWeightedTrainer(model=model, args=training_arguments(cfg.trainer_settings(), work, device, choice.dtype), train_dataset=feats,
                                    data_collator=count, answer_weight=None, callbacks=[clock.callback])
    trainer.args.disable_tqdm = True
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    del trainer
    return {"losses": losses, "clock": clock, "count": count}


def train_trl(model, tokenizer, rows, args, device, choice, work: Path) -> dict:
    """TRL's SFTTrainer as the CPU benchmark runs it (`common.run_trl_sft`), with the same clock and token count."""
    clock = StepClock(device)
    run = run_trl_sft(model, tokenizer, rows, work, choice, steps=args.steps, batch_size=args.batch_size,
                      learning_rate=1e-4, max_length=args.max_length, seed=args.seed, lora_dropout=0.0,
                      callbacks=[clock.callback], wrap_collator=TokenCount, disable_tqdm=True)
    return {"losses": run["losses"], "clock": clock, "count": run["data_collator"]}


def training_part(size, tokenizer, rows, args, device, choice, peak: float, work: Path) -> dict:
    """Both arms `--repeats` times in alternating order (kormedqa, trl, then trl, kormedqa, ...): the first
    training in a process pays one-time costs (CUDA context, cuBLAS handles, allocator growth) that
    would otherwise all fall on whichever arm runs first. Each arm's figures are its fastest round."""
    import torch

    n = param_counts(build_model(size, tokenizer, "meta", choice.dtype, args.seed))
    out = {"params": n, "steps": args.steps, "batch_size": args.batch_size, "repeats": args.repeats}
    arms = {"kormedqa": train_kormedqa}
    trl_missing = gpu_assets.ensure_trl() if not args.no_trl else "--no-trl"
    if trl_missing is None:
        arms["trl"] = train_trl
    else:
        out["trl"] = {"skipped": trl_missing}
        print(f"  TRL arm skipped: {trl_missing}", flush=True)
    order = list(arms)
    for round_ in range(args.repeats):
        for name in (order if round_ % 2 == 0 else order[::-1]):
            try:
                model = build_model(size, tokenizer, device, choice.dtype, args.seed)  # the same weights every time
                r = arms[name](model, tokenizer, rows, args, device, choice, work / f"{size}_{name}_{round_}")
            except torch.cuda.OutOfMemoryError as err:  # the rounds already measured stay
                out.setdefault("failed_rounds", []).append(f"{name} round {round_ + 1}: out of memory: {str(err)[:160]}")
                print(f"  {name} (round {round_ + 1}): out of memory", flush=True)
                model = r = None
                _free(device)
                continue
            del model
            _free(device)
            seconds, steps = r["clock"].steady_seconds()
            tokens, supervised = r["count"].tokens[: args.steps], r["count"].supervised[: args.steps]
            first = len(tokens) - steps
            # The FLOPs the model's matmuls need (frozen or not), lm_head on supervised positions: MFU's numerator.
            flops = sum(6 * n["body"] * t + 6 * n["lm_head"] * s for t, s in zip(tokens[first:], supervised[first:]))
            tps = sum(tokens[first:]) / seconds
            figures = {"losses": r["losses"], "tokens_per_step": tokens, "supervised_tokens_per_step": supervised,
                       "steady_steps": steps, "steady_seconds": seconds, "tokens_per_s": tps,
                       "model_flops_per_s": flops / seconds, "mfu": flops / seconds / peak}
            print(f"  {name} (round {round_ + 1}): {tps:,.0f} tokens/s, MFU {figures['mfu']:.1%}, "
                  f"step-1 loss {r['losses'][0]:.4f}", flush=True)
            rounds = out.setdefault(f"{name}_rounds_tokens_per_s", [])
            rounds.append(tps)
            if name not in out or tps > out[name]["tokens_per_s"]:
                out[name] = figures
    if args.profile:  # one more kormedqa round under the profiler, kept out of the timed figures
        model = build_model(size, tokenizer, device, choice.dtype, args.seed)
        with _profiler(device) as prof:
            arms["kormedqa"](model, tokenizer, rows, args, device, choice, work / f"{size}_kormedqa_profiled")
        del model
        _free(device)
        out["kormedqa_profile"] = _top_ops(prof, device)
    if "kormedqa" not in out:
        raise torch.cuda.OutOfMemoryError("; ".join(out.get("failed_rounds", [])))  # the part fails as a whole
    if "trl" in arms and "trl" in out:
        out["speedup_vs_trl"] = out["kormedqa"]["tokens_per_s"] / out["trl"]["tokens_per_s"]
        out["loss_delta_step1"] = abs(out["kormedqa"]["losses"][0] - out["trl"]["losses"][0])
    return out


@contextmanager
def _profiler(device):
    """torch.profiler over a block (CPU and, on a GPU, CUDA activities), the device synchronised before it stops."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        yield prof
        _sync(device)


def _top_ops(prof, device, top: int = 12) -> dict:
    """The profiled block's top ops by self device time and by self CPU time, with the totals: device
    time well under the wall time means the host (Python, launches, syncs) sets the pace."""
    events = prof.key_averages()
    dev = "cuda" if device.type == "cuda" else "cpu"
    dev_key = "self_device_time_total" if dev == "cuda" else "self_cpu_time_total"

    def rows(key):
        ranked = sorted(events, key=lambda e: getattr(e, key, 0), reverse=True)[:top]
        return [{"op": e.key, "self_ms": getattr(e, key, 0) / 1e3, "calls": e.count} for e in ranked]

    out = {"self_cpu_ms_total": sum(e.self_cpu_time_total for e in events) / 1e3,
           "by_self_cpu": rows("self_cpu_time_total")}
    if dev == "cuda":
        out["self_device_ms_total"] = sum(getattr(e, dev_key, 0) for e in events) / 1e3
        out["by_self_device"] = rows(dev_key)
    for k in ("by_self_device", "by_self_cpu"):
        for r in out.get(k, [])[:6]:
            print(f"    {k} {r['op'][:60]:60s} {r['self_ms']:9.1f} ms x{r['calls']}", flush=True)
    return out


# ---------------------------------------------------------------- scoring


def scoring_part(size, tokenizer, qs, args, device, dtype) -> dict:
    from kormedqa import scorers

    model = build_model(size, tokenizer, device, dtype, args.seed).eval()
    prompts = [scorers.eval_prompt(q) for q in qs]
    out = {"letter_loglik": _timed(scorers.letter_logprobs, model, tokenizer, prompts, args.score_batch, device),
           "cloze": _timed(scorers.option_logprobs, model, tokenizer, qs, args.score_batch, device)}
    gen_prompts = (prompts * (args.gen_batch // max(len(prompts), 1) + 1))[: args.gen_batch]
    scorers.generate(model, tokenizer, gen_prompts[:2], 2, 2, stop_strings=())  # warm-up
    _sync(device)
    started = time.perf_counter()
    texts = scorers.generate(model, tokenizer, gen_prompts, args.gen_batch, args.gen_tokens, stop_strings=())
    _sync(device)
    s = time.perf_counter() - started
    # A random model emits a stop id with p ~ 1e-5 per token: every row runs to gen_tokens.
    out["generation"] = {"prompts": len(texts), "max_new_tokens": args.gen_tokens, "seconds": s,
                         "tokens_per_s": len(texts) * args.gen_tokens / s}
    if args.profile:  # after the timed passes, so it warms none of them
        with _profiler(device) as prof:
            _timed(scorers.letter_logprobs, model, tokenizer, prompts, args.score_batch, device)
        out["letter_loglik"]["profile"] = _top_ops(prof, device)
    out["generation"]["same_as_hf_generate"] = _compare_with_hf(model, tokenizer, gen_prompts[:4], device)
    del model
    _free(device)
    return out


def _timed(score, model, tokenizer, items, batch_size: int, device) -> dict:
    """Questions/s of `score(model, tokenizer, items, batch_size)` over `items` (one per question)."""
    if device.type == "cuda":  # kernel selection and allocator warm-up stay out of the timing
        score(model, tokenizer, items[:batch_size], batch_size)
    _sync(device)
    started = time.perf_counter()
    score(model, tokenizer, items, batch_size)
    _sync(device)
    s = time.perf_counter() - started
    return {"questions": len(items), "seconds": s, "questions_per_s": len(items) / s}


def _compare_with_hf(model, tokenizer, prompts, device, new_tokens: int = 8) -> str:
    """k/n outputs of kormedqa's greedy loop equal to `model.generate` on the same left-padded batch.

    A random model's logits are nearly flat, so a last-bit difference between kernels can flip an
    argmax: read a shortfall as a flag to look at, not as a failure by itself.
    """
    import torch

    from kormedqa import scorers

    ours = scorers.generate(model, tokenizer, prompts, len(prompts), new_tokens, stop_strings=())
    tokenizer.padding_side = "left"
    enc = tokenizer(list(prompts), return_tensors="pt", padding=True).to(device)
    with torch.no_grad():
        ids = model.generate(**enc, max_new_tokens=new_tokens, do_sample=False)
    theirs = tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    # ours comes back in input order; generate() may stop a row at eos, ours too
    return f"{sum(a == b for a, b in zip(ours, theirs))}/{len(prompts)}"


# ---------------------------------------------------------------- driver


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="CPU, tiny config, tiny settings: checks the script runs")
    p.add_argument("--sizes", default=None, help="comma-separated: 270m,4b (default), tiny")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (default bench/gpu_assets/tokenizer, see bench/gpu_assets.py)")
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--questions", type=int, default=None, help="sample test questions to score (default all)")
    p.add_argument("--score-batch", type=int, default=32)
    p.add_argument("--gen-batch", type=int, default=64)
    p.add_argument("--gen-tokens", type=int, default=64)
    p.add_argument("--peak-tflops", type=float, default=H200_BF16_PEAK_TFLOPS)
    p.add_argument("--budget-s", type=float, default=420, help="skip parts that would start after this many seconds")
    p.add_argument("--no-trl", action="store_true")
    p.add_argument("--repeats", type=int, default=None, help="training rounds of both arms, in alternating order "
                   "(default 2; 1 with --smoke)")
    p.add_argument("--profile", action="store_true", help="torch.profiler over one more kormedqa training round and "
                   "one more letter-scoring pass, both outside the timed figures: top ops in the JSON")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", default=str(RESULTS / "gpu.json"))
    args = p.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        p.error("--repeats must be at least 1")
    if args.smoke:
        args.device = "cpu"
        args.sizes = args.sizes or "tiny"
        args.steps, args.batch_size, args.max_length = 1, 1, 512
        args.questions, args.score_batch, args.gen_batch, args.gen_tokens = 4, 4, 2, 4
        if args.out == str(RESULTS / "gpu.json"):
            args.out = str(HERE / "work" / "gpu_smoke.json")

    args.repeats = args.repeats or (1 if args.smoke else 2)
    budget = Budget(args.budget_s)
    # Before torch and transformers are imported: the pinned stack carried in bench/gpu_assets/, if it imports here.
    ready = gpu_assets.setup("gpu_check", args.tokenizer, args.smoke)
    if ready is None:
        return 2
    tokenizer_dir, stack = ready
    import torch  # defers torch and transformers: `--help` and the argument checks stay light
    import transformers
    from transformers import Gemma3ForCausalLM

    from kormedqa.data import load_mcq
    from kormedqa.fsio import write_json_atomic
    from kormedqa.hardware import choose, matmul_flops, pick_device
    from kormedqa.modeling import load_tokenizer

    device = pick_device(args.device)
    choice = choose(device, "auto")
    dtype = choice.dtype
    tokenizer = load_tokenizer(tokenizer_dir)
    rows = prepared_mcq_rows(args.seed)
    if args.smoke:  # the shortest few: the 262k-row lm_head on every supervised token is a CPU step's cost
        rows = sorted(rows, key=lambda r: len(r["prompt"]) + len(r["completion"]))[:8]
    qs = load_mcq(SAMPLE / "mcq", split="test")[: args.questions]

    # 8192^2 on a GPU; on a CPU (--smoke) the sub-second probe's size.
    measured_peak = matmul_flops(dtype, device, max_n=8192 if device.type == "cuda" else 512,
                                 min_n=8192 if device.type == "cuda" else 512, budget_s=1.0)["flops_per_s"]
    peak = args.peak_tflops * 1e12 if device.type == "cuda" else measured_peak
    # kormedqa's greedy loop passes its KV cache as `cache=` (transformers' newer name). A version whose
    # forward only knows `past_key_values` would swallow it in **kwargs and decode without a cache:
    # the comparison with HF generate then shows it.
    takes_cache = "cache" in inspect.signature(Gemma3ForCausalLM.forward).parameters
    if not takes_cache:
        print(f"WARNING: transformers {transformers.__version__}: Gemma3ForCausalLM.forward has no `cache` "
              "argument; kormedqa's generation figures here are not valid", flush=True)
    result = {
        "machine": {**machine(), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                    "transformers": transformers.__version__, "python": platform.python_version(),
                    "forward_takes_cache": takes_cache, "library_stack": stack},
        "smoke": args.smoke, "device": str(device), "precision": choice.as_dict(),
        "peak_flops_used_for_mfu": peak, "measured_matmul_flops": measured_peak,
        "settings": repo_relative(dict(vars(args))), "sizes": {},
    }
    work = HERE / "work" / "gpu_check"
    started = time.time()
    for size in (args.sizes or "270m,4b").split(","):
        entry = result["sizes"].setdefault(size, {})
        for part in ("training", "scoring"):
            if budget.left() <= 0:
                entry[part] = {"skipped": f"time budget of {args.budget_s:.0f} s used up"}
                continue
            print(f"== {size} {part}", flush=True)
            t0 = time.time()
            try:
                if part == "training":
                    entry[part] = training_part(size, tokenizer, rows, args, device, choice, peak, work)
                else:
                    entry[part] = scoring_part(size, tokenizer, qs, args, device, dtype)
            except torch.cuda.OutOfMemoryError as err:
                entry[part] = {"failed": f"out of memory: {str(err)[:200]}"}
                _free(device)
            entry[part]["part_seconds"] = time.time() - t0
            result["seconds"] = time.time() - started
            write_json_atomic(args.out, result)
    result["summary"] = summary(result)
    write_json_atomic(args.out, result)
    print(result["summary"])
    print(f"written: {repo_relative(str(Path(args.out).resolve()))}")
    return 0


def summary(result: dict) -> str:
    parts = []
    for size, entry in result["sizes"].items():
        tr, sc = entry.get("training", {}), entry.get("scoring", {})
        bits = []
        if "kormedqa" in tr:
            k = tr["kormedqa"]
            bits.append(f"train {k['tokens_per_s']:,.0f} tok/s, MFU {k['mfu']:.1%}")
            if "speedup_vs_trl" in tr:
                bits.append(f"{tr['speedup_vs_trl']:.2f}x TRL (step-1 loss delta {tr['loss_delta_step1']:.1e})")
            else:
                bits.append(f"TRL {tr.get('trl', {}).get('skipped', 'not run')}")
        for name, unit in (("letter_loglik", "q/s"), ("cloze", "q/s")):
            if "questions_per_s" in sc.get(name, {}):
                bits.append(f"{name} {sc[name]['questions_per_s']:.1f} {unit}")
        if "generation" in sc:
            g = sc["generation"]
            bits.append(f"generation {g['tokens_per_s']:,.0f} tok/s ({g['same_as_hf_generate']} as HF generate)")
        bits += [f"{part} {entry[part].get('skipped') or entry[part].get('failed')}" for part in ("training", "scoring")
                 if part in entry and ("skipped" in entry[part] or "failed" in entry[part])]
        parts.append(f"{size}: " + ", ".join(bits))
    where = result["machine"].get("gpu") or result["machine"]["cpu"]
    return f"gpu_check ({where}, {result['precision']['precision']}): " + "; ".join(parts)


if __name__ == "__main__":
    raise SystemExit(main())
