"""The scorers, each declared once: what it runs, the records it returns, the metrics it makes.

As lm-evaluation-harness declares a task's filters and metrics once in its YAML, each entry of
`SCORERS` says everything the rest of kormedqa needs to know about one way of scoring:

- `run(inputs) -> {question id: record}`: the forward passes (kormedqa.scorers) and the step that
  turns their outputs into one record per question (`record_fields` are the keys of a record);
- `metrics(records) -> {name: value}`: what it computes from the joined records, as `Metric`s
  that say which a loop may select its best checkpoint by (`select`), which a loop keeps per
  loop in history.json (`history`), which are columns of the report's table (`column`) and which
  per-question record field a rate counts (`hit`: what McNemar's test pairs by id).

Everything else is derived here: the `--mode`/`--eval-mode` names (`EVAL_SCORERS`, `ALL_SCORERS`,
`parse_eval_mode`), the `--select-by` choices (`SELECTABLE_BY_SCORER`, `SELECT_BY`), the metrics
history.json keeps (`HISTORY_METRICS`), the report's columns and sentences (`REPORT_METRICS`) and
the per-question keys paired by McNemar (`paired_keys`). A new scorer is one new entry.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .errors import UsageError
from .extract import answer_after_reasoning, extract_answer, has_detailed_keywords, has_reasoning_tags, reasoning_score
from .formats import DEFAULT_RATIONALE_TEMPLATE, Glossary, mcq_completion, mcq_prompt, template_simple_reasoning
from .launch import all_gather, shard_batches
from . import lm_eval_protocol as lm_eval_scorer
from .metrics import accuracy_with_groups, mean_interval, proportion, rate
from .records import LETTERS, MCQ
from .scorers import (ANSWER_STOPS, HFGenerator, completion_losses, eval_prompt, length_order, letter_logprobs,
                      option_logprobs)


@dataclass(frozen=True)
class Metric:
    """One metric a scorer makes, keyed `name` in metrics.json.

    `column`: its header in the report's results table (None: not a column); `phrase`: how the
    report's "what moved" sentences and its picture name it (None: not named there); `hit`: the
    per-question record field whose truth the metric is the rate of (McNemar pairs runs by it);
    `select`: a loop may pick its best checkpoint by it (`--select-by`); `history`: kept per loop
    in history.json; `plot`: drawn before and after in the report picture's panel of splits (the
    accuracies; a parse rate is in the table).
    """

    name: str
    column: str | None = None
    phrase: str | None = None
    hit: str | None = None
    select: bool = False
    history: bool = True
    plot: bool = False


@dataclass
class ScoringInputs:
    """What a scorer's `run` may read. `mcqs` are the questions (ids unique); `model`/`tokenizer`
    the loaded HF model (None when no in-process scorer needs it); `generator(prompts,
    max_new_tokens, stop_strings) -> texts` replaces HF generation (vLLM, or a stand-in in tests).
    `model_path`, `data` and `split` name the model and questions for scorers that load their own
    (the lm-eval protocol); `lm_eval` holds that protocol's settings (kormedqa.lm_eval_protocol)."""

    mcqs: Sequence[MCQ]
    model: Any = None
    tokenizer: Any = None
    batch_size: int = 8
    max_new_tokens: int = 256
    glossary: Glossary | None = None
    generator: Callable | None = None
    rationale_template: str = DEFAULT_RATIONALE_TEMPLATE
    model_path: str | None = None
    data: str | None = None
    split: str = "test"
    lm_eval: Any = None
    extra: dict = field(default_factory=dict)  # what a scorer reports about its own run, merged into the metrics


@dataclass(frozen=True)
class Scorer:
    """One scorer: its `--mode` name, what it runs and returns, what it computes from the records.

    `in_all`: part of `--mode all` (the lm-eval protocol is not: it runs another prompt);
    `partial`: its records may lack questions (the loss pass skips over-long references);
    `needs_model`: it scores the HF model loaded in this process (without a `generator`).
    """

    name: str
    help: str
    run: Callable[[ScoringInputs], dict[str, dict]]
    record_fields: tuple[str, ...]
    metrics: Callable[[Sequence[dict]], dict]
    declared: tuple[Metric, ...]
    in_all: bool = True
    partial: bool = False
    needs_model: bool = True


# ---------------------------------------------------------------- outputs -> records by id


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


# ---------------------------------------------------------------- records -> metrics


def generation_metrics(preds: Sequence[dict]) -> dict:
    m = accuracy_with_groups(preds, "accuracy", "correct")
    m["parse_rate"] = proportion(sum(bool(p["prediction"]) for p in preds), len(preds))
    # Stricter: the letter sits where the spec's format puts it. A letter fished out of a
    # degenerate output by the fallback cascade counts in parse_rate but not here.
    m["format_parse_rate"] = rate(preds, "answer_after_reasoning")
    m["accuracy_among_parsed"] = rate(preds, "correct", where=lambda p: bool(p["prediction"]))
    m["reasoning_score"] = mean_interval([p["reasoning_score"] for p in preds], "the reasoning score")
    m["reasoning_tag_rate"] = rate(preds, "has_reasoning_tags")
    m["valid_format_rate"] = rate(preds, "good_format")
    m["prediction_counts"] = {x: sum(p["prediction"] == x for p in preds) for x in (*LETTERS, "")}
    return m


def loglik_metrics(preds: Sequence[dict]) -> dict:
    m = accuracy_with_groups(preds, "loglik_accuracy", "loglik_correct")
    m["loglik_prediction_counts"] = {x: sum(p["loglik_prediction"] == x for p in preds) for x in LETTERS}
    return m


def cloze_metrics(preds: Sequence[dict]) -> dict:
    return {**accuracy_with_groups(preds, "cloze_accuracy", "cloze_correct"),
            **accuracy_with_groups(preds, "cloze_accuracy_norm", "cloze_norm_correct")}


def loss_metrics(preds: Sequence[dict]) -> dict:
    scored = [p for p in preds if "reference_loss" in p]
    tokens = sum(p["reference_tokens"] for p in scored)
    return {
        "reference_loss": {"value": sum(p["reference_loss"] * p["reference_tokens"] for p in scored) / max(tokens, 1),
                           "total": len(scored), "tokens": tokens},
        "reference_answer_loss": mean_interval([p["reference_answer_loss"] for p in scored
                                                if p["reference_answer_loss"] is not None]),
        "teacher_forced_answer_accuracy": rate(scored, "answer_token_correct"),
        "reference_loss_skipped": len(preds) - len(scored),
    }


# ---------------------------------------------------------------- what each scorer runs


# Under several processes (`accelerate launch`) each in-process scorer scores whole batches of its
# own (`launch.shard_batches`): every question once, in the batch one process would form;
# `run_scorers` gathers the records so every process returns the same metrics and predictions.


def _by_length(inp: ScoringInputs) -> tuple[list[str], list[int]]:
    prompts = [eval_prompt(q) for q in inp.mcqs]
    return prompts, shard_batches(length_order(prompts), inp.batch_size)  # how generation and letter scoring batch


def _in_order(inp: ScoringInputs) -> list[MCQ]:
    return [inp.mcqs[i] for i in shard_batches(range(len(inp.mcqs)), inp.batch_size)]  # how cloze and loss batch


def _run_generate(inp: ScoringInputs) -> dict[str, dict]:
    generator = inp.generator or HFGenerator(inp.model, inp.tokenizer, inp.batch_size)
    prompts, mine = _by_length(inp)
    outputs = generator([prompts[i] for i in mine], inp.max_new_tokens, ANSWER_STOPS)
    return generation_records([inp.mcqs[i] for i in mine], outputs)


def _run_loglik(inp: ScoringInputs) -> dict[str, dict]:
    prompts, mine = _by_length(inp)
    scores = letter_logprobs(inp.model, inp.tokenizer, [prompts[i] for i in mine], inp.batch_size)
    return letter_records([inp.mcqs[i] for i in mine], scores)


def _run_cloze(inp: ScoringInputs) -> dict[str, dict]:
    mine = _in_order(inp)
    return cloze_records(mine, option_logprobs(inp.model, inp.tokenizer, mine, inp.batch_size))


def _run_loss(inp: ScoringInputs) -> dict[str, dict]:
    glossary = inp.glossary or Glossary()
    rows = [{"id": q.id, "prompt": mcq_prompt(q),
             "completion": mcq_completion(q.cot or template_simple_reasoning(q, glossary, inp.rationale_template), q.answer)}
            for q in _in_order(inp)]
    return loss_records(completion_losses(inp.model, inp.tokenizer, rows, inp.batch_size))


SCORERS: tuple[Scorer, ...] = (
    Scorer("generate", "greedy answer with the spec's prompt, letter extracted", _run_generate,
           ("prediction", "correct", "raw_output", "reasoning_score", "has_reasoning_tags", "answer_after_reasoning",
            "good_format"),
           generation_metrics,
           (Metric("accuracy", "accuracy (gen)", "Generation accuracy", hit="correct", select=True, plot=True),
            Metric("parse_rate", "parse rate", "Parse rate (any letter found)", hit="prediction"),
            Metric("format_parse_rate", "letter after `</reasoning>`",
                   "Letter right after </reasoning> (the spec's format)", hit="answer_after_reasoning"),
            Metric("accuracy_among_parsed", "accuracy among parsed", "Accuracy among parsed answers"),
            Metric("reasoning_score", "reasoning score", select=True),
            Metric("valid_format_rate"), Metric("reasoning_tag_rate"))),
    Scorer("loglik", "A-E as the next token", _run_loglik, ("loglik_prediction", "loglik_correct", "loglik_scores"),
           loglik_metrics,
           (Metric("loglik_accuracy", "letter loglik accuracy", "Letter log-likelihood accuracy", hit="loglik_correct",
                   select=True, plot=True),)),
    Scorer("cloze", "option text log-likelihood", _run_cloze,
           ("cloze_prediction", "cloze_correct", "cloze_norm_prediction", "cloze_norm_correct", "cloze_scores"),
           cloze_metrics,
           (Metric("cloze_accuracy", "cloze accuracy", "Cloze accuracy (option text)", hit="cloze_correct", select=True,
                   plot=True),
            Metric("cloze_accuracy_norm", "cloze accuracy (norm)", "Cloze accuracy, length-normalised",
                   hit="cloze_norm_correct", select=True))),
    Scorer("loss", "teacher-forced reference", _run_loss,
           ("reference_loss", "reference_answer_loss", "answer_token_correct", "reference_tokens"),
           loss_metrics,
           (Metric("teacher_forced_answer_accuracy"), Metric("reference_loss"), Metric("reference_answer_loss")),
           partial=True),
    # Not part of `all`: another prompt, generation budget and filter, run by lm-eval itself.
    Scorer("lm_eval", "lm-evaluation-harness's own kormedmcqa task: its prompt, few-shot, filter and exact_match",
           lm_eval_scorer.run_lm_eval, lm_eval_scorer.RECORD_FIELDS, lm_eval_scorer.lm_eval_metrics,
           (Metric("lm_eval_exact_match", "lm-eval exact_match", "lm-eval kormedmcqa exact_match", hit="lm_eval_correct",
                   select=True, plot=True),
            Metric("lm_eval_parse_rate", None, "lm-eval's filter found a letter", hit="lm_eval_prediction")),
           in_all=False, needs_model=False),
)
BY_NAME = {s.name: s for s in SCORERS}

# Metrics that need two scorers' records of the same question: ((scorers), name, function).
JOINT_METRICS = (
    (("generate", "loglik"), "generate_loglik_agreement",
     lambda preds: proportion(sum(p["prediction"] == p["loglik_prediction"] for p in preds), len(preds))),
)
# What `evaluate_checkpoint`'s dictionary recall adds to an MCQ evaluation (not a scorer of MCQs).
DICT_RECALL_METRICS = (Metric("dict_exact_match"), Metric("dict_chrf", phrase="Dictionary recall (chrF)"),
                       Metric("dict_reverse_exact_match", phrase="Reverse dictionary recall (term from its description)"))

EVAL_SCORERS = tuple(s.name for s in SCORERS)
ALL_SCORERS = tuple(s.name for s in SCORERS if s.in_all)
# `all` is every scorer of the spec's protocol; `both` (generate,loglik) was an older name.
EVAL_MODE_ALIASES = {"all": ALL_SCORERS}
SELECTABLE_BY_SCORER = {s.name: tuple(m.name for m in s.declared if m.select) for s in SCORERS}
SELECT_BY = tuple(m for names in SELECTABLE_BY_SCORER.values() for m in names)
HISTORY_METRICS = tuple(m.name for s in SCORERS for m in s.declared if m.history) + tuple(
    m.name for m in DICT_RECALL_METRICS)
REPORT_METRICS: tuple[Metric, ...] = tuple(m for s in SCORERS for m in s.declared) + DICT_RECALL_METRICS
MODE_HELP = ", ".join(f"{s.name} ({s.help})" for s in SCORERS)


def parse_eval_mode(mode: str, flag_name: str = "--eval-mode") -> tuple[str, ...]:
    """`generate,loglik` -> ('generate', 'loglik'), in `SCORERS` order; `all` -> `ALL_SCORERS`.

    UsageError naming `flag_name` for an empty list or an unknown scorer.
    """
    if mode in EVAL_MODE_ALIASES:
        return EVAL_MODE_ALIASES[mode]
    parts = tuple(p.strip() for p in mode.split(",") if p.strip())
    unknown = [p for p in parts if p not in EVAL_SCORERS]
    if not parts or unknown:
        raise UsageError(
            f"{flag_name} takes a comma-separated set of {', '.join(EVAL_SCORERS)} (or all); got {mode!r}"
        )
    return tuple(s for s in EVAL_SCORERS if s in parts)


def scorer_of(metric: str) -> str | None:
    """The name of the scorer that computes `metric` (any declared metric), or None."""
    return next((s.name for s in SCORERS for m in s.declared if m.name == metric), None)


def paired_keys(scorers: Sequence[str]) -> dict[str, str]:
    """{metric: per-question record field} for every rate the given scorers make that McNemar can pair."""
    return {m.name: m.hit for s in SCORERS if s.name in scorers for m in s.declared if m.hit}


def join_records(mcqs: Sequence[MCQ], parts: dict[str, dict[str, dict]],
                 partial: Sequence[str] | None = None) -> list[dict]:
    """One dict per question: id, exam type, gold, and every scorer's record for that id.

    Joined by id, never by position. A scorer's record for an unknown id is an error; a missing
    record is an error except for scorers in `partial` (default: those declared partial, i.e.
    the loss pass, which skips over-long references). Raises ValueError for repeated question
    ids, RuntimeError for records that do not match the questions.
    """
    partial = tuple(s.name for s in SCORERS if s.partial) if partial is None else tuple(partial)
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


def mcq_metrics(preds: Sequence[dict], scorers: Sequence[str]) -> dict:
    """Every metric the named scorers make from the joined records, in one shape: {value, total,
    ci95} (+ correct for rates). Rates carry 95% Wilson intervals; means (reasoning score, losses)
    a normal-approximation interval; accuracies also come per exam type."""
    m: dict = {}
    for scorer in SCORERS:
        if scorer.name in scorers:
            m.update(scorer.metrics(preds))
    for needs, name, compute in JOINT_METRICS:
        if all(s in scorers for s in needs):
            m[name] = compute(preds)
    return m


def run_scorers(inputs: ScoringInputs, scorers: Sequence[str]) -> tuple[dict, list[dict]]:
    """Run the named scorers on `inputs`, join their records by id and build the metrics.

    Returns (metrics as `mcq_metrics` makes them plus what the scorers report about their runs,
    one joined record per question in `inputs.mcqs` order).
    """
    parts = {s.name: s.run(inputs) for s in SCORERS if s.name in scorers}
    # Under several processes each holds the records of its batches (lm-eval: the main process
    # holds them all); every process gets all of them, so each computes the same metrics, and the
    # caller lets the main one write.
    gathered = all_gather(parts)
    parts = {name: {qid: rec for each in gathered for qid, rec in each[name].items()} for name in parts}
    preds = join_records(inputs.mcqs, parts)
    return {**mcq_metrics(preds, scorers), **inputs.extra}, preds
