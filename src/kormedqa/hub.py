"""MCQs through `datasets`: local copies of hub dataset repositories, and hub ids.

A folder with a dataset card (README.md whose YAML `configs:` map configs to data files) is read
by `datasets.load_dataset(folder, config)`, the same code path as the hub id, so the card's
configs, globs and features apply as on the hub. `datasets` is imported inside each function:
it is heavy, and only card and hub users need it. Rows then go through `validate.row_to_mcq`
like every file reader's.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .records import EXAM_TYPES, MCQ, DataError
from .text import normalize_value
from .validate import row_to_mcq


def card_configs(folder: Path) -> list[str]:
    """Config names in the YAML `configs:` of `folder/README.md` (a hub dataset card); [] if none.

    Raises DataError naming the card for unreadable YAML or `configs` that is not a list of mappings.
    """
    readme = folder / "README.md"
    if not readme.is_file():
        return []
    from huggingface_hub import DatasetCard

    try:
        configs = DatasetCard.load(readme).data.to_dict().get("configs") or []
    except Exception as exc:  # YAML and card errors come in several types
        raise DataError(str(readme), None, "configs", f"unreadable dataset card: {exc}") from None
    if not isinstance(configs, list) or not all(isinstance(c, dict) for c in configs):
        raise DataError(str(readme), None, "configs", "must be a list of {config_name, data_files}")
    return [str(c.get("config_name", "default")) for c in configs]


def _plain(value: Any) -> Any:
    """A `datasets` cell as the JSON readers would give it: pandas turns a CSV column with empty
    cells into floats, so NaN is an absent value and 2020.0 the integer it was."""
    if isinstance(value, float):
        if value != value:
            return None
        if value.is_integer():
            return int(value)
    return value


def _dataset_records(rows, label: str, exam_forced: str, exam_filter: str | None, fallback: str) -> list[MCQ]:
    out = []
    for index, row in enumerate(rows, start=1):
        row = normalize_value({k: _plain(v) for k, v in dict(row).items()})
        mcq = row_to_mcq(row, label, index, True, exam_forced, f"{fallback}-{index}", exam_filter or "")
        if not exam_filter or mcq.exam_type == exam_filter:
            out.append(mcq)
    return out


def load_card(folder: Path, configs: list[str], split: str, exam_type: str | None) -> list[MCQ]:
    """The `split` of a local copy of a hub dataset repository, as validated MCQs.

    `configs` are the card's config names (`card_configs`). Configs named after an exam type give
    that exam_type to their records; otherwise every config is read and `exam_type` filters on the
    records' own column. Raises DataError (naming the card or the config) for a config or split the
    card lacks, files that do not load or do not match the card's split sizes, and bad rows.
    """
    import datasets  # heavy import; only card and hub users need it

    readme = str(folder / "README.md")
    exam_configs = [c for c in configs if c in EXAM_TYPES]
    if exam_type and exam_configs and exam_type not in exam_configs:
        raise DataError(readme, None, "configs", f"no config '{exam_type}' (has {', '.join(configs)})")
    wanted = ([exam_type] if exam_type else exam_configs) if exam_configs else configs
    out = []
    for config in wanted:
        where = f"{folder} (config {config}, split {split})"
        try:
            files = datasets.load_dataset_builder(str(folder), config).config.data_files or {}
        except Exception as exc:  # missing data files, unknown formats ...
            raise DataError(where, None, None, f"could not load: {exc}") from None
        if split not in files:
            if exam_type:
                raise DataError(readme, None, "configs", f"config '{config}' has no split '{split}' (has {', '.join(files)})")
            continue  # the hub's dentist config may lack a split the others have
        try:
            rows = datasets.load_dataset(str(folder), config, split=split)
        except datasets.exceptions.SplitsVerificationError as exc:
            raise DataError(readme, None, "dataset_info", f"config '{config}': the data files do not match the "
                            f"card's split sizes (edited files, or a card from another revision): {exc}") from None
        except Exception as exc:  # unreadable files, types that do not match the card's features ...
            raise DataError(where, None, None, f"could not load: {exc}") from None
        label = str(files[split][0]) if len(files[split]) == 1 else where
        out.extend(_dataset_records(rows, label, config if exam_configs else "", exam_type if not exam_configs else None,
                                    f"{config}-{split}"))
    if not out and not exam_type:
        raise DataError(readme, None, "configs", f"no config has a '{split}' split")
    return out


def load_hub(dataset_id: str, split: str, exam_type: str | None) -> list[MCQ]:
    """The `split` of hub dataset `dataset_id` ("owner/name"): one config per exam type, or only `exam_type`'s.

    Records take their config's exam_type; their source is "owner/name/config/split:row".
    Raises DataError for a config that does not load (network, auth, missing config) or a bad row.
    """
    import datasets  # heavy import; only hub users need it

    out = []
    for config in [exam_type] if exam_type else list(EXAM_TYPES):
        name = f"{dataset_id}/{config}/{split}"
        try:
            rows = datasets.load_dataset(dataset_id, config, split=split)
        except Exception as exc:  # network, auth and missing-config errors all land here
            raise DataError(name, None, None, f"could not load from the Hugging Face hub: {exc}") from exc
        out.extend(_dataset_records(rows, name, config, None, f"{config}-{split}"))
    return out



HUB_COLUMNS = ("id", "subject", "year", "q_number", "question", "A", "B", "C", "D", "E", "answer", "cot")
FEWSHOT_SPLIT = "fewshot"


def write_hub_copy(root: str | Path, splits: dict[str, list[MCQ]]) -> Path:
    """Write MCQs as a local copy of a hub dataset repository in KorMedMCQA's layout; return `root`.

    `splits` maps split name -> MCQs (each with an exam_type among `EXAM_TYPES`). Written, as the
    hub publishes them (STACK_NOTES.md, "KorMedMCQA on the hub"): `<exam>/<split>-00000-of-00001.parquet`
    per exam type and split, answers as integers 1-5, no exam_type column (the config is the exam),
    and a README.md dataset card whose `configs:` map each exam type to its splits. The `id`
    column is kept, so records read back keep their ids. `datasets.load_dataset(root, exam)`,
    `kormedqa.data.load_mcq(root, split)` and lm-evaluation-harness's kormedmcqa task all read it.
    Raises DataError for a question without a known exam type.
    """
    import pyarrow as pa  # heavy import; only hub-layout writers need it
    import pyarrow.parquet as pq

    root = Path(root)
    schema = pa.schema([(c, pa.int64() if c in ("year", "q_number", "answer") else pa.string()) for c in HUB_COLUMNS])
    configs: dict[str, list[str]] = {}
    for split, mcqs in splits.items():
        for q in mcqs:
            if q.exam_type not in EXAM_TYPES:
                raise DataError(q.source or q.id, None, "exam_type", f"one of {', '.join(EXAM_TYPES)} is needed "
                                f"for the hub's layout (configs are exam types); got {q.exam_type!r}")
        for exam in EXAM_TYPES:
            rows = [{"id": q.id, "subject": q.subject, "year": q.year, "q_number": q.q_number, "question": q.question,
                     **dict(zip("ABCDE", q.options)), "answer": q.answer_index + 1, "cot": q.cot}
                    for q in mcqs if q.exam_type == exam]
            if not rows:
                continue
            path = root / exam / f"{split}-00000-of-00001.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
            configs.setdefault(exam, []).append(split)
    lines = ["---", "configs:"]
    for exam in EXAM_TYPES:
        if exam in configs:
            lines += [f"- config_name: {exam}", "  data_files:"]
            lines += [f"  - split: {split}\n    path: {exam}/{split}-*" for split in configs[exam]]
    lines += ["---", "", "A copy of KorMedMCQA-schema questions in the hub's layout, written by kormedqa.", ""]
    (root / "README.md").write_text("\n".join(lines), encoding="utf-8")
    return root


def fewshot_split(train: list[MCQ], n: int = 5) -> list[MCQ]:
    """The first `n` questions of each exam type of `train`: a `fewshot` split for a copy that has
    none (lm-eval's kormedmcqa task samples `first_n` from it). Never take it from the test split."""
    out: list[MCQ] = []
    for exam in EXAM_TYPES:
        out += [q for q in train if q.exam_type == exam][:n]
    return out
