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
  TRL and `datasets` are not on the GPU machine: they come as wheels in the carried assets folder
  and are installed into bench/work/gpu_site; without them the TRL arm is skipped with a message.
- Letter log-likelihood (A-E) and cloze log-likelihood (`kormedqa.scorers.option_logprobs`, when
  present) in questions/s on the shipped sample test split.
- Batched greedy generation in new tokens/s (a random model never stops, so every row runs to
  `--gen-tokens`), and how many of a few outputs equal Hugging Face `generate`'s.

Writes bench/results/gpu.json after every part, so a time-out still leaves what finished. Parts
that would start after `--budget-s` are skipped and say so.

    python bench/gpu_check.py --prepare     # here: the real tokenizer + wheels into bench/gpu_assets/
    python3 bench/gpu_check.py              # on the GPU machine, with bench/gpu_assets carried along
    python bench/gpu_check.py --smoke       # CPU, a tiny config, well under a minute (run by make test);
                                            # works on a fresh checkout (no --prepare needed)

Nothing is downloaded at run time; the sizes are configs, the weights random.
"""
from __future__ import annotations

import argparse
import gc
import importlib
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "src"))  # the GPU machine runs the checkout as it is, no install
from common import RESULTS, SAMPLE, machine  # noqa: E402

ASSETS = HERE / "gpu_assets"
SITE = HERE / "work" / "gpu_site"
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


def param_counts(model) -> dict:
    head = model.get_output_embeddings().weight.numel()
    total = sum(p.numel() for p in model.parameters())
    return {"total": total, "body": total - model.get_input_embeddings().weight.numel(), "lm_head": head}


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def ensure_trl() -> str | None:
    """Import TRL, installing it from the carried wheels if needed; None if ready, else why not."""
    try:
        import trl  # noqa: F401
        return None
    except ImportError:
        pass
    wheels = sorted((ASSETS / "wheels").glob("*.whl"))
    if not wheels:
        return f"TRL is not installed and no wheels in {ASSETS / 'wheels'} (run --prepare where it is, carry the folder)"
    # --no-deps into a folder of our own: the machine's torch/transformers stay as they are.
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(SITE),
           *map(str, wheels)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return f"installing the TRL wheels failed: {proc.stderr.strip()[-300:]}"
    sys.path.append(str(SITE))  # last: a package the machine has keeps its own version
    importlib.invalidate_caches()
    try:
        import trl  # noqa: F401,F811
        return None
    except Exception as err:  # an incompatible wheel shows here, not as a crash of the whole check
        return f"TRL from the carried wheels does not import: {type(err).__name__}: {err}"


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


def train_kormedqa(model, tokenizer, rows, args, device, dtype, work: Path) -> dict:
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
    trainer = AnswerWeightedTrainer(model=model, args=training_arguments(cfg.trainer_settings(), work, device, dtype), train_dataset=feats,
                                    data_collator=count, answer_weight=None, callbacks=[clock.callback])
    trainer.args.disable_tqdm = True
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    del trainer
    return {"losses": losses, "clock": clock, "count": count}


def train_trl(model, tokenizer, rows, args, device, dtype, work: Path) -> dict:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    import torch
    from kormedqa.formats import TURN_SEPARATOR
    from kormedqa.modeling import lora_config

    data = Dataset.from_list([{"prompt": r["prompt"] + TURN_SEPARATOR, "completion": r["completion"]} for r in rows])
    config = SFTConfig(
        output_dir=str(work), max_steps=args.steps, per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1, learning_rate=1e-4, max_length=args.max_length, lr_scheduler_type="linear",
        warmup_steps=0, weight_decay=0.0, logging_steps=1, save_strategy="no", report_to="none", seed=args.seed,
        data_seed=args.seed, bf16=dtype == torch.bfloat16, use_cpu=device.type == "cpu", eos_token="<end_of_turn>",
        activation_checkpointing=False, disable_tqdm=True,
    )
    clock = StepClock(device)
    trainer = SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer,
                         peft_config=lora_config(64, 128, 0.0), callbacks=[clock.callback])
    trainer.data_collator = count = TokenCount(trainer.data_collator)  # read when train() builds the loader
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    del trainer
    return {"losses": losses, "clock": clock, "count": count}


def training_part(size, tokenizer, rows, args, device, dtype, peak: float, work: Path) -> dict:
    model = build_model(size, tokenizer, device, dtype, args.seed)
    n = param_counts(model)
    out = {"params": n, "steps": args.steps, "batch_size": args.batch_size}
    arms = {"kormedqa": train_kormedqa}
    trl_missing = ensure_trl() if not args.no_trl else "--no-trl"
    if trl_missing is None:
        arms["trl"] = train_trl
    else:
        out["trl"] = {"skipped": trl_missing}
        print(f"  TRL arm skipped: {trl_missing}", flush=True)
    for name, arm in arms.items():
        if name != "kormedqa":
            model = build_model(size, tokenizer, device, dtype, args.seed)  # the same weights again
        r = arm(model, tokenizer, rows, args, device, dtype, work / f"{size}_{name}")
        del model
        _free(device)
        seconds, steps = r["clock"].steady_seconds()
        tokens, supervised = r["count"].tokens[: args.steps], r["count"].supervised[: args.steps]
        first = len(tokens) - steps
        # The FLOPs the model's matmuls need (frozen or not), lm_head on supervised positions: MFU's numerator.
        flops = sum(6 * n["body"] * t + 6 * n["lm_head"] * s for t, s in zip(tokens[first:], supervised[first:]))
        tps = sum(tokens[first:]) / seconds
        out[name] = {"losses": r["losses"], "tokens_per_step": tokens, "supervised_tokens_per_step": supervised,
                     "steady_steps": steps, "steady_seconds": seconds, "tokens_per_s": tps,
                     "model_flops_per_s": flops / seconds, "mfu": flops / seconds / peak}
        print(f"  {name}: {tps:,.0f} tokens/s, MFU {out[name]['mfu']:.1%}, step-1 loss {r['losses'][0]:.4f}", flush=True)
    if "trl" in arms:
        out["speedup_vs_trl"] = out["kormedqa"]["tokens_per_s"] / out["trl"]["tokens_per_s"]
        out["loss_delta_step1"] = abs(out["kormedqa"]["losses"][0] - out["trl"]["losses"][0])
    return out


# ---------------------------------------------------------------- scoring


def scoring_part(size, tokenizer, qs, args, device, dtype) -> dict:
    from kormedqa import scorers

    model = build_model(size, tokenizer, device, dtype, args.seed).eval()
    prompts = [scorers.eval_prompt(q) for q in qs]
    out = {}

    def timed(score, items) -> dict:
        if device.type == "cuda":  # kernel selection and allocator warm-up stay out of the timing
            score(model, tokenizer, items[: args.score_batch], args.score_batch)
        _sync(device)
        started = time.perf_counter()
        score(model, tokenizer, items, args.score_batch)
        _sync(device)
        s = time.perf_counter() - started
        return {"questions": len(qs), "seconds": s, "questions_per_s": len(qs) / s}

    out["letter_loglik"] = timed(scorers.letter_logprobs, prompts)
    out["cloze"] = timed(scorers.option_logprobs, qs)
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
    out["generation"]["same_as_hf_generate"] = _compare_with_hf(model, tokenizer, gen_prompts[:4], device)
    del model
    _free(device)
    return out


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


def cached_tokenizer() -> Path:
    """The embedded default's tokenizer, built from the installed PyPI package (no network) into the
    tests' cache folder (`KORMEDQA_TEST_CACHE`, default .cache/test) once."""
    import os

    from kormedqa.default_model import fetch_tokenizer

    cache = Path(os.environ.get("KORMEDQA_TEST_CACHE", REPO / ".cache" / "test"))
    return fetch_tokenizer(cache / "gemma3-tokenizer")


def default_tokenizer(smoke: bool) -> str | None:
    """bench/gpu_assets/tokenizer once `--prepare` has put it there; for `--smoke` without it, the
    cached tokenizer (a fresh checkout runs the smoke check as it is); else None."""
    if (ASSETS / "tokenizer" / "tokenizer.json").exists():
        return str(ASSETS / "tokenizer")
    return str(cached_tokenizer()) if smoke else None


def prepare() -> int:
    """Here, before carrying: the real tokenizer and the wheels TRL needs beyond the GPU machine's packages."""
    import shutil
    from importlib import metadata

    tok = ASSETS / "tokenizer"
    if not (tok / "tokenizer.json").exists():
        src = cached_tokenizer()
        tok.mkdir(parents=True, exist_ok=True)
        for f in src.iterdir():
            shutil.copy2(f, tok / f.name)
    wheels = ASSETS / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    # The GPU machine has Python 3.12 with torch, transformers, peft, accelerate, pandas, pyarrow; not
    # trl or datasets, nor what datasets needs beyond those. Same versions as here.
    wanted = [f"{name}=={metadata.version(name)}" for name in ("trl", "datasets", "dill", "multiprocess", "xxhash",
                                                                "fsspec")]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "--implementation", "cp", "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64",
           "-d", str(wheels), *wanted]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"wheels not downloaded (the TRL arm will be skipped there): {proc.stderr.strip()[-400:]}")
    size = sum(f.stat().st_size for f in ASSETS.rglob("*") if f.is_file())
    print(f"{ASSETS}: {size / 2**20:.1f} MiB (carry limit 64 MiB): {sorted(p.name for p in wheels.iterdir())}")
    return 0 if size < 64 * 2**20 else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prepare", action="store_true", help="fetch the tokenizer and wheels into bench/gpu_assets/")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny config, tiny settings: checks the script runs")
    p.add_argument("--sizes", default=None, help="comma-separated: 270m,4b (default), tiny")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (default bench/gpu_assets/tokenizer)")
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
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", default=str(RESULTS / "gpu.json"))
    args = p.parse_args(argv)
    if args.prepare:
        return prepare()
    if args.smoke:
        args.device = "cpu"
        args.sizes = args.sizes or "tiny"
        args.steps, args.batch_size, args.max_length = 1, 1, 512
        args.questions, args.score_batch, args.gen_batch, args.gen_tokens = 4, 4, 2, 4
        if args.out == str(RESULTS / "gpu.json"):
            args.out = str(HERE / "work" / "gpu_smoke.json")

    budget = Budget(args.budget_s)
    import torch

    from kormedqa.data import load_mcq
    from kormedqa.hardware import choose, pick_device
    from kormedqa.modeling import load_tokenizer
    from kormedqa.fsio import write_json_atomic
    from common import prepared_mcq_rows

    device = pick_device(args.device)
    choice = choose(device, "auto")
    dtype = choice.dtype
    tokenizer_dir = args.tokenizer or default_tokenizer(args.smoke)
    if tokenizer_dir is None:
        print(f"gpu_check: no tokenizer in {ASSETS / 'tokenizer'}: run `python bench/gpu_check.py --prepare` "
              "first (or pass --tokenizer DIR)", file=sys.stderr)
        return 2
    tokenizer = load_tokenizer(tokenizer_dir)
    rows = prepared_mcq_rows(args.seed)
    if args.smoke:  # the shortest few: the 262k-row lm_head on every supervised token is a CPU step's cost
        rows = sorted(rows, key=lambda r: len(r["prompt"]) + len(r["completion"]))[:8]
    qs = load_mcq(SAMPLE / "mcq", split="test")[: args.questions]
    from kormedqa.hardware import matmul_flops

    # 8192^2 on a GPU; on a CPU (--smoke) the sub-second probe's size.
    measured_peak = matmul_flops(dtype, device, max_n=8192 if device.type == "cuda" else 512,
                                 min_n=8192 if device.type == "cuda" else 512, budget_s=1.0)["flops_per_s"]
    peak = args.peak_tflops * 1e12 if device.type == "cuda" else measured_peak
    import platform

    import transformers

    import inspect

    from transformers import Gemma3ForCausalLM

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
                    "forward_takes_cache": takes_cache},
        "smoke": args.smoke, "device": str(device), "precision": choice.as_dict(),
        "peak_flops_used_for_mfu": peak, "measured_matmul_flops": measured_peak,
        "settings": {k: v for k, v in vars(args).items() if k not in ("prepare",)}, "sizes": {},
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
                    entry[part] = training_part(size, tokenizer, rows, args, device, dtype, peak, work)
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
