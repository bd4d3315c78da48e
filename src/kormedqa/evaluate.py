"""Scoring a model on KorMedMCQA-schema questions: generation, log-likelihood, teacher-forced loss.

Three views of the same questions, reported side by side so a number cannot hide a parsing
problem: (a) greedy generation with the spec's prompt and answer extraction, (b) log-likelihood of
the letters A-E as the first answer token, (c) the answer-only cross-entropy of the reference
completion. They run as plain batched forward passes; only the last position (or the supervised
positions) ever reaches the lm_head.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Sequence

import torch

from .checks import Range, check_config, parse_eval_mode
from .config import DEFAULT_MODEL_HELP, DeviceArgs, RunArgs, arg
from .data import load_dictionary, load_mcq
from .errors import UsageError
from .extract import answer_after_reasoning, extract_answer, has_detailed_keywords, has_reasoning_tags, reasoning_score
from .formats import (DEFAULT_RATIONALE_TEMPLATE, GENERATION_PREFIX, Glossary, dict_prompt, mcq_completion, mcq_prompt,
                      template_simple_reasoning)
from .fsio import claim_output, write_json_atomic, write_jsonl_atomic
from .hardware import PrecisionChoice, choose
from .metrics import accuracy_by_group, mean_interval, proportion
from .modeling import check_precision, load_model, load_tokenizer
from .numerics import check_finite_tree
from .provenance import provenance
from .records import EXAM_TYPES, LETTERS, MCQ
from .launch import all_gather, is_main_process, shard_batches, start_processes
from .scorers import (ANSWER_STOPS, HFGenerator, completion_losses, eval_prompt, generate, length_order, letter_logprobs,
                      option_logprobs)
from .vllm_backend import BACKENDS, VllmGenerator, resolve_backend

log = logging.getLogger(__name__)



@dataclass
class EvalConfig(DeviceArgs, RunArgs):
    """`kormedqa eval`: score a model on a KorMedMCQA split."""

    output: str = arg("", "folder for metrics.json and predictions.jsonl")
    model: str = arg("gemma3-270m", DEFAULT_MODEL_HELP)
    data: str = arg("", "KorMedMCQA file, split folder or hub id (e.g. sean0042/KorMedMCQA)")
    split: str = arg("test", "split to read from a folder or the hub")
    exam_type: str | None = arg(None, "doctor, nurse, pharm or dentist (default: all)", choices=EXAM_TYPES)
    task: str = arg("mcq", "mcq, or dict to score dictionary definitions (Track 1)", choices=["mcq", "dict"])
    dictionary: list[str] = arg(help="dictionary JSON(s) for --task dict", factory=list)
    mode: str = arg("all", "scorers to run: all, or a comma list of generate (greedy answer), loglik (A-E as the next "
                           "token), cloze (option text log-likelihood), loss (teacher-forced reference)")
    limit: int | None = arg(None, "score only the first N questions")
    batch_size: int = arg(8, "questions per scoring batch")
    max_new_tokens: int = arg(256, "generation budget per answer, in tokens")
    backend: str = arg("auto", "generation backend: auto (vLLM when installed and on a GPU), hf, vllm",
                       choices=BACKENDS)

    RANGES: ClassVar[dict] = {"limit": Range(low=1), "batch_size": Range(low=1), "max_new_tokens": Range(low=1)}

    def __post_init__(self):
        """Choices and ranges at parse time (UsageError), before the output is claimed."""
        check_config(self)
        parse_eval_mode(self.mode, "--mode")


# ---------------------------------------------------------------- scorer outputs -> records by id


def generation_records(mcqs: Sequence[MCQ], outputs: Sequence[str]) -> dict[str, dict]:
    """Answer extraction and the spec's format checks on each raw output (the lm-eval filter step)."""
    records = {}
    for q, out in zip(mcqs, outputs, strict=True):
        letter = extract_answer(out)
        records[q.id] = {
            "prediction": letter, "correct": letter == q.answer, "raw_output": out,
            "reasoning_score": reasoning_score(out, q.answer), "has_reasoning_tags": has_reasoning_tags(out),
            "answer_after_reasoning": answer_after_reasoning(out),
            "good_format": has_reasoning_tags(out) and has_detailed_keywords(out),
        }
    return records


def _argmax(scores: Sequence[float]) -> str:
    return LETTERS[max(range(len(LETTERS)), key=lambda i: scores[i])]


def letter_records(mcqs: Sequence[MCQ], scores: Sequence[Sequence[float]]) -> dict[str, dict]:
    """Per-question records of letter log-likelihood scoring, keyed by MCQ id.

    `scores` holds five log-probabilities (A-E) per question, in `mcqs` order. Each record:
    loglik_prediction (the argmax letter), loglik_correct, loglik_scores (rounded to 4 places).
    """
    records = {}
    for q, s in zip(mcqs, scores, strict=True):
        pick = _argmax(s)
        records[q.id] = {"loglik_prediction": pick, "loglik_correct": pick == q.answer,
                         "loglik_scores": [round(x, 4) for x in s]}
    return records


def cloze_records(mcqs: Sequence[MCQ], scores: Sequence[Sequence[float]]) -> dict[str, dict]:
    """Raw pick (summed log-likelihood) and lm-eval's acc_norm pick (divided by the option's length in characters)."""
    records = {}
    for q, s in zip(mcqs, scores, strict=True):
        raw = _argmax(s)
        norm = _argmax([x / max(len(o), 1) for x, o in zip(s, q.options)])
        records[q.id] = {"cloze_prediction": raw, "cloze_correct": raw == q.answer,
                         "cloze_norm_prediction": norm, "cloze_norm_correct": norm == q.answer,
                         "cloze_scores": [round(x, 4) for x in s]}
    return records


def loss_records(losses: dict[str, dict]) -> dict[str, dict]:
    """Per-question records of the teacher-forced reference loss (nats per token), keyed by id.

    `losses` maps id -> {"loss", "answer_loss" (None without an answer span),
    "answer_token_correct", "tokens"} as `scorers.completion_losses` returns them.
    """
    return {qid: {"reference_loss": round(l["loss"], 5),
                  "reference_answer_loss": None if l["answer_loss"] is None else round(l["answer_loss"], 5),
                  "answer_token_correct": l["answer_token_correct"], "reference_tokens": l["tokens"]}
            for qid, l in losses.items()}


def join_records(mcqs: Sequence[MCQ], parts: dict[str, dict[str, dict]], partial: Sequence[str] = ("loss",)) -> list[dict]:
    """One dict per question: id, exam type, gold, and every scorer's record for that id.

    Joined by id, never by position. A scorer's record for an unknown id is an error; a missing
    record is an error except for scorers in `partial` (the loss pass skips over-long references).
    """
    ids = [q.id for q in mcqs]
    if len(set(ids)) != len(ids):
        raise ValueError("question ids are not unique: per-question results cannot be joined")
    known = set(ids)
    for name, records in parts.items():
        extra = set(records) - known
        missing = known - set(records)
        if extra or (missing and name not in partial):
            raise RuntimeError(f"{name} scorer returned records for {len(extra)} unknown and lacks {len(missing)} questions")
    return [{"id": q.id, "exam_type": q.exam_type, "gold": q.answer,
             **{k: v for records in parts.values() for k, v in records.get(q.id, {}).items()}} for q in mcqs]


# ---------------------------------------------------------------- records -> metrics


def _rate(preds: Sequence[dict], key: str, where=None) -> dict:
    rows = [p for p in preds if key in p and (where is None or where(p))]
    return proportion(sum(bool(p[key]) for p in rows), len(rows))


def mcq_metrics(preds: Sequence[dict], scorers: Sequence[str]) -> dict:
    """Every metric from the joined records, in one shape: {value, total, ci95} (+ correct for rates).

    Rates carry 95% Wilson intervals; means (reasoning score, losses) a normal-approximation
    interval. Accuracies also come per exam type.
    """
    groups = [p["exam_type"] for p in preds]
    m: dict = {}

    def accuracy(name: str, key: str) -> None:
        m[name] = _rate(preds, key)
        m[f"{name}_by_exam_type"] = accuracy_by_group([p[key] for p in preds], groups)

    if "generate" in scorers:
        accuracy("accuracy", "correct")
        m["parse_rate"] = proportion(sum(bool(p["prediction"]) for p in preds), len(preds))
        # Stricter: the letter sits where the spec's format puts it. A letter fished out of a
        # degenerate output by the fallback cascade counts in parse_rate but not here.
        m["format_parse_rate"] = _rate(preds, "answer_after_reasoning")
        m["accuracy_among_parsed"] = _rate(preds, "correct", where=lambda p: bool(p["prediction"]))
        m["reasoning_score"] = mean_interval([p["reasoning_score"] for p in preds], "the reasoning score")
        m["reasoning_tag_rate"] = _rate(preds, "has_reasoning_tags")
        m["valid_format_rate"] = _rate(preds, "good_format")
        m["prediction_counts"] = {x: sum(p["prediction"] == x for p in preds) for x in (*LETTERS, "")}
    if "loglik" in scorers:
        accuracy("loglik_accuracy", "loglik_correct")
        m["loglik_prediction_counts"] = {x: sum(p["loglik_prediction"] == x for p in preds) for x in LETTERS}
    if "cloze" in scorers:
        accuracy("cloze_accuracy", "cloze_correct")
        accuracy("cloze_accuracy_norm", "cloze_norm_correct")
    if "generate" in scorers and "loglik" in scorers:
        m["generate_loglik_agreement"] = proportion(sum(p["prediction"] == p["loglik_prediction"] for p in preds), len(preds))
    if "loss" in scorers:
        scored = [p for p in preds if "reference_loss" in p]
        tokens = sum(p["reference_tokens"] for p in scored)
        m["reference_loss"] = {"value": sum(p["reference_loss"] * p["reference_tokens"] for p in scored) / max(tokens, 1),
                               "total": len(scored), "tokens": tokens}
        m["reference_answer_loss"] = mean_interval([p["reference_answer_loss"] for p in scored
                                                    if p["reference_answer_loss"] is not None])
        m["teacher_forced_answer_accuracy"] = _rate(scored, "answer_token_correct")
        m["reference_loss_skipped"] = len(preds) - len(scored)
    return m


def evaluate_mcq(
    model,
    tokenizer,
    mcqs: Sequence[MCQ],
    mode: str = "all",
    batch_size: int = 8,
    max_new_tokens: int = 256,
    glossary: Glossary | None = None,
    generator=None,
    rationale_template: str = DEFAULT_RATIONALE_TEMPLATE,
) -> tuple[dict, list[dict]]:
    """Run the scorers `mode` names, join their records by id, and build the metrics.

    Returns (metrics, predictions): metrics as `mcq_metrics` documents plus n, mode, scorers and
    seconds; one prediction dict per question in input order. `generator` (prompts,
    max_new_tokens, stop_strings) -> texts replaces HF generation (the vLLM backend, or a
    stand-in in tests); `model` may then be None when only "generate" runs. The reference
    completions of the loss pass use `rationale_template` for questions without `cot`.
    Under several processes (`accelerate launch`) each scores whole batches of its own
    (`launch.shard_batches`): every question once, in the batch one process would form; the records
    are gathered so every process returns the same metrics and predictions.
    Raises UsageError on an unknown mode, RuntimeError when a scorer's records do not join.
    """
    scorers = parse_eval_mode(mode, "--mode")
    if model is not None:
        model.eval()
    started = time.time()
    parts: dict[str, dict[str, dict]] = {}
    prompts = [eval_prompt(q) for q in mcqs]
    by_length = length_order(prompts)  # how generation and letter scoring batch the prompts
    in_order = range(len(mcqs))        # how cloze and loss batch the questions
    if "generate" in scorers:
        generator = generator or HFGenerator(model, tokenizer, batch_size)
        mine = shard_batches(by_length, batch_size)
        outputs = generator([prompts[i] for i in mine], max_new_tokens, ANSWER_STOPS)
        parts["generate"] = generation_records([mcqs[i] for i in mine], outputs)
    if "loglik" in scorers:
        mine = shard_batches(by_length, batch_size)
        scores = letter_logprobs(model, tokenizer, [prompts[i] for i in mine], batch_size)
        parts["loglik"] = letter_records([mcqs[i] for i in mine], scores)
    if "cloze" in scorers:
        mine = [mcqs[i] for i in shard_batches(in_order, batch_size)]
        parts["cloze"] = cloze_records(mine, option_logprobs(model, tokenizer, mine, batch_size))
    if "loss" in scorers:
        glossary = glossary or Glossary()
        rows = [{"id": q.id, "prompt": mcq_prompt(q),
                 "completion": mcq_completion(q.cot or template_simple_reasoning(q, glossary, rationale_template), q.answer)}
                for q in (mcqs[i] for i in shard_batches(in_order, batch_size))]
        parts["loss"] = loss_records(completion_losses(model, tokenizer, rows, batch_size))
    # Under several processes each holds the records of its batches; every process gets all of them
    # (so each computes the same metrics), and the caller lets the main one write.
    gathered = all_gather(parts)
    parts = {name: {qid: rec for each in gathered for qid, rec in each[name].items()} for name in parts}
    preds = join_records(mcqs, parts)
    metrics = {"n": len(mcqs), "mode": mode, "scorers": list(scorers), **mcq_metrics(preds, scorers),
               "seconds": time.time() - started}
    return metrics, preds


@torch.no_grad()
def evaluate_dict(model, tokenizer, entries, batch_size: int = 8, max_new_tokens: int = 64) -> tuple[dict, list[dict]]:
    """Track 1: generate after `Meaning of word {term}:` and compare with the definition (exact match, chrF)."""
    from sacrebleu.metrics import CHRF

    model.eval()
    started = time.time()
    prompts = [dict_prompt(e.term) + GENERATION_PREFIX for e in entries]
    mine = shard_batches(length_order(prompts), batch_size)  # several processes: see evaluate_mcq
    texts = generate(model, tokenizer, [prompts[i] for i in mine], batch_size, max_new_tokens, desc="dict",
                     stop_strings=())
    by_index = {i: t for each in all_gather(dict(zip(mine, texts))) for i, t in each.items()}
    outputs = [by_index[i] for i in range(len(entries))]
    chrf = CHRF()
    preds = []
    for entry, out in zip(entries, outputs):
        text = out.strip()
        preds.append({"term": entry.term, "category": entry.category, "definition": entry.definition, "output": text,
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
    """One log line for a metrics dict: n, accuracies with 95% intervals, parse rate, reference loss
    (dictionary metrics: exact match and chrF).
    """
    if metrics.get("task") == "dict":
        em = metrics["exact_match"]
        return f"n={metrics['n']}: exact match {em['value']:.1%} [{em['ci95'][0]:.1%}, {em['ci95'][1]:.1%}], chrF {metrics['chrf']:.1f}"
    labels = (("accuracy", "accuracy"), ("loglik_accuracy", "loglik"), ("cloze_accuracy", "cloze"),
              ("cloze_accuracy_norm", "cloze norm"))
    parts = [f"{label} {_pct(metrics[key])}" for key, label in labels if key in metrics]
    if "parse_rate" in metrics:
        parts.insert(1, f"parsed {metrics['parse_rate']['value']:.0%}")
    if "reference_loss" in metrics:
        parts.append(f"reference loss {metrics['reference_loss']['value']:.3f}")
    return f"n={metrics['n']}: " + ", ".join(parts)


def _pct(p: dict) -> str:
    return f"{p['value']:.1%} [{p['ci95'][0]:.1%}, {p['ci95'][1]:.1%}]"


def write_eval(output: str | Path, metrics: dict, predictions: list[dict], extra: dict | None = None) -> None:
    """Write `predictions.jsonl` and `metrics.json` (with `extra` merged in) to the folder `output`.

    Raises NonFiniteError, before anything is written, if any metric is NaN or inf.
    """
    check_finite_tree(metrics, "metrics")  # before anything is written: a NaN is never a result
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(output / "predictions.jsonl", predictions)
    write_json_atomic(output / "metrics.json", {**metrics, **(extra or {})})


def run_eval(cfg: EvalConfig, choice: PrecisionChoice | None = None) -> dict:
    """`kormedqa eval`: load, score and write metrics.json + predictions.jsonl to `cfg.output`.

    Returns the metrics dict (each rate as {value, correct, total, ci95}, plus n, mode, seconds,
    generation_backend). Raises UsageError for a bad --task/--mode or missing --data/--output,
    DataError for bad questions, ModelError for a model that cannot load or run in --precision,
    OutputExistsError for an existing output without --overwrite; all before anything is written.
    `choice` is the run's precision (`hardware.choose`), decided here from `cfg` when the caller has none.
    """
    choice = choice or choose(cfg.device, cfg.precision)  # PrecisionError (one line) before anything else
    if cfg.task not in ("mcq", "dict"):
        raise UsageError(f"--task is mcq or dict, not {cfg.task!r}")
    if cfg.task == "dict":
        return _run_dict_eval(cfg, choice)
    if not cfg.data or not cfg.output:
        raise UsageError("--data and --output are required")
    scorers = parse_eval_mode(cfg.mode, "--mode")
    mcqs = load_mcq(cfg.data, split=cfg.split, exam_type=cfg.exam_type)
    if cfg.limit:
        mcqs = mcqs[: cfg.limit]
    tokenizer = load_tokenizer(cfg.model)
    backend = resolve_backend(cfg.backend, cfg.device) if "generate" in scorers else None  # None: no generation
    check_precision(cfg.model, choice)  # fp16 Gemma refused before the output is claimed
    claim_output(cfg.output, overwrite=cfg.overwrite)
    start_processes(cpu=choice.torch_device.type == "cpu")
    generator = None
    if backend == "vllm":
        generator = VllmGenerator(cfg.model, tokenizer, choice, cfg.seed)
    needs_hf = backend != "vllm" or scorers != ("generate",)
    model = load_model(cfg.model, choice, merge_adapter=True) if needs_hf else None
    metrics, preds = evaluate_mcq(model, tokenizer, mcqs, cfg.mode, cfg.batch_size, cfg.max_new_tokens,
                                  generator=generator)
    metrics["generation_backend"] = backend
    if is_main_process():
        write_eval(cfg.output, metrics, preds, {"run": provenance(cfg, {"data": cfg.data}, choice=choice)})
        print(summary_line(metrics))
    return metrics


def _run_dict_eval(cfg: EvalConfig, choice: PrecisionChoice) -> dict:
    paths = cfg.dictionary or ([cfg.data] if cfg.data else [])
    if not paths or not cfg.output:
        raise UsageError("--dictionary (or --data) and --output are required for --task dict")
    entries = load_dictionary(*paths)[: cfg.limit or None]
    tokenizer = load_tokenizer(cfg.model)
    claim_output(cfg.output, overwrite=cfg.overwrite)
    start_processes(cpu=choice.torch_device.type == "cpu")
    model = load_model(cfg.model, choice, merge_adapter=True)
    metrics, preds = evaluate_dict(model, tokenizer, entries, cfg.batch_size, min(cfg.max_new_tokens, 96))
    if is_main_process():
        write_eval(cfg.output, metrics, preds, {"run": provenance(cfg, choice=choice)})
        print(summary_line(metrics))
    return metrics
