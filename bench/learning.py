"""Does training move the answer? Four arms, one model, one data set, one optimizer-step budget.

(a) plain token mean (TRL's loss), (b) answer-weighted loss (W = 2/3, the seed's weight),
(c) (b) followed by GRPO with the seed's reasoning score, (d) the seed's own hyperparameters
(lr 2e-5 dictionary / 1e-5 MCQ, plain answer-only loss). Every arm trains a dictionary stage then
an MCQ stage from the same base, then is scored on the whole held-out test split: generation
accuracy, parse rate, accuracy among parsed answers, log-likelihood accuracy (95% Wilson
intervals), and McNemar's exact test of each arm against (a) on the same questions.

    python bench/learning.py [--model DIR] [--dict-steps 10] [--mcq-steps 30] [--grpo-steps 4] [--fresh]

The default budget is what fits the 60-minute bound on 2 CPU cores (~11 s per MCQ step at batch 4,
~45 s per GRPO step, 4-6 min to score an arm; all four arms took 43 min on 2026-11-27); on a GPU
raise it.

Finished arms are kept (work/learning/<arm>/result.json) and skipped on the next run; --fresh
retrains them all.
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
from common import SAMPLE, machine, write_result

ARMS = {
    "a_token_mean": {"answer_weight": "none", "lr": (5e-4, 5e-4), "grpo": False},
    "b_answer_weighted": {"answer_weight": "2/3", "lr": (5e-4, 5e-4), "grpo": False},
    "c_weighted_grpo": {"answer_weight": "2/3", "lr": (5e-4, 5e-4), "grpo": True},
    "d_seed_hparams": {"answer_weight": "none", "lr": (2e-5, 1e-5), "grpo": False},
}


def run_arm(name: str, spec: dict, args, work: Path, entries, train, test, glossary) -> dict:
    from kormedqa.evaluate import evaluate_mcq
    from kormedqa.grpo import grpo_rows_from_mcqs, run_grpo
    from kormedqa.modeling import load_model, load_tokenizer
    from kormedqa.prepare import dict_rows, mcq_rows
    from kormedqa.sft import TrainConfig, run_training

    arm_dir = work / name
    tokenizer = load_tokenizer(args.model)
    started = time.time()
    mcq_steps = args.mcq_steps - (args.grpo_steps if spec["grpo"] else 0)  # same optimizer-step budget
    dict_cfg = TrainConfig(base_model=args.model, track="dict", max_steps=args.dict_steps, batch_size=4, grad_accum=1,
                           learning_rate=spec["lr"][0], answer_weight=spec["answer_weight"], device="cpu", seed=args.seed)
    # Arms whose dictionary stage has the same settings share it ((b) and (c)): training is
    # seeded, so a second run would give the same adapter and cost ~2 min.
    dict_dir = work / "dict_stages" / f"w{spec['answer_weight'].replace('/', '_')}_lr{spec['lr'][0]:g}_s{args.dict_steps}"
    if not (dict_dir / "training_summary.json").exists():
        run_training(dict_cfg, dict_rows(entries), dict_dir, tokenizer=tokenizer, stage=f"{name}_dict", logs_dir=arm_dir)
    mcq_cfg = TrainConfig(base_model=str(dict_dir), track="mcq", max_steps=mcq_steps, batch_size=4, grad_accum=1,
                          learning_rate=spec["lr"][1], answer_weight=spec["answer_weight"], device="cpu", seed=args.seed)
    summary = run_training(mcq_cfg, mcq_rows(train, args.seed, glossary), arm_dir / "mcq", tokenizer=tokenizer,
                           stage=f"{name}_mcq", logs_dir=arm_dir)
    final = arm_dir / "mcq"
    if spec["grpo"]:
        run_grpo(str(final), grpo_rows_from_mcqs(train), arm_dir / "grpo", max_steps=args.grpo_steps,
                 num_generations=4, max_completion_length=args.max_new_tokens, batch_size=4, learning_rate=1e-5,
                 device="cpu", seed=args.seed, logs_dir=arm_dir, stage=f"{name}_grpo")
        final = arm_dir / "grpo"
    train_s = time.time() - started
    eval_started = time.time()
    model = load_model(str(final), device="cpu", precision="fp32", merge_adapter=True)
    # "both": generation and letter log-likelihood. The teacher-forced pass ("all") would add ~15 s
    # per 16 questions and measures the letter given the gold rationale, which names it already.
    metrics, preds = evaluate_mcq(model, tokenizer, test, "both", args.eval_batch_size, args.max_new_tokens, glossary)
    last = summary["log"][-1] if summary["log"] else {}
    return {
        "metrics": {k: metrics[k] for k in ("accuracy", "parse_rate", "format_parse_rate", "accuracy_among_parsed",
                                            "loglik_accuracy", "reasoning_score")},
        "train_seconds": train_s,
        "eval_seconds": time.time() - eval_started,
        "last_train_log": {k: last.get(k) for k in ("loss", "answer_loss", "reasoning_loss", "answer_token_accuracy")},
        "hits": [p["correct"] for p in preds],
        "loglik_hits": [p["loglik_correct"] for p in preds],
    }


def table(results: dict, tests: dict) -> str:
    pct = lambda p: f"{p['value']:.1%} [{p['ci95'][0]:.1%}, {p['ci95'][1]:.1%}]"
    lines = ["| arm | accuracy | parse rate | letter after `</reasoning>` | acc. among parsed | loglik accuracy "
             "| McNemar p vs (a): gen / loglik | minutes (train + eval) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        m = r["metrics"]
        t = tests.get(name)
        sig = "-" if t is None else f"{t['accuracy']['p_value']:.3g} / {t['loglik_accuracy']['p_value']:.3g}"
        lines.append(f"| {name} | {pct(m['accuracy'])} | {pct(m['parse_rate'])} | {m['format_parse_rate']['value']:.1%} "
                     f"| {pct(m['accuracy_among_parsed'])} | {pct(m['loglik_accuracy'])} | {sig} "
                     f"| {r['train_seconds'] / 60:.1f} + {r['eval_seconds'] / 60:.1f} |")
    return "\n".join(lines)


def verdict(tests: dict) -> str:
    """Which differences from (a) are significant at 0.05 and which are not, in one sentence."""
    yes = [f"{n} ({k}, p = {v['p_value']:.3g})" for n, t in tests.items() for k, v in t.items() if v["significant_at_0.05"]]
    no = [f"{n} ({k})" for n, t in tests.items() for k, v in t.items() if not v["significant_at_0.05"]]
    return ("learning: significant vs (a) at 0.05: " + (", ".join(yes) or "none")
            + "; not significant: " + (", ".join(no) or "none"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gemma3-270m")
    p.add_argument("--dict-steps", type=int, default=10)
    p.add_argument("--mcq-steps", type=int, default=30)
    p.add_argument("--grpo-steps", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=112)
    p.add_argument("--eval-batch-size", type=int, default=32)
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--fresh", action="store_true", help="retrain arms that already have a result")
    args = p.parse_args()

    from kormedqa.data import load_dictionary, load_mcq
    from kormedqa.formats import Glossary
    from kormedqa.metrics import mcnemar_exact
    from kormedqa.modeling import resolve_model_path
    from kormedqa.runs import write_json_atomic

    args.model = str(Path(resolve_model_path(args.model)).resolve())
    entries = load_dictionary(SAMPLE / "dictionary.json", SAMPLE / "characters.json")
    train = load_mcq(SAMPLE / "mcq", split="train")
    test = load_mcq(SAMPLE / "mcq", split="test")
    glossary = Glossary(entries)
    work = HERE / "work" / "learning"
    results = {}
    started = time.time()
    if args.fresh:
        shutil.rmtree(work / "dict_stages", ignore_errors=True)
    for name in args.arms.split(","):
        # Each finished arm is kept, so a crash or a stopped session resumes at the next arm.
        done = work / name / "result.json"
        if done.exists() and not args.fresh:
            results[name] = json.loads(done.read_text())
            continue
        shutil.rmtree(work / name, ignore_errors=True)  # an unfinished or --fresh arm starts clean (logs too)
        results[name] = run_arm(name, ARMS[name], args, work, entries, train, test, glossary)
        write_json_atomic(done, results[name])
        print(name, json.dumps({k: v["value"] if isinstance(v, dict) else v for k, v in results[name]["metrics"].items()}))
    base = results.get("a_token_mean")
    tests = {}
    if base:
        for name, r in results.items():
            if name != "a_token_mean":
                tests[name] = {"accuracy": mcnemar_exact(base["hits"], r["hits"]),
                               "loglik_accuracy": mcnemar_exact(base["loglik_hits"], r["loglik_hits"])}
    summary = verdict(tests)
    write_result("learning", {"machine": machine(), "settings": vars(args), "test_questions": len(test),
                              "wall_seconds": time.time() - started,
                              # A resumed run's wall time covers only the arms it ran; this is the
                              # whole benchmark's cost, each arm timed when it ran.
                              "arm_seconds_total": sum(r["train_seconds"] + r["eval_seconds"] for r in results.values()),
                              "results": results, "mcnemar_vs_a": tests, "table": table(results, tests),
                              "summary": summary})
    print(table(results, tests))
    print(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
