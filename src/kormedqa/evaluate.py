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

from .checks import Range, check_config
from .config import DEFAULT_MODEL_HELP, DeviceArgs, LmEvalArgs, RunArgs, arg
from .data import load_dictionary, load_mcq
from .errors import UsageError
from .formats import DEFAULT_RATIONALE_TEMPLATE, GENERATION_PREFIX, Glossary, dict_prompt, reverse_dict_prompt
from .fsio import write_json_atomic, write_jsonl_atomic
from .hardware import PrecisionChoice, choose
from .lm_eval_protocol import LmEvalSettings, data_configs, lm_eval_settings
from .metrics import proportion
from .modeling import check_precision, load_model, load_tokenizer
from .numerics import check_finite_tree
from .provenance import claim_run, provenance
from .records import EXAM_TYPES, MCQ
from .scorer_table import (  # noqa: F401  (records and metrics builders, re-exported for callers of kormedqa.evaluate)
    BY_NAME, MODE_HELP, ScoringInputs, cloze_records, generation_records, join_records, letter_records, loss_records,
    mcq_metrics, parse_eval_mode, run_scorers,
)
from .launch import all_gather, is_main_process, shard_batches, start_processes
from .scorers import generate, length_order
from .vllm_backend import BACKENDS, VllmGenerator, resolve_backend

log = logging.getLogger(__name__)



PROTOCOLS = ("spec", "lm-eval")


@dataclass
class EvalConfig(LmEvalArgs, DeviceArgs, RunArgs):
    """`kormedqa eval`: score a model on a KorMedMCQA split."""

    output: str = arg("", "folder for metrics.json and predictions.jsonl")
    model: str = arg("gemma3-270m", DEFAULT_MODEL_HELP)
    data: str = arg("", "KorMedMCQA file, split folder or hub id (e.g. sean0042/KorMedMCQA)")
    split: str = arg("test", "split to read from a folder or the hub")
    exam_type: str | None = arg(None, "doctor, nurse, pharm or dentist (default: all)", choices=EXAM_TYPES)
    task: str = arg("mcq", "mcq, or dict to score dictionary definitions (Track 1)", choices=["mcq", "dict"])
    dictionary: list[str] = arg(help="dictionary JSON(s) for --task dict", factory=list)
    protocol: str = arg("spec", "spec (the spec's prompt, the scorers of --mode) or lm-eval (lm-evaluation-harness's "
                                "own kormedmcqa task, the number papers print; --data a hub id or a folder in the "
                                "hub's layout: see kormedqa prepare hub)", choices=PROTOCOLS)
    mode: str = arg("all", "scorers to run: all (every one of the spec's protocol), or a comma list of " + MODE_HELP)
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

    def scorers(self) -> tuple[str, ...]:
        """The scorers this evaluation runs: --mode's, or the lm-eval protocol's alone."""
        return ("lm_eval",) if self.protocol == "lm-eval" else parse_eval_mode(self.mode, "--mode")


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
    model_path: str | None = None,
    data: str | None = None,
    split: str = "test",
    lm_eval: LmEvalSettings | None = None,
) -> tuple[dict, list[dict]]:
    """Run the scorers `mode` names (kormedqa.scorer_table), join their records by id, build the metrics.

    Returns (metrics, predictions): metrics as `scorer_table.mcq_metrics` documents plus n, mode,
    scorers and seconds; one prediction dict per question in input order. `generator` (prompts,
    max_new_tokens, stop_strings) -> texts replaces HF generation (the vLLM backend, or a
    stand-in in tests); `model` may then be None when only "generate" runs. The reference
    completions of the loss pass use `rationale_template` for questions without `cot`. The lm-eval
    protocol (`lm_eval` in `mode`) loads `model_path` itself and reads `mcqs` from `data`/`split`
    (a hub id or a folder in the hub's layout) with the `lm_eval` settings.
    Under several processes (`accelerate launch`) each scores whole batches of its own
    (`launch.shard_batches`): every question once, in the batch one process would form; the records
    are gathered so every process returns the same metrics and predictions.
    Raises UsageError on an unknown mode, RuntimeError when a scorer's records do not join.
    """
    scorers = parse_eval_mode(mode, "--mode")
    if model is not None:
        model.eval()
    started = time.time()
    inputs = ScoringInputs(mcqs, model, tokenizer, batch_size, max_new_tokens, glossary, generator, rationale_template,
                           model_path, data, split, lm_eval)
    scored, preds = run_scorers(inputs, scorers)
    metrics = {"n": len(mcqs), "mode": mode, "scorers": list(scorers), **scored, "seconds": time.time() - started}
    return metrics, preds


@torch.no_grad()
def evaluate_dict(model, tokenizer, entries, batch_size: int = 8, max_new_tokens: int = 64) -> tuple[dict, list[dict]]:
    """Track 1 recall both ways, greedy, on `entries` (a list of DictEntry).

    Forward (the spec's row): generate after `Meaning of word {term}:` and compare with the
    definition: exact match and chrF (sacrebleu, 0-100). Reverse (the inverse row,
    `formats.reverse_dict_prompt`): generate after `Word with meaning {Korean description}:` and
    count an exact match of the term; a model trained one way only recalls the other way rarely
    (the reversal curse, Berglund et al. 2023), which is what this shows. Returns (metrics, one
    record per entry): metrics `n`, `exact_match`, `chrf`, `mean_sentence_chrf`,
    `reverse_exact_match` (proportions are {value, ci95, ...}), `seconds`.
    """
    from sacrebleu.metrics import CHRF  # defers sacrebleu

    model.eval()
    started = time.time()
    forward = _greedy_all(model, tokenizer, [dict_prompt(e.term) + GENERATION_PREFIX for e in entries], batch_size,
                          max_new_tokens, "dict")
    # A term is a few tokens; the budget only bounds a model that runs on.
    reverse = _greedy_all(model, tokenizer, [reverse_dict_prompt(e) + GENERATION_PREFIX for e in entries], batch_size,
                          min(max_new_tokens, 24), "dict reverse")
    chrf = CHRF()
    preds = []
    for entry, out, back in zip(entries, forward, reverse, strict=True):
        text, term = out.strip(), back.strip()
        preds.append({"term": entry.term, "category": entry.category, "definition": entry.definition, "output": text,
                      "exact": text == entry.definition.strip(),
                      "chrf": chrf.sentence_score(text, [entry.definition]).score,
                      "reverse_output": term, "reverse_exact": term == entry.term})
    metrics = {
        "n": len(preds),
        "task": "dict",
        "exact_match": proportion(sum(p["exact"] for p in preds), len(preds)),
        "chrf": chrf.corpus_score([p["output"] for p in preds], [[p["definition"] for p in preds]]).score,
        "mean_sentence_chrf": sum(p["chrf"] for p in preds) / max(len(preds), 1),
        "reverse_exact_match": proportion(sum(p["reverse_exact"] for p in preds), len(preds)),
        "seconds": time.time() - started,
    }
    return metrics, preds


def _greedy_all(model, tokenizer, prompts: list[str], batch_size: int, max_new_tokens: int, desc: str) -> list[str]:
    """Greedy texts for every prompt in order; several processes each generate a share (see evaluate_mcq)."""
    mine = shard_batches(length_order(prompts), batch_size)
    texts = generate(model, tokenizer, [prompts[i] for i in mine], batch_size, max_new_tokens, desc=desc,
                     stop_strings=())
    by_index = {i: t for each in all_gather(dict(zip(mine, texts))) for i, t in each.items()}
    return [by_index[i] for i in range(len(prompts))]


def summary_line(metrics: dict) -> str:
    """One log line for a metrics dict: n, accuracies with 95% intervals, both parse rates (the letter
    after </reasoning>, and any letter found), reference loss (dictionary metrics: exact match and chrF).
    """
    if metrics.get("task") == "dict":
        em = metrics["exact_match"]
        line = f"n={metrics['n']}: exact match {em['value']:.1%} [{em['ci95'][0]:.1%}, {em['ci95'][1]:.1%}], chrF {metrics['chrf']:.1f}"
        return line + (f", reverse exact match {_pct(metrics['reverse_exact_match'])}" if "reverse_exact_match" in metrics else "")
    labels = (("accuracy", "accuracy"), ("loglik_accuracy", "loglik"), ("cloze_accuracy", "cloze"),
              ("cloze_accuracy_norm", "cloze norm"), ("lm_eval_exact_match", "lm-eval exact_match"))
    parts = [f"{label} {_pct(metrics[key])}" for key, label in labels if key in metrics]
    if "parse_rate" in metrics:
        # Both rates: the letter after </reasoning> (the spec's format) and any letter the fallback
        # cascade found (echoed options included); one "parsed" figure hid a format never followed.
        after = (f"letter after </reasoning> {metrics['format_parse_rate']['value']:.0%}, "
                 if "format_parse_rate" in metrics else "")
        parts.insert(1, f"{after}any letter {metrics['parse_rate']['value']:.0%}")
    if "reference_loss" in metrics:
        parts.append(f"reference loss {metrics['reference_loss']['value']:.3f}")
    line = f"n={metrics['n']}: " + ", ".join(parts)
    if "lm_eval_exact_match" in metrics:  # the number a paper prints: with its settings and per exam type
        run = metrics.get("lm_eval", {})
        line += (f"\nlm-eval kormedmcqa, {run.get('num_fewshot', '?')}-shot"
                 f"{', chat template' if run.get('apply_chat_template') else ''}: exact_match "
                 f"{_pct(metrics['lm_eval_exact_match'])}; parsed {metrics['lm_eval_parse_rate']['value']:.0%}; "
                 + ", ".join(f"{exam} {_pct(p)} (n={p['total']})"
                             for exam, p in metrics["lm_eval_exact_match_by_exam_type"].items()))
    return line


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
    scorers = cfg.scorers()
    if "lm_eval" in scorers:
        data_configs(cfg.data)  # UsageError for data lm-eval cannot read, before anything is loaded
    mcqs = load_mcq(cfg.data, split=cfg.split, exam_type=cfg.exam_type)
    if cfg.limit:
        mcqs = mcqs[: cfg.limit]
    tokenizer = load_tokenizer(cfg.model)
    generates = "generate" in scorers or "lm_eval" in scorers
    backend = resolve_backend(cfg.backend, cfg.device) if generates else None  # None: no generation
    check_precision(cfg.model, choice)  # fp16 Gemma refused before the output is claimed
    lm_eval = lm_eval_settings(cfg, choice, cfg.batch_size, backend) if "lm_eval" in scorers else None
    claim_run(cfg, "eval", {"data": cfg.data}, choice=choice)  # run.json, as every run folder has
    start_processes(cpu=choice.torch_device.type == "cpu")
    generator = None
    if backend == "vllm" and "generate" in scorers:
        generator = VllmGenerator(cfg.model, tokenizer, choice, cfg.seed)
    in_process = [s for s in scorers if BY_NAME[s].needs_model and not (s == "generate" and generator is not None)]
    model = load_model(cfg.model, choice, merge_adapter=True) if in_process else None
    mode = cfg.mode if cfg.protocol == "spec" else "lm_eval"
    metrics, preds = evaluate_mcq(model, tokenizer, mcqs, mode, cfg.batch_size, cfg.max_new_tokens,
                                  generator=generator, model_path=cfg.model, data=cfg.data, split=cfg.split,
                                  lm_eval=lm_eval)
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
    claim_run(cfg, "eval", {"dictionary": paths[0]}, choice=choice)
    start_processes(cpu=choice.torch_device.type == "cpu")
    model = load_model(cfg.model, choice, merge_adapter=True)
    metrics, preds = evaluate_dict(model, tokenizer, entries, cfg.batch_size, min(cfg.max_new_tokens, 96))
    if is_main_process():
        write_eval(cfg.output, metrics, preds, {"run": provenance(cfg, choice=choice)})
        print(summary_line(metrics))
    return metrics
