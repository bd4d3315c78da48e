"""Cloze scoring: kormedqa against lm-evaluation-harness's `multiple_choice` on the same prompts and options.

(a) `kormedqa.scorers.option_logprobs`: for each question, the summed log-likelihood of each
option's text + `<end_of_turn>` after the question-only chat prompt (`scorers.cloze_prompt`):
one row per question holding the prompt once and the five continuations after it, each seeing
the prompt but not the others, lm_head on continuation positions only. (b) lm-evaluation-harness
(hf backend) on a local task with `output_type: multiple_choice`, the same prompt as `doc_to_text`, the same continuations as
`doc_to_choice` and an empty `target_delimiter`. Both must pick the same option for every
question, raw (arg-max summed log-likelihood, lm-eval's `acc`) and length-normalised (divided by
the option text's length in characters; lm-eval's own `acc_norm` divides by the whole choice
string, `<end_of_turn>` included, so it is recomputed here from its log-likelihoods). lm-eval
moves the prompt's trailing newline into every continuation and scores it too: a constant per
question, invisible to raw picks, but a normalised pick can differ by it; the log-likelihoods are
therefore also compared relative to each question's first option. The figure is questions/s,
each side timed without loading its model.

    python bench/cloze_vs_harness.py [--model DIR] [--limit 96] [--batch-size 8] [--precision fp32]

Both sides run in `--precision` (fp32 by default, as the committed figure; bf16 writes
cloze_vs_harness_bf16.json).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import SAMPLE, load_pretrained, machine, run_lm_eval_task, write_result  # noqa: E402

TASK_YAML = """task: kormedqa_cloze
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{prompt}}}}"
doc_to_choice: choices
doc_to_target: "{{{{gold}}}}"
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


def harness_scores(model_dir: str, rows: list[dict], batch_size: int, dtype: str = "float32"
                   ) -> tuple[float, list[list[float]], dict]:
    """lm-eval's per-choice log-likelihoods (input order) and its own aggregate metrics."""
    seconds, samples, results = run_lm_eval_task(model_dir, "kormedqa_cloze", TASK_YAML, rows, batch_size, dtype)
    return seconds, [[r[0][0] for r in s["resps"]] for s in samples], results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gemma3-270m")
    p.add_argument("--limit", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    args = p.parse_args()

    from kormedqa.data import load_mcq
    from kormedqa.evaluate import cloze_records
    from kormedqa.chat import END_OF_TURN
    from kormedqa.hardware import choose
    from kormedqa.scorers import cloze_prompt, option_logprobs

    model_dir, tokenizer, model = load_pretrained(args.model, choose("cpu", args.precision))
    qs = load_mcq(SAMPLE / "mcq", split="test")[: args.limit]

    started = time.time()
    ours = option_logprobs(model, tokenizer, qs, args.batch_size)
    ours_s = time.time() - started
    del model
    rows = [{"prompt": cloze_prompt(q), "choices": [o + END_OF_TURN for o in q.options], "gold": q.answer_index} for q in qs]
    harness_s, theirs, harness_metrics = harness_scores(model_dir, rows, args.batch_size,
                                                      {"fp32": "float32", "bf16": "bfloat16"}[args.precision])

    a, b = cloze_records(qs, ours), cloze_records(qs, theirs)
    same_raw = sum(a[q.id]["cloze_prediction"] == b[q.id]["cloze_prediction"] for q in qs)
    same_norm = sum(a[q.id]["cloze_norm_prediction"] == b[q.id]["cloze_norm_prediction"] for q in qs)
    max_diff = max(abs(x - y) for s, t in zip(ours, theirs) for x, y in zip(s, t))
    # lm-eval moves the prompt's trailing newline into every continuation (`_encode_pair`), so its
    # scores carry log P("\n" | prompt), the same for all five options: what may differ beyond
    # rounding is an option's score relative to the question's first.
    max_rel_diff = max(abs((x - s[0]) - (y - t[0])) for s, t in zip(ours, theirs) for x, y in zip(s, t))
    # Where the raw picks differ: how far apart the two picked options were, in each side's own scores
    # (in bf16, options closer than the rounding can swap; in fp32 none should differ).
    differ = [(s, t) for q, s, t in zip(qs, ours, theirs) if a[q.id]["cloze_prediction"] != b[q.id]["cloze_prediction"]]
    pick = lambda scores: max(range(len(scores)), key=scores.__getitem__)  # noqa: E731
    gap = max([0.0] + [max(s[pick(s)] - s[pick(t)], t[pick(t)] - t[pick(s)]) for s, t in differ])
    acc = lambda recs, key: sum(recs[q.id][key] for q in qs) / len(qs)  # noqa: E731
    result = {
        "questions": len(qs), "batch_size": args.batch_size, "precision": args.precision,
        "kormedqa": {"seconds": ours_s, "questions_per_s": len(qs) / ours_s,
                     "cloze_accuracy": acc(a, "cloze_correct"), "cloze_accuracy_norm": acc(a, "cloze_norm_correct")},
        "lm_eval": {"seconds": harness_s, "questions_per_s": len(qs) / harness_s,
                    "cloze_accuracy": acc(b, "cloze_correct"), "cloze_accuracy_norm": acc(b, "cloze_norm_correct"),
                    "own_acc": harness_metrics.get("acc,none"), "own_acc_norm": harness_metrics.get("acc_norm,none")},
        "same_picks_raw": same_raw, "same_picks_norm": same_norm, "max_abs_loglik_diff": max_diff,
        "max_abs_loglik_diff_within_question": max_rel_diff, "differing_picks_max_gap": gap,
        "speedup": harness_s / ours_s,
    }
    label = "" if args.precision == "fp32" else f" ({args.precision})"
    summary = (f"cloze{label}: kormedqa {result['speedup']:.2f}x lm-eval multiple_choice ({same_raw}/{len(qs)} same raw picks, "
               f"{same_norm}/{len(qs)} same normalised picks, max |delta loglik| {max_diff:.2g}, {max_rel_diff:.2g} "
               f"relative to the question's first option"
               + (f"; where picks differ, the two options were within {gap:.2g} nats on both sides" if differ else "")
               + "; target >= 3x, all picks equal)")
    name = "cloze_vs_harness" + ("" if args.precision == "fp32" else f"_{args.precision}")
    write_result(name, {"machine": machine(), "model": model_dir, **result, "summary": summary})
    print(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
