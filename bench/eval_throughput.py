"""Scoring throughput and agreement: kormedqa eval against lm-evaluation-harness and a naive loop.

(a) `kormedqa` log-likelihood of A-E vs (b) lm-evaluation-harness (hf backend) with a local task
file over the same JSONL and the same scoring rule (argmax log P(letter | prompt)): accuracies
must be identical; the figure is questions/s. (c) per-question `model.generate` vs kormedqa's
batched greedy generation: the figure is questions/s, and how many outputs are identical.

    python bench/eval_throughput.py [--model DIR] [--limit 96] [--gen-limit 24] [--max-new-tokens 48]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import SAMPLE, load_pretrained, machine, run_lm_eval_task, write_result  # noqa: E402

TASK_YAML = """task: kormedqa_bench
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{prompt}}}}"
doc_to_choice: ["A", "B", "C", "D", "E"]
doc_to_target: "{{{{gold}}}}"
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def harness_run(model_dir: str, prompts: list[str], golds: list[int], batch_size: int) -> tuple[float, list[int]]:
    rows = [{"id": i, "prompt": p, "gold": g} for i, (p, g) in enumerate(zip(prompts, golds))]
    seconds, samples, _ = run_lm_eval_task(model_dir, "kormedqa_bench", TASK_YAML, rows, batch_size)
    return seconds, [max(range(5), key=lambda i: s["resps"][i][0][0]) for s in samples]


def naive_generate(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[str]:
    from kormedqa.scorers import ANSWER_STOPS
    from kormedqa.chat import stop_token_ids

    outs = []
    for prompt in prompts:
        enc = tokenizer(prompt, return_tensors="pt")
        ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop_token_ids(tokenizer),
                             stop_strings=list(ANSWER_STOPS), tokenizer=tokenizer)
        outs.append(tokenizer.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))
    return outs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gemma3-270m")
    p.add_argument("--limit", type=int, default=96, help="questions for the log-likelihood comparison")
    p.add_argument("--gen-limit", type=int, default=24, help="questions for the generation comparison")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args()

    import torch

    from kormedqa.data import load_mcq
    from kormedqa.scorers import eval_prompt, generate, letter_logprobs
    from kormedqa.hardware import choose

    model_dir, tokenizer, model = load_pretrained(args.model, choose("cpu", "fp32"))
    qs = load_mcq(SAMPLE / "mcq", split="test")[: args.limit]
    prompts = [eval_prompt(q) for q in qs]
    golds = [q.answer_index for q in qs]

    started = time.time()
    ours = letter_logprobs(model, tokenizer, prompts, args.batch_size)
    ours_s = time.time() - started
    ours_pick = [max(range(5), key=lambda i: s[i]) for s in ours]
    harness_s, harness_pick = harness_run(model_dir, prompts, golds, args.batch_size)
    acc = lambda picks: sum(a == b for a, b in zip(picks, golds)) / len(golds)  # noqa: E731
    loglik = {
        "questions": len(qs),
        "kormedqa": {"seconds": ours_s, "questions_per_s": len(qs) / ours_s, "accuracy": acc(ours_pick)},
        "lm_eval": {"seconds": harness_s, "questions_per_s": len(qs) / harness_s, "accuracy": acc(harness_pick)},
        "same_predictions": sum(a == b for a, b in zip(ours_pick, harness_pick)),
    }
    loglik["speedup"] = loglik["kormedqa"]["questions_per_s"] / loglik["lm_eval"]["questions_per_s"]

    gen_prompts = prompts[: args.gen_limit]
    with torch.no_grad():
        started = time.time()
        naive = naive_generate(model, tokenizer, gen_prompts, args.max_new_tokens)
        naive_s = time.time() - started
        started = time.time()
        batched = generate(model, tokenizer, gen_prompts, args.batch_size, args.max_new_tokens)
        batched_s = time.time() - started
    gen = {
        "questions": len(gen_prompts),
        "max_new_tokens": args.max_new_tokens,
        "naive": {"seconds": naive_s, "questions_per_s": len(gen_prompts) / naive_s},
        "kormedqa": {"seconds": batched_s, "questions_per_s": len(gen_prompts) / batched_s},
        "identical_outputs": sum(a == b for a, b in zip(naive, batched)),
        "speedup": naive_s / batched_s,
    }
    summary = (
        f"eval: loglik kormedqa {loglik['speedup']:.2f}x lm-eval (accuracy {loglik['kormedqa']['accuracy']:.3f} vs "
        f"{loglik['lm_eval']['accuracy']:.3f}, {loglik['same_predictions']}/{len(qs)} same picks; target >= 3x); "
        f"generate {gen['speedup']:.2f}x naive ({gen['identical_outputs']}/{len(gen_prompts)} identical; target >= 4x)"
    )
    write_result("eval_throughput", {"machine": machine(), "model": model_dir, "loglik": loglik, "generate": gen,
                                     "summary": summary})
    print(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
