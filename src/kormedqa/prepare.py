"""`kormedqa prepare dict|mcq`: records in, the spec's prompt/completion JSONL out."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from .formats import (DEFAULT_RATIONALE_TEMPLATE, DETAILED_FRACTION, DICT_DIRECTIONS, FORWARD_PHRASINGS,
                      RATIONALE_TEMPLATES, Glossary, dict_examples, mcq_examples)
from .checks import Range, check_config
from .config import RunArgs, arg
from .data import load_dictionary, load_mcq, load_mcq_sources, read_jsonl
from .errors import DataError, LeakageError, OutputExistsError, UsageError
from .fsio import atomic_dir, claim_output, write_jsonl_atomic
from .hub import FEWSHOT_SPLIT, fewshot_split, write_hub_copy
from .leakage import find_overlap


@dataclass
class PrepareConfig(RunArgs):
    """`kormedqa prepare dict|mcq|hub`."""

    output: str = arg("", "prepared JSONL to write")
    seed: int = arg(42, "random seed: which questions get the detailed rationale prompt")
    track: str = arg("mcq", "dict, mcq, or hub (a copy of --data in the hub's layout, for --protocol lm-eval)",
                     choices=["dict", "mcq", "hub"])
    data: list[str] = arg(help="input file(s): dictionary JSON(s) for dict, a KorMedMCQA file/folder/hub id for mcq",
                          factory=list)
    split: str = arg("train", "split to read when --data is a folder or hub id (hub: also the source of the fewshot split)")
    dictionary: list[str] = arg(help="dictionary JSON(s) used by template rationales (mcq)", factory=list)
    rationales: str | None = arg(None, "JSONL of {id, rationale} (e.g. from a teacher model)")
    eval_data: str | None = arg(None, "evaluation set checked for overlap with the training questions")
    eval_split: str = arg("test", "split of --eval-data to check against")
    allow_overlap: bool = arg(False, "write the file even when training questions appear in --eval-data")
    detailed_fraction: float = arg(DETAILED_FRACTION, "share of MCQ rows with the detailed prompt and rationale, in [0, 1]")
    dict_directions: str = arg("forward", "dict: comma list of forward (term -> definition, the spec's) and reverse "
                                          "(Korean description -> term); beyond the spec, see docs/reference.md")
    dict_phrasings: int = arg(1, f"dict: wordings per direction, 1-{len(FORWARD_PHRASINGS)} (1: the spec's prompt only)")
    rationale_template: str = arg(DEFAULT_RATIONALE_TEMPLATE,
                                  "template rationale for records without cot: linked (option text + match verdict per "
                                  "line), recall (the recalled definitions only, then the letter), dictionary_line (as "
                                  "recall, each line the dictionary track's own 'Meaning of word X: <definition>') or "
                                  "verdict (one-word verdicts, the earlier template)", choices=RATIONALE_TEMPLATES)

    RANGES: ClassVar[dict] = {"detailed_fraction": Range(low=0, high=1),
                              "dict_phrasings": Range(low=1, high=len(FORWARD_PHRASINGS))}

    def __post_init__(self):
        """Choices and ranges at parse time (UsageError), before any input is read."""
        check_config(self)
        parse_dict_directions(self.dict_directions)


def parse_dict_directions(text: str) -> tuple[str, ...]:
    """'forward,reverse' -> ('forward', 'reverse'). UsageError for an empty list, an unknown or a repeated name."""
    names = tuple(d.strip() for d in text.split(",") if d.strip())
    if not names or set(names) - set(DICT_DIRECTIONS) or len(set(names)) != len(names):
        raise UsageError(f"--dict-directions is a comma list of {', '.join(DICT_DIRECTIONS)}, each once; got {text!r}")
    return names


def load_rationales(path: str | Path) -> dict[str, str]:
    """{id: rationale text} from a JSONL of `{"id": ..., "rationale": ...}` (or "text") per line.

    Raises DataError naming file and line for a line without a string id and a non-empty rationale.
    """
    out: dict[str, str] = {}
    for line_no, row in enumerate(read_jsonl(path), start=1):
        text = row.get("rationale", row.get("text"))
        if not isinstance(row.get("id"), str) or not isinstance(text, str) or not text.strip():
            raise DataError(str(path), line_no, "rationale", "needs a string 'id' and a non-empty string 'rationale'")
        out[row["id"]] = text
    return out


def dict_rows(entries, directions: str = "forward", phrasings: int = 1) -> list[dict]:
    """Dictionary entries -> Track 1 rows {prompt, completion, id, format}: with the defaults the
    spec's rows, one per entry, in order; else `formats.dict_examples`' rows for the comma list
    `directions` and `phrasings` wordings. UsageError for unknown directions."""
    return [e.to_row() for e in dict_examples(entries, parse_dict_directions(directions), phrasings)]


def mcq_rows(mcqs, seed: int, glossary: Glossary | None = None, rationales=None, detailed_fraction=DETAILED_FRACTION,
             template: str = DEFAULT_RATIONALE_TEMPLATE) -> list[dict]:
    """MCQs -> the spec's Track 2 rows {prompt, completion, id, format}, one per question, in order.

    `seed` picks which round(n * detailed_fraction) questions get the detailed format; questions
    without cot get a rationale from `rationales` (id -> text) or else `template` with `glossary`.
    """
    return [e.to_row() for e in mcq_examples(mcqs, seed, glossary, rationales, detailed_fraction, template)]


def check_overlap(train, evaluation, allow: bool) -> dict:
    """Refuse training data that contains evaluation questions, unless the user allows it.

    `train` and `evaluation` are MCQ lists. Returns `leakage.find_overlap`'s report as a dict
    (`OverlapReport.to_dict`). Raises LeakageError, with examples, when any overlap is found and
    not `allow`.
    """
    report = find_overlap(train, evaluation)
    if report.count and not allow:
        examples = ", ".join(f"{t}~{e}" for t, e in report.exact[:3]) or ", ".join(f"{t}~{e}" for t, e, _ in report.near[:3])
        raise LeakageError(
            f"{report.count} training questions also appear in the evaluation set "
            f"({len(report.exact)} exact, {len(report.near)} near-duplicates; e.g. {examples}). "
            "Remove them or pass --allow-overlap."
        )
    return report.to_dict()


def run_prepare(cfg: PrepareConfig) -> dict:
    """Read `cfg.data`, write the spec's prompt/completion rows to `cfg.output` (one JSONL file, atomically).

    Returns what was written: {"output", "track", "rows"} and, for mcq, "detailed" (rows with the
    detailed rationale) and "overlap" (with --eval-data: `leakage.find_overlap`'s report).
    Raises UsageError for a missing --output/--data or a folder as --output, OutputExistsError for
    an existing output without --overwrite (before any input is read), DataError for bad inputs,
    LeakageError for training questions found in --eval-data without --allow-overlap.
    """
    out = Path(cfg.output)
    if not cfg.output:
        raise UsageError("--output is required")
    if out.is_dir():
        raise UsageError(f"--output {out} is a folder: prepare writes one JSONL file")
    if out.exists() and not cfg.overwrite:  # refused before reading anything; claimed after
        raise OutputExistsError(f"{out} already exists: pass --overwrite to replace it")
    if not cfg.data:
        raise UsageError("--data is required")
    info: dict = {"output": str(out), "track": cfg.track}
    if cfg.track == "dict":
        rows = dict_rows(load_dictionary(*cfg.data), cfg.dict_directions, cfg.dict_phrasings)
    elif cfg.track == "mcq":
        mcqs = load_mcq_sources(cfg.data, cfg.split)
        if cfg.eval_data:
            info["overlap"] = check_overlap(mcqs, load_mcq(cfg.eval_data, split=cfg.eval_split), cfg.allow_overlap)
        glossary = Glossary(load_dictionary(*cfg.dictionary)) if cfg.dictionary else Glossary()
        rationales = load_rationales(cfg.rationales) if cfg.rationales else None
        rows = mcq_rows(mcqs, cfg.seed, glossary, rationales, cfg.detailed_fraction, cfg.rationale_template)
        info["detailed"] = sum(r["format"] == "detailed" for r in rows)
    else:
        raise UsageError(f"prepare takes dict or mcq, not {cfg.track!r}")
    # Claimed only now that every input has been read: a bad input never costs the old file.
    claim_output(out, overwrite=cfg.overwrite, is_dir=False)
    write_jsonl_atomic(out, rows)
    info["rows"] = len(rows)
    return info


def run_prepare_hub(cfg: PrepareConfig) -> dict:
    """`kormedqa prepare hub`: write `--data`'s `--split` and `--eval-split` (and a `fewshot` split:
    the first 5 questions per exam type of `--split`, never of the evaluation split) to the folder
    `--output` in the hub's layout (`hub.write_hub_copy`), atomically. lm-evaluation-harness's
    kormedmcqa task reads it (`kormedqa eval --protocol lm-eval --data <output>`).

    Returns {"output", "track", "splits": {split: questions}, "fewshot_by_exam_type"}. Raises
    UsageError for missing --data/--output or two sources, OutputExistsError for an existing
    output without --overwrite, DataError for bad inputs or questions without an exam type, all
    before anything is written.
    """
    if not cfg.output or len(cfg.data) != 1:
        raise UsageError("kormedqa prepare hub needs --output (a folder) and one --data")
    if cfg.split == cfg.eval_split:
        raise UsageError(f"--split (the fewshot source) and --eval-split must differ; both are {cfg.split!r}")
    out = Path(cfg.output)
    if (out.is_file() or (out.is_dir() and any(out.iterdir()))) and not cfg.overwrite:
        raise OutputExistsError(f"{out} already exists: pass --overwrite to replace it")
    train = load_mcq(cfg.data[0], split=cfg.split)
    test = load_mcq(cfg.data[0], split=cfg.eval_split)
    splits = {cfg.split: train, cfg.eval_split: test, FEWSHOT_SPLIT: fewshot_split(train)}
    claim_output(out, overwrite=cfg.overwrite)
    with atomic_dir(out) as scratch:
        write_hub_copy(scratch, splits)
    counts = {e: sum(q.exam_type == e for q in splits[FEWSHOT_SPLIT]) for e in sorted({q.exam_type for q in test})}
    return {"output": str(out), "track": "hub", "splits": {k: len(v) for k, v in splits.items()},
            "fewshot_by_exam_type": counts}


def print_info(info: dict) -> None:
    """Print `run_prepare`'s result as indented JSON on stdout."""
    print(json.dumps(info, ensure_ascii=False, indent=2))
