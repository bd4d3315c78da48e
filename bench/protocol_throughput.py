"""The two evaluation protocols side by side: questions/s and how each extraction reads the same outputs.

(a) the spec's protocol (`kormedqa eval --mode generate`: the spec's prompt, greedy generation up to
`--max-new-tokens`, kormedqa's extractor) and (b) the lm-eval protocol (`kormedqa eval --protocol
lm-eval`: lm-evaluation-harness's own kormedmcqa task, 0- and 5-shot, its generation budget and
stops) on the same questions of the shipped sample (in the hub's layout, fewshot from train), the
same model and machine. Both are timed through kormedqa's own entry (`evaluate_mcq`); the lm-eval
protocol loads its own copy of the model inside that call, so its load time is measured apart and
reported. The parse rates cross the extractors: each protocol's raw outputs read by kormedqa's
`extract_answer` and by lm-eval's filter (`harness_extract`, byte-exact to it).

    python bench/protocol_throughput.py [--model gemma3-270m] [--per-exam 4] [--max-new-tokens 256]
                                        [--lm-eval-max-gen-toks 256]

On a machine shared with other jobs the absolute speeds move; the ratio is the figure.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import SAMPLE, machine, write_result  # noqa: E402


def parse_rates(outputs: list[str]) -> dict:
    """Share of `outputs` in which kormedqa's extractor and lm-eval's filter find a letter."""
    from kormedqa.extract import extract_answer, harness_extract

    n = max(len(outputs), 1)
    return {"kormedqa_extract": sum(bool(extract_answer(o)) for o in outputs) / n,
            "lm_eval_filter": sum(bool(harness_extract(o)) for o in outputs) / n,
            "only_kormedqa": sum(bool(extract_answer(o)) and not harness_extract(o) for o in outputs)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gemma3-270m")
    p.add_argument("--per-exam", type=int, default=4, help="test questions per exam type")
    p.add_argument("--max-new-tokens", type=int, default=256, help="the spec protocol's generation budget")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--lm-eval-max-gen-toks", type=int, default=256,
                   help="the lm-eval protocol's generation budget here (the task's own is 1024; 0 keeps it): a "
                        "base model that never writes '.' or a blank line runs to the budget, so the default gives "
                        "both protocols the same 256")
    args = p.parse_args()

    from kormedqa.data import load_mcq
    from kormedqa.evaluate import evaluate_mcq
    from kormedqa.hardware import choose
    from kormedqa.hub import fewshot_split, write_hub_copy
    from kormedqa.lm_eval_protocol import LmEvalSettings
    from kormedqa.modeling import load_model, load_tokenizer, resolve_model_path
    from kormedqa.records import EXAM_TYPES

    model_dir = resolve_model_path(args.model)
    train = load_mcq(SAMPLE / "mcq", split="train")
    test = load_mcq(SAMPLE / "mcq", split="test")
    test = [q for exam in EXAM_TYPES for q in [x for x in test if x.exam_type == exam][: args.per_exam]]
    hub = write_hub_copy(Path(tempfile.mkdtemp(prefix="kormedqa-bench-hub-")) / "KorMedMCQA",
                         {"train": train, "test": test, "fewshot": fewshot_split(train)})
    questions = load_mcq(hub, split="test")
    tokenizer = load_tokenizer(model_dir)

    started = time.time()
    model = load_model(model_dir, choose("cpu", args.precision))
    load_s = time.time() - started
    started = time.time()
    spec_m, spec_p = evaluate_mcq(model, tokenizer, questions, "generate", args.batch_size, args.max_new_tokens)
    spec_s = time.time() - started
    del model
    spec_out = [p["raw_output"] for p in spec_p]
    runs = {"spec": {"seconds": spec_s, "questions_per_s": len(questions) / spec_s,
                     "accuracy": spec_m["accuracy"]["value"], "parse_rate": spec_m["parse_rate"]["value"],
                     "max_new_tokens": args.max_new_tokens, "parse_rates_of_its_outputs": parse_rates(spec_out),
                     "outputs": spec_out}}
    partial = {"machine": machine(), "model": model_dir, "questions": len(questions), "model_load_seconds": load_s}
    write_result("protocol_throughput", {**partial, "runs": runs})  # kept if the lm-eval runs are stopped
    dtype = {"fp32": "float32", "bf16": "bfloat16"}[args.precision]
    for shots in (0, 5):
        settings = LmEvalSettings(num_fewshot=shots, dtype=dtype, batch_size=args.batch_size,
                                  gen_kwargs=f"max_gen_toks={args.lm_eval_max_gen_toks}" if args.lm_eval_max_gen_toks else "")
        started = time.time()
        m, preds = evaluate_mcq(None, tokenizer, questions, "lm_eval", model_path=model_dir, data=str(hub),
                                lm_eval=settings)
        seconds = time.time() - started
        outs = [p["lm_eval_raw_output"] for p in preds]
        runs[f"lm_eval_{shots}shot"] = {
            "seconds": seconds, "questions_per_s": len(questions) / seconds,
            "questions_per_s_without_model_load": len(questions) / max(seconds - load_s, 1e-9),
            "exact_match": m["lm_eval_exact_match"]["value"], "parse_rate": m["lm_eval_parse_rate"]["value"],
            "parse_rates_of_its_outputs": parse_rates(outs),
            "mean_output_chars": sum(map(len, outs)) / max(len(outs), 1), "outputs": outs,
            "max_gen_toks": args.lm_eval_max_gen_toks or 1024}
        write_result("protocol_throughput", {**partial, "runs": runs})
    spec_qps = runs["spec"]["questions_per_s"]
    ratios = {k: v["questions_per_s_without_model_load"] / spec_qps for k, v in runs.items() if k != "spec"}
    summary = (f"{len(questions)} questions, {Path(model_dir).name}, {args.precision}: spec protocol "
               f"{spec_qps:.3f} q/s (max_new_tokens {args.max_new_tokens}); lm-eval protocol (max_gen_toks "
               f"{args.lm_eval_max_gen_toks or 1024}) / spec, its model load excluded: " + ", ".join(f"{k} {r:.2f}x" for k, r in ratios.items()))
    write_result("protocol_throughput", {**partial, "runs": runs, "ratios": ratios, "summary": summary})
    print(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
