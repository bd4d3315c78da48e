"""How often a checkpoint recalls a term from its description: the reverse dictionary row asked alone.

    python scripts/reverse_recall.py CHECKPOINT [--n 40] [--precision bf16]

Asks `Word with meaning {Korean description}:` (formats.reverse_dict_prompt, the reverse
dictionary row's prompt) for the terms of every second question of the sample's reverse test split
(the first `--n`), greedy, and counts exact matches of the generated term. A diagnostic beside the
demo's reverse split: it separates "the knowledge is in the model" from "the MCQ rationale uses it".
The loop's own dictionary recall (`--dict-eval-limit`) counts the same for the dictionary's first
entries as `dict_reverse_exact_match`; this script asks the terms the reverse test split asks.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from kormedqa.data import load_dictionary, load_mcq
from kormedqa.formats import GENERATION_PREFIX, reverse_dict_prompt
from kormedqa.hardware import choose
from kormedqa.modeling import load_model, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--n", type=int, default=40)
    p.add_argument("--precision", default="auto")
    args = p.parse_args(argv)
    entries = {e.term: e for e in load_dictionary(ROOT / "data/sample/dictionary.json")}
    questions = load_mcq(ROOT / "data/sample/mcq_reverse", split="test")[::2][: args.n]
    terms = [q.options["ABCDE".index(q.answer)] for q in questions]
    prompts = [reverse_dict_prompt(entries[t]) + GENERATION_PREFIX for t in terms]
    tokenizer = load_tokenizer(args.checkpoint)
    tokenizer.padding_side = "left"
    model = load_model(args.checkpoint, choose("cpu", args.precision)).eval()
    hits = 0
    for start in range(0, len(prompts), 20):
        enc = tokenizer(prompts[start:start + 20], return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=16, do_sample=False)
        for term, row in zip(terms[start:start + 20], out):
            hits += tokenizer.decode(row[enc["input_ids"].shape[1]:], skip_special_tokens=True).strip() == term
    print(json.dumps({"checkpoint": args.checkpoint, "exact": hits, "of": len(prompts)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
