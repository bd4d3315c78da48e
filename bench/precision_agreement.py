"""Evaluation in bf16 against fp32: do the picks agree?

On the shipped sample test split, one model is scored twice, in fp32 and in bf16, by each scorer
kormedqa evaluates with: letter log-likelihood (A-E after the spec's prompt), cloze log-likelihood
(each option's text; when `kormedqa.scorers.option_logprobs` exists) and greedy generation with
answer extraction (the first `--gen-limit` questions). For each: the share of questions whose pick
is the same in both precisions (target >= 97%), both accuracies, McNemar's exact test on the
paired hits, and the seconds each precision took.

bf16 is what `--precision auto` runs on a GPU and on a CPU with native bf16 (avx512_bf16 or
amx_bf16). On a CPU without it bf16 is emulated (~300x slower matmuls): the script then records
that it skipped and why, unless `--force` (meant for the tiny smoke test only).

    python bench/precision_agreement.py [--model DIR] [--limit N] [--gen-limit 32] [--max-new-tokens 48]
                                        [--device auto] [--force] [--out FILE]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import SAMPLE, machine, write_result  # noqa: E402

TARGET_AGREEMENT = 0.97


def bf16_is_native(device) -> tuple[bool, str]:
    """Whether bf16 is what `auto` would run on `device`, and the recorded reason."""
    from kormedqa.hardware import choose

    choice = choose(device, "auto")
    return choice.precision == "bf16", choice.reason


def score_all(model, tokenizer, qs, args) -> dict:
    """Picks (letters, "" when generation gives none) and seconds per scorer."""
    from kormedqa import scorers
    from kormedqa.extract import extract_answer
    from kormedqa.records import LETTERS

    argmax = lambda rows: [LETTERS[max(range(len(r)), key=r.__getitem__)] for r in rows]  # noqa: E731
    out = {}
    started = time.time()
    out["letter_loglik"] = (argmax(scorers.letter_logprobs(model, tokenizer, [scorers.eval_prompt(q) for q in qs],
                                                           args.batch_size)), time.time() - started)
    if hasattr(scorers, "option_logprobs"):
        started = time.time()
        out["cloze"] = (argmax(scorers.option_logprobs(model, tokenizer, qs, args.batch_size)), time.time() - started)
    gen_qs = qs[: args.gen_limit]
    started = time.time()
    texts = scorers.generate(model, tokenizer, [scorers.eval_prompt(q) for q in gen_qs], args.batch_size,
                             args.max_new_tokens)
    out["generation"] = ([extract_answer(t) for t in texts], time.time() - started, texts)
    return out


def compare(picks32, picks16, golds, s32: float, s16: float) -> dict:
    from kormedqa.metrics import mcnemar_exact, proportion

    golds = golds[: len(picks32)]
    hits32 = [p == g for p, g in zip(picks32, golds)]
    hits16 = [p == g for p, g in zip(picks16, golds)]
    same = sum(a == b for a, b in zip(picks32, picks16))
    return {
        "questions": len(golds),
        "agreement": same / max(len(golds), 1),
        "same_picks": same,
        "accuracy_fp32": proportion(sum(hits32), len(hits32)),
        "accuracy_bf16": proportion(sum(hits16), len(hits16)),
        "accuracy_difference": (sum(hits16) - sum(hits32)) / max(len(golds), 1),
        "mcnemar_bf16_vs_fp32": mcnemar_exact(hits16, hits32),
        "seconds": {"fp32": s32, "bf16": s16},
        "speedup_bf16": s32 / s16 if s16 else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gemma3-270m")
    p.add_argument("--limit", type=int, default=None, help="score only the first N test questions (default: all)")
    p.add_argument("--gen-limit", type=int, default=32, help="questions for the generation comparison")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument("--force", action="store_true", help="run even where bf16 is emulated (tiny smoke tests only)")
    p.add_argument("--out", default=None, help="result file (default bench/results/precision_agreement.json)")
    args = p.parse_args(argv)

    from kormedqa.data import load_mcq
    from kormedqa.hardware import choose, pick_device
    from kormedqa.modeling import load_model, load_tokenizer, resolve_model_path
    from kormedqa.fsio import write_json_atomic

    device = pick_device(args.device)
    native, reason = bf16_is_native(device)
    result = {"machine": machine(), "device": str(device), "bf16_native": native, "auto_reason": reason}
    write = (lambda r: write_json_atomic(args.out, r)) if args.out else (lambda r: write_result("precision_agreement", r))
    if not native and not args.force:
        result["skipped"] = reason.split(": ", 1)[-1]
        result["summary"] = f"precision agreement: skipped, bf16 is not native here: {result['skipped']}"
        write(result)
        print(result["summary"])
        return 0

    model_dir = resolve_model_path(args.model)
    tokenizer = load_tokenizer(model_dir)
    qs = load_mcq(SAMPLE / "mcq", split="test")[: args.limit]
    golds = [q.answer for q in qs]
    runs = {}
    for precision in ("fp32", "bf16"):
        model = load_model(model_dir, choose(device, precision)).eval()
        runs[precision] = score_all(model, tokenizer, qs, args)
        del model
    scorers = {name: compare(runs["fp32"][name][0], runs["bf16"][name][0], golds, runs["fp32"][name][1],
                             runs["bf16"][name][1]) for name in runs["fp32"]}
    texts32, texts16 = runs["fp32"]["generation"][2], runs["bf16"]["generation"][2]
    scorers["generation"]["identical_outputs"] = sum(a == b for a, b in zip(texts32, texts16))
    scorers["generation"]["max_new_tokens"] = args.max_new_tokens
    result.update(model=model_dir, forced=not native, scorers=scorers)
    parts = [f"{name} {r['agreement']:.1%} same picks ({r['same_picks']}/{r['questions']}), accuracy "
             f"{r['accuracy_fp32']['value']:.1%} fp32 vs {r['accuracy_bf16']['value']:.1%} bf16, McNemar p = "
             f"{r['mcnemar_bf16_vs_fp32']['p_value']:.3g}" for name, r in scorers.items()]
    low = [name for name, r in scorers.items() if r["agreement"] < TARGET_AGREEMENT]
    result["summary"] = ("precision agreement (bf16 vs fp32" + (", forced on emulated bf16" if not native else "")
                         + "): " + "; ".join(parts) + f"; target >= {TARGET_AGREEMENT:.0%}"
                         + (f", below it: {', '.join(low)}" if low else ", met by all"))
    write(result)
    print(result["summary"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
