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
import torch.nn.functional as F
from tqdm.auto import tqdm

from .extract import AFTER_REASONING, extract_answer, has_detailed_keywords, has_reasoning_tags, reasoning_score
from .formats import GENERATION_PREFIX, REASONING_CLOSE, Glossary, mcq_completion, mcq_prompt, template_simple_reasoning
from .metrics import accuracy_by_group, proportion
from .modeling import cpu_vocab_projection, stop_token_ids
from .records import LETTERS, MCQ
from .runs import fault_point
from .sft import CompletionCollator, supervised_positions, tokenize_pair

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


# ---------------------------------------------------------------- the three scorers


def _batches(items: Sequence, size: int):
    for start in range(0, len(items), size):
        yield start, items[start : start + size]


def _encode_left_padded(tokenizer, texts: Sequence[str], device) -> dict:
    tokenizer.padding_side = "left"
    enc = tokenizer(list(texts), return_tensors="pt", padding=True, add_special_tokens=True)
    return {k: v.to(device) for k, v in enc.items()}


def _by_length(texts: Sequence[str]) -> list[int]:
    """Batch similar lengths together (less padding); results are put back in input order."""
    return sorted(range(len(texts)), key=lambda i: len(texts[i]))


ANSWER_STOPS = tuple(f"{REASONING_CLOSE}{letter}" for letter in LETTERS)


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[str], batch_size: int = 8, max_new_tokens: int = 256, desc="generate",
             stop_strings: Sequence[str] = ANSWER_STOPS) -> list[str]:
    """Greedy continuations of full prompts (already ending with the model turn).

    Stops at <end_of_turn>/<eos>, and by default once the seed format's answer is complete
    (`</reasoning>X`): anything after it cannot change the extracted letter or the reasoning
    score, and a half-trained model often runs on to max_new_tokens there.
    """
    from transformers import StopStringCriteria, StoppingCriteriaList

    order = _by_length(prompts)
    outputs: list[str] = [""] * len(prompts)
    eos = stop_token_ids(tokenizer)
    device = next(model.parameters()).device
    # Built once: over a 262k vocabulary its token tables take seconds, which `stop_strings=`
    # would pay again for every batch. The criterion keeps no state between calls.
    stops = StoppingCriteriaList([StopStringCriteria(tokenizer, list(stop_strings))]) if stop_strings else None
    with cpu_vocab_projection(model):
        for _, idx in tqdm(list(_batches(order, batch_size)), desc=desc, leave=False):
            fault_point("generate_batch")
            enc = _encode_left_padded(tokenizer, [prompts[i] for i in idx], device)
            new = _greedy_dropping_finished(model, enc, max_new_tokens, eos, stops)
            for i, text in zip(idx, tokenizer.batch_decode(new, skip_special_tokens=True)):
                outputs[i] = text
    return outputs


def _greedy_dropping_finished(model, enc: dict, max_new_tokens: int, eos: Sequence[int], stops) -> list[list[int]]:
    """Greedy decoding, as `model.generate(do_sample=False)` does it, minus the finished rows.

    `generate` keeps computing a row after it has stopped (padding it) until every row has: one
    run-on answer in a batch of 32 costs 32 rows up to max_new_tokens. Here a row leaves the batch
    and the KV cache the step it ends, so the rest runs at the batch size still needed. Positions,
    mask and cache follow `generate` (tests compare the two).
    """
    from transformers import DynamicCache

    ids, mask = enc["input_ids"], enc["attention_mask"]
    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
    cache = DynamicCache(config=model.config)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache,
                   use_cache=True, logits_to_keep=1).logits[:, -1]
    rows = torch.arange(ids.shape[0], device=ids.device)  # batch row -> input row
    new: list[list[int]] = [[] for _ in range(ids.shape[0])]
    eos = torch.tensor(list(eos), device=ids.device)
    seqs, last = ids, positions[:, -1:]
    for step in range(max_new_tokens):
        token = logits.argmax(-1)
        for r, t in zip(rows.tolist(), token.tolist()):
            new[r].append(t)
        seqs = torch.cat([seqs, token[:, None]], dim=1)
        done = torch.isin(token, eos)
        if stops is not None:
            done |= stops(seqs, logits)
        if step == max_new_tokens - 1 or bool(done.all()):
            break
        if bool(done.any()):
            keep = (~done).nonzero().squeeze(-1)
            cache.batch_select_indices(keep)
            rows, seqs, mask, last, token = rows[keep], seqs[keep], mask[keep], last[keep], token[keep]
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        last = last + 1
        logits = model(input_ids=token[:, None], attention_mask=mask, position_ids=last, cache=cache,
                       use_cache=True).logits[:, -1]
    return new


def letter_token_ids(tokenizer) -> list[int]:
    ids = [tokenizer.convert_tokens_to_ids(letter) for letter in LETTERS]
    if any(i is None or i == tokenizer.unk_token_id for i in ids):
        raise ValueError("tokenizer has no single-token letters A-E")
    return ids


@torch.no_grad()
def letter_logprobs(model, tokenizer, prompts: Sequence[str], batch_size: int = 8) -> list[list[float]]:
    """log P(letter | prompt) for A-E at the next position; only that position hits the lm_head."""
    letters = torch.tensor(letter_token_ids(tokenizer))
    order = _by_length(prompts)
    scores: list[list[float]] = [[] for _ in prompts]
    device = next(model.parameters()).device
    with cpu_vocab_projection(model):
        for _, idx in tqdm(list(_batches(order, batch_size)), desc="loglik", leave=False):
            enc = _encode_left_padded(tokenizer, [prompts[i] for i in idx], device)
            logits = model(**enc, logits_to_keep=1).logits[:, -1, :].float()
            logp = F.log_softmax(logits, dim=-1)[:, letters.to(device)]
            for i, row in zip(idx, logp.tolist()):
                scores[i] = row
    return scores


def _final_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """The lm_head (and Gemma's optional final soft-capping) on selected hidden states."""
    logits = model.get_output_embeddings()(hidden)
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits.float()


@torch.no_grad()
def supervised_ce(model, input_ids, attention_mask, labels, chunk: int = 512) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token cross-entropy and argmax hits at supervised positions, lm_head in chunks.

    Scoring only: the decoder runs once and the 262k-wide logits exist `chunk` rows at a time,
    instead of one (tokens x vocab) tensor of gigabytes. Returns (ce, hits, keep mask).
    """
    keep = supervised_positions(labels)
    decoder = model.get_decoder()
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[keep]
    targets = labels[:, 1:][keep[:, :-1]]
    ces, hits = [], []
    for start in range(0, hidden.shape[0], chunk):
        logits = _final_logits(model, hidden[start : start + chunk])
        t = targets[start : start + chunk]
        ces.append(F.cross_entropy(logits, t, reduction="none"))
        hits.append(logits.argmax(-1) == t)
    empty = hidden.new_zeros(0)
    return (torch.cat(ces) if ces else empty), (torch.cat(hits) if hits else empty.bool()), keep


@torch.no_grad()
def completion_losses(model, tokenizer, rows: Sequence[dict], batch_size: int = 8, max_length: int = 2048) -> list[dict]:
    """Teacher-forced answer-only loss of each reference completion, with its answer part (letter + `<end_of_turn>`; reported as `answer_letter_loss`)."""
    results: list[dict] = []
    device = next(model.parameters()).device
    collate = CompletionCollator(tokenizer.pad_token_id)
    for _, chunk in tqdm(list(_batches(rows, batch_size)), desc="loss", leave=False):
        feats = [tokenize_pair(tokenizer, r["prompt"], r["completion"], max_length) for r in chunk]
        batch = {k: v.to(device) for k, v in collate([f for f in feats if f is not None]).items()}
        ce, hits, keep = supervised_ce(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
        row_of = torch.arange(keep.shape[0], device=device)[:, None].expand_as(keep)[keep]
        is_answer = batch["answer_mask"][:, 1:][keep[:, :-1]].bool()
        for r in range(keep.shape[0]):
            mine = row_of == r
            ans = mine & is_answer
            first = ans.nonzero()[:1].squeeze(-1)
            results.append(
                {
                    "loss": float(ce[mine].mean()),
                    "answer_loss": float(ce[ans].mean()) if ans.any() else float("nan"),
                    "answer_token_correct": bool(hits[first].all()) if first.numel() else False,
                    "tokens": int(mine.sum()),
                }
            )
    return results


# ---------------------------------------------------------------- putting it together


def eval_prompt(mcq: MCQ) -> str:
    return mcq_prompt(mcq) + GENERATION_PREFIX


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

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(output / "predictions.jsonl", predictions)
    write_json_atomic(output / "metrics.json", {**metrics, **(extra or {})})


def run_eval(cfg: EvalConfig) -> dict:
    from .data import load_mcq
    from .modeling import load_model, load_tokenizer
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
