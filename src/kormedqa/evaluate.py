"""Scoring a model on KorMedMCQA-schema questions: generation, log-likelihood, teacher-forced loss.

Three views of the same questions, reported side by side so a number cannot hide a parsing
problem: (a) greedy generation with the seed prompt and answer extraction, (b) log-likelihood of
the letters A-E as the first answer token, (c) the answer-only cross-entropy of the reference
completion. They run as plain batched forward passes; only the last position (or the supervised
positions) ever reaches the lm_head.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from .extract import AFTER_REASONING, extract_answer, has_detailed_keywords, has_reasoning_tags, reasoning_score
from .formats import GENERATION_PREFIX, REASONING_CLOSE, Glossary, mcq_completion, mcq_prompt, template_simple_reasoning
from .metrics import accuracy_by_group, proportion
from .numerics import check_finite_tree
from .records import LETTERS, MCQ
from .scorers import ANSWER_STOPS, completion_losses, eval_prompt, generate, letter_logprobs

log = logging.getLogger(__name__)

MODES = ("generate", "loglik", "both", "all")  # both = generate + loglik; all = both + teacher-forced loss


@dataclass
class EvalConfig:
    """`kormedqa eval`: score a model on a KorMedMCQA split."""

    model: str = field(default="gemma3-270m", metadata={"help": "HF folder, hub id, adapter folder or 'gemma3-270m'"})
    data: str = field(default="", metadata={"help": "KorMedMCQA file, split folder or hub id (e.g. sean0042/KorMedMCQA)"})
    split: str = field(default="test", metadata={"help": "split to read from a folder or the hub"})
    exam_type: str | None = field(default=None, metadata={"help": "doctor, nurse, pharm or dentist (default: all)"})
    task: str = field(default="mcq", metadata={"help": "mcq, or dict to score dictionary definitions (Track 1)"})
    dictionary: list[str] = field(default_factory=list, metadata={"help": "dictionary JSON(s) for --task dict"})
    mode: str = field(default="all", metadata={"help": "generate, loglik, both (the two), or all (both + answer-only loss)"})
    output: str = field(default="", metadata={"help": "folder for metrics.json and predictions.jsonl"})
    limit: int | None = field(default=None, metadata={"help": "score only the first N questions"})
    batch_size: int = 8
    max_new_tokens: int = 256
    backend: str = field(default="auto", metadata={"help": "generation backend: auto (vLLM when installed and on a GPU), hf, vllm"})
    device: str = "auto"
    precision: str = "auto"
    overwrite: bool = False
    seed: int = 42


# ---------------------------------------------------------------- putting it together


def evaluate_mcq(
    model,
    tokenizer,
    mcqs: Sequence[MCQ],
    mode: str = "all",
    batch_size: int = 8,
    max_new_tokens: int = 256,
    glossary: Glossary | None = None,
    generator=None,
) -> tuple[dict, list[dict]]:
    """Metrics and per-question predictions for `mcqs`.

    `generator(prompts, max_new_tokens, stop_strings)` replaces the HF generation (the vLLM
    backend); `model` may then be None when `mode` is "generate".
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if model is not None:
        model.eval()
    started = time.time()
    prompts = [eval_prompt(q) for q in mcqs]
    preds = [{"id": q.id, "exam_type": q.exam_type, "gold": q.answer} for q in mcqs]
    groups = [q.exam_type for q in mcqs]
    metrics: dict = {"n": len(mcqs), "mode": mode}

    if mode in ("generate", "both", "all"):
        if generator is not None:
            raw = generator(prompts, max_new_tokens, ANSWER_STOPS)
        else:
            raw = generate(model, tokenizer, prompts, batch_size, max_new_tokens)
        for p, out in zip(preds, raw):
            letter = extract_answer(out)
            p.update(
                prediction=letter,
                correct=letter == p["gold"],
                raw_output=out,
                reasoning_score=reasoning_score(out, p["gold"]),
                has_reasoning_tags=has_reasoning_tags(out),
                answer_after_reasoning=AFTER_REASONING.search(out) is not None,
                good_format=has_reasoning_tags(out) and has_detailed_keywords(out),
            )
        hits = [p["correct"] for p in preds]
        parsed = [p for p in preds if p["prediction"]]
        metrics["accuracy"] = proportion(sum(hits), len(hits))
        metrics["accuracy_by_exam_type"] = accuracy_by_group(hits, groups)
        metrics["parse_rate"] = proportion(len(parsed), len(preds))
        # Stricter: the letter sits where the seed format puts it. A letter fished out of a
        # degenerate output by the fallback cascade counts in parse_rate but not here.
        metrics["format_parse_rate"] = proportion(sum(p["answer_after_reasoning"] for p in preds), len(preds))
        metrics["accuracy_among_parsed"] = proportion(sum(p["correct"] for p in parsed), len(parsed))
        metrics["reasoning_score"] = sum(p["reasoning_score"] for p in preds) / max(len(preds), 1)
        metrics["reasoning_tag_rate"] = sum(p["has_reasoning_tags"] for p in preds) / max(len(preds), 1)
        metrics["valid_format_rate"] = sum(p["good_format"] for p in preds) / max(len(preds), 1)
        metrics["prediction_counts"] = {x: sum(p["prediction"] == x for p in preds) for x in (*LETTERS, "")}

    if mode in ("loglik", "both", "all"):
        scores = letter_logprobs(model, tokenizer, prompts, batch_size)
        for p, s in zip(preds, scores):
            best = LETTERS[max(range(5), key=lambda i: s[i])]
            p.update(loglik_prediction=best, loglik_correct=best == p["gold"], loglik_scores=[round(x, 4) for x in s])
        hits = [p["loglik_correct"] for p in preds]
        metrics["loglik_accuracy"] = proportion(sum(hits), len(hits))
        metrics["loglik_accuracy_by_exam_type"] = accuracy_by_group(hits, groups)
        if mode in ("both", "all"):
            agree = sum(p["prediction"] == p["loglik_prediction"] for p in preds)
            metrics["generate_loglik_agreement"] = agree / max(len(preds), 1)

    if mode == "all":
        glossary = glossary or Glossary()
        rows = [
            {"prompt": mcq_prompt(q), "completion": mcq_completion(q.cot or template_simple_reasoning(q, glossary), q.answer)}
            for q in mcqs
        ]
        losses = completion_losses(model, tokenizer, rows, batch_size)
        for p, l in zip(preds, losses):
            p.update(reference_loss=round(l["loss"], 5), reference_answer_loss=round(l["answer_loss"], 5))
        total_tokens = sum(l["tokens"] for l in losses)
        metrics["answer_only_loss"] = sum(l["loss"] * l["tokens"] for l in losses) / max(total_tokens, 1)
        metrics["answer_letter_loss"] = sum(l["answer_loss"] for l in losses) / max(len(losses), 1)
        metrics["teacher_forced_answer_accuracy"] = proportion(
            sum(l["answer_token_correct"] for l in losses), len(losses)
        )
    metrics["seconds"] = time.time() - started
    return metrics, preds


@torch.no_grad()
def evaluate_dict(model, tokenizer, entries, batch_size: int = 8, max_new_tokens: int = 64) -> tuple[dict, list[dict]]:
    """Track 1: generate after `Meaning of word {term}:` and compare with the definition (exact match, chrF)."""
    from sacrebleu.metrics import CHRF

    from .formats import dict_prompt

    model.eval()
    started = time.time()
    outputs = generate(model, tokenizer, [dict_prompt(e.term) + GENERATION_PREFIX for e in entries], batch_size,
                       max_new_tokens, desc="dict", stop_strings=())
    chrf = CHRF()
    preds = []
    for entry, out in zip(entries, outputs):
        text = out.strip()
        preds.append({"term": entry.term, "kind": entry.kind, "definition": entry.definition, "output": text,
                      "exact": text == entry.definition.strip(),
                      "chrf": chrf.sentence_score(text, [entry.definition]).score})
    exact = sum(p["exact"] for p in preds)
    metrics = {
        "n": len(preds),
        "task": "dict",
        "exact_match": proportion(exact, len(preds)),
        "chrf": chrf.corpus_score([p["output"] for p in preds], [[p["definition"] for p in preds]]).score,
        "mean_sentence_chrf": sum(p["chrf"] for p in preds) / max(len(preds), 1),
        "seconds": time.time() - started,
    }
    return metrics, preds


def summary_line(metrics: dict) -> str:
    if metrics.get("task") == "dict":
        em = metrics["exact_match"]
        return f"n={metrics['n']}: exact match {em['value']:.1%} [{em['ci95'][0]:.1%}, {em['ci95'][1]:.1%}], chrF {metrics['chrf']:.1f}"
    parts = []
    if "accuracy" in metrics:
        a, pr = metrics["accuracy"], metrics["parse_rate"]
        parts.append(f"accuracy {a['value']:.1%} [{a['ci95'][0]:.1%}, {a['ci95'][1]:.1%}]")
        parts.append(f"parsed {pr['value']:.0%}")
    if "loglik_accuracy" in metrics:
        b = metrics["loglik_accuracy"]
        parts.append(f"loglik {b['value']:.1%} [{b['ci95'][0]:.1%}, {b['ci95'][1]:.1%}]")
    if "answer_only_loss" in metrics:
        parts.append(f"answer-only loss {metrics['answer_only_loss']:.3f}")
    return f"n={metrics['n']}: " + ", ".join(parts)


def write_eval(output: str | Path, metrics: dict, predictions: list[dict], extra: dict | None = None) -> None:
    from .data import write_jsonl_atomic
    from .runs import write_json_atomic

    check_finite_tree(metrics, "metrics")  # before anything is written: a NaN is never a result
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(output / "predictions.jsonl", predictions)
    write_json_atomic(output / "metrics.json", {**metrics, **(extra or {})})


def run_eval(cfg: EvalConfig) -> dict:
    from .data import load_mcq
    from .modeling import check_precision, load_model, load_tokenizer
    from .runs import claim_output, provenance
    from .vllm_backend import resolve_backend

    if cfg.task not in ("mcq", "dict"):
        raise ValueError(f"--task is mcq or dict, not {cfg.task!r}")
    if cfg.task == "dict":
        return _run_dict_eval(cfg)
    if not cfg.data or not cfg.output:
        raise ValueError("--data and --output are required")
    mcqs = load_mcq(cfg.data, split=cfg.split, exam_type=cfg.exam_type)
    if cfg.limit:
        mcqs = mcqs[: cfg.limit]
    tokenizer = load_tokenizer(cfg.model)
    backend = resolve_backend(cfg.backend, cfg.device) if cfg.mode != "loglik" else None  # None: no generation
    check_precision(cfg.model, cfg.device, cfg.precision)  # fp16 Gemma refused before the output is claimed
    claim_output(cfg.output, overwrite=cfg.overwrite)
    generator = None
    if backend == "vllm":
        from .vllm_backend import VllmGenerator

        generator = VllmGenerator(cfg.model, tokenizer, cfg.precision, cfg.seed)
    needs_hf = backend != "vllm" or cfg.mode != "generate"
    model = load_model(cfg.model, device=cfg.device, precision=cfg.precision, merge_adapter=True) if needs_hf else None
    metrics, preds = evaluate_mcq(model, tokenizer, mcqs, cfg.mode, cfg.batch_size, cfg.max_new_tokens,
                                  generator=generator)
    metrics["generation_backend"] = backend
    write_eval(cfg.output, metrics, preds, {"run": provenance(cfg, {"data": cfg.data})})
    print(summary_line(metrics))
    return metrics


def _run_dict_eval(cfg: EvalConfig) -> dict:
    from .data import load_dictionary
    from .modeling import load_model, load_tokenizer
    from .runs import claim_output, provenance

    paths = cfg.dictionary or ([cfg.data] if cfg.data else [])
    if not paths or not cfg.output:
        raise ValueError("--dictionary (or --data) and --output are required for --task dict")
    entries = load_dictionary(*paths)[: cfg.limit or None]
    tokenizer = load_tokenizer(cfg.model)
    claim_output(cfg.output, overwrite=cfg.overwrite)
    model = load_model(cfg.model, device=cfg.device, precision=cfg.precision, merge_adapter=True)
    metrics, preds = evaluate_dict(model, tokenizer, entries, cfg.batch_size, min(cfg.max_new_tokens, 96))
    write_eval(cfg.output, metrics, preds, {"run": provenance(cfg)})
    print(summary_line(metrics))
    return metrics
