"""Readers, validation and atomic writers: the only place kormedqa touches input files.

Every reader turns raw rows into `MCQ` / `DictEntry` records or raises `DataError`
naming the file, the line (JSONL/CSV line, JSON array element, parquet row) and the
field, so a bad record is fixed at its source instead of surfacing as a KeyError
deep inside training.
"""
from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

from kormedqa.records import EXAM_TYPES, LETTERS, MCQ, DataError, DictEntry

SPLITS = ("train", "dev", "test", "fewshot")
MCQ_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
MAX_QUESTION_CHARS = 20000
_BOM = b"\xef\xbb\xbf"
# A hub id is "owner/name"; anything with a file extension or more slashes is a path typo.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

Row = tuple[int, Any]  # (1-based line / element / row number, parsed value)


# ----------------------------------------------------------------------------- raw readers


def _read_text(path: Path) -> str:
    """Decode a whole file as UTF-8, reporting the line of the first bad byte."""
    raw = path.read_bytes()
    if raw.startswith(_BOM):  # Excel and Notepad add one; it is not part of the data
        raw = raw[len(_BOM):]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(str(path), line, None, f"not valid UTF-8 (byte 0x{raw[exc.start]:02x})") from None


def _jsonl_rows(path: Path) -> list[Row]:
    rows = []
    # split("\n") rather than splitlines(): U+2028 etc. may legally sit inside JSON strings.
    for number, line in enumerate(_read_text(path).split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        try:
            rows.append((number, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise DataError(str(path), number, None, f"invalid JSON: {exc.msg} (column {exc.colno})") from None
    return rows


def _json_array_rows(path: Path) -> list[Row]:
    text = _read_text(path)
    if not text.strip():
        return []
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(str(path), exc.lineno, None, f"invalid JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(value, list):
        raise DataError(str(path), None, None, f"expected a JSON array, got {type(value).__name__}")
    return list(enumerate(value, start=1))


def _csv_rows(path: Path) -> list[Row]:
    # newline="" lets the csv module handle CRLF and quoted multi-line cells itself.
    reader = csv.reader(io.StringIO(_read_text(path), newline=""))
    try:
        header = next(reader)
    except StopIteration:
        return []
    except csv.Error as exc:
        raise DataError(str(path), reader.line_num, None, f"invalid CSV: {exc}") from None
    header = [name.strip() for name in header]
    rows, previous_end = [], reader.line_num
    while True:
        start = previous_end + 1  # a quoted cell may span lines; report where the record starts
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise DataError(str(path), start, None, f"invalid CSV: {exc}") from None
        previous_end = reader.line_num
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) != len(header):
            raise DataError(str(path), start, None, f"row has {len(cells)} cells, header has {len(header)}")
        # Empty CSV cells mean "absent", exactly like a missing JSON key.
        rows.append((start, {k: v for k, v in zip(header, cells) if v.strip()}))
    return rows


def _parquet_rows(path: Path) -> list[Row]:
    import pyarrow.parquet as pq  # imported lazily: only parquet users pay for it

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several unrelated types for corrupt files
        raise DataError(str(path), None, None, f"unreadable parquet file: {exc}") from None
    return list(enumerate(table.to_pylist(), start=1))


def _rows(path: Path) -> tuple[list[Row], bool]:
    """Parsed rows and whether values are typed (everything but CSV)."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _jsonl_rows(path), True
    if suffix == ".json":
        return _json_array_rows(path), True
    if suffix == ".csv":
        return _csv_rows(path), False
    if suffix == ".parquet":
        return _parquet_rows(path), True
    raise DataError(str(path), None, None, f"unsupported file type '{suffix}' (use {', '.join(MCQ_SUFFIXES)})")


# ----------------------------------------------------------------------------- field checks


def _text(row: dict, name: str, where: tuple[str, int], required: bool) -> str:
    value = row.get(name)
    if value is None:
        if required:
            raise DataError(*where, name, "missing")
        return ""
    if not isinstance(value, str):
        raise DataError(*where, name, f"must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise DataError(*where, name, "empty")
    return value.strip()


def _int(row: dict, name: str, where: tuple[str, int], typed: bool) -> int | None:
    value = row.get(name)
    if value is None:
        return None
    if typed and type(value) is int:  # bool is an int subclass and never a year
        return value
    if not typed and isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    raise DataError(*where, name, f"must be an integer, got {value!r}")


def _answer(row: dict, where: tuple[str, int], typed: bool) -> str:
    value = row.get("answer")
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataError(*where, "answer", "missing")
    if type(value) is int:
        if 1 <= value <= 5:
            return LETTERS[value - 1]
        raise DataError(*where, "answer", f"out of range: {value} (expected 1-5 or A-E)")
    if not isinstance(value, str):
        raise DataError(*where, "answer", f"must be an integer 1-5 or a letter A-E, got {type(value).__name__}")
    value = value.strip()
    if value in LETTERS:
        return value
    if value.isdigit():
        if typed:  # a quoted number in JSON usually means a broken export; refuse to guess
            raise DataError(*where, "answer", f"must be an integer, got the string {value!r}")
        if 1 <= int(value) <= 5:
            return LETTERS[int(value) - 1]
    raise DataError(*where, "answer", f"out of range: {value!r} (expected 1-5 or A-E)")


def _record_id(row: dict, where: tuple[str, int], exam: str, year, q_number, fallback: str) -> str:
    value = row.get("id")
    if value is not None:
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise DataError(*where, "id", f"must be a string, got {type(value).__name__}")
        if str(value).strip():
            return str(value).strip()
    if year is not None and q_number is not None:
        # The doctor exam restarts q_number in each period, so keep the period when given.
        period = row.get("period")
        middle = f"{year}-{period}" if period not in (None, "") else f"{year}"
        return f"{exam or 'q'}-{middle}-{q_number}"
    return fallback


def _to_mcq(
    row: Any, path: Path | str, line: int, typed: bool, exam_forced: str, fallback_id: str, exam_default: str = ""
) -> MCQ:
    where = (str(path), line)
    if not isinstance(row, dict):
        raise DataError(*where, None, f"expected a JSON object, got {type(row).__name__}")
    question = _text(row, "question", where, required=True)
    if len(question) > MAX_QUESTION_CHARS:
        raise DataError(*where, "question", f"longer than {MAX_QUESTION_CHARS} characters")
    options = tuple(_text(row, letter, where, required=True) for letter in LETTERS)
    answer = _answer(row, where, typed)
    exam = exam_forced or _text(row, "exam_type", where, required=False) or exam_default
    year = _int(row, "year", where, typed)
    q_number = _int(row, "q_number", where, typed)
    return MCQ(
        id=_record_id(row, where, exam, year, q_number, fallback_id),
        question=question,
        options=options,  # type: ignore[arg-type]
        answer=answer,
        exam_type=exam,
        subject=_text(row, "subject", where, required=False),
        year=year,
        q_number=q_number,
        cot=_text(row, "cot", where, required=False),
        source=f"{path}:{line}",
    )


# ----------------------------------------------------------------------------- MCQ loading


def _load_mcq_file(path: Path, exam_forced: str, exam_filter: str | None) -> list[MCQ]:
    rows, typed = _rows(path)
    if not rows:
        raise DataError(str(path), None, None, "no records")
    # Files inside an exam folder share stems (doctor/test, nurse/test): keep fallback ids apart.
    stem = f"{exam_forced}-{path.stem}" if exam_forced else path.stem
    out = []
    for line, row in rows:
        mcq = _to_mcq(row, path, line, typed, exam_forced, f"{stem}-{line}", exam_filter or "")
        if not exam_filter or mcq.exam_type == exam_filter:
            out.append(mcq)
    return out


def _split_file(folder: Path, split: str) -> Path | None:
    found = [folder / f"{split}{suffix}" for suffix in MCQ_SUFFIXES if (folder / f"{split}{suffix}").is_file()]
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise DataError(str(folder), None, None, f"several files for split '{split}': {names}")
    return found[0] if found else None


def _load_directory(root: Path, split: str | None, exam_type: str | None) -> list[MCQ]:
    if not split:
        raise ValueError(f"{root} is a directory: pass split= (one of {', '.join(SPLITS)})")
    exam_dirs = [e for e in EXAM_TYPES if (root / e).is_dir()]
    if exam_dirs:
        wanted = [exam_type] if exam_type else exam_dirs
        out = []
        for exam in wanted:
            file = _split_file(root / exam, split)
            if file is None:
                if exam_type:
                    raise DataError(str(root / exam), None, None, f"no '{split}' file")
                continue  # an exam folder may legitimately lack e.g. a fewshot split
            out.extend(_load_mcq_file(file, exam, None))
        if not out and not exam_type:
            raise DataError(str(root), None, None, f"no '{split}' file in any exam folder")
        return out
    file = _split_file(root, split)
    if file is None:
        raise DataError(str(root), None, None, f"no '{split}' file ({'/'.join(MCQ_SUFFIXES)})")
    return _load_mcq_file(file, "", exam_type)


def _load_hub(dataset_id: str, split: str | None, exam_type: str | None) -> list[MCQ]:
    if not split:
        raise ValueError(f"loading {dataset_id} from the hub needs split= (one of {', '.join(SPLITS)})")
    import datasets  # heavy import; only hub users need it

    out = []
    for config in [exam_type] if exam_type else list(EXAM_TYPES):
        name = f"{dataset_id}/{config}/{split}"
        try:
            rows = datasets.load_dataset(dataset_id, config, split=split)
        except Exception as exc:  # network, auth and missing-config errors all land here
            raise DataError(name, None, None, f"could not load from the Hugging Face hub: {exc}") from exc
        for index, row in enumerate(rows, start=1):
            out.append(_to_mcq(dict(row), name, index, True, config, f"{config}-{split}-{index}"))
    return out


def load_mcq(source: str | Path, split: str | None = None, exam_type: str | None = None) -> list[MCQ]:
    """Load and validate KorMedMCQA-style questions from a file, a split directory or the hub.

    `split` picks the file in a directory (required there and for the hub; ignored for a file).
    For a single file, `exam_type` keeps only matching records and fills it in where absent.
    """
    if exam_type is not None and exam_type not in EXAM_TYPES:
        raise ValueError(f"exam_type must be one of {', '.join(EXAM_TYPES)}, got {exam_type!r}")
    path = Path(source)
    if path.is_dir():
        records = _load_directory(path, split, exam_type)
    elif path.is_file():
        records = _load_mcq_file(path, "", exam_type)
    elif isinstance(source, str) and _HUB_ID.match(source) and path.suffix.lower() not in MCQ_SUFFIXES:
        records = _load_hub(source, split, exam_type)
    else:
        raise DataError(str(source), None, None, "no such file or directory")
    first_seen: dict[str, str] = {}
    for mcq in records:
        if mcq.id in first_seen:
            path_, _, line = mcq.source.rpartition(":")
            raise DataError(path_, int(line), "id", f"duplicate id '{mcq.id}' (first at {first_seen[mcq.id]})")
        first_seen[mcq.id] = mcq.source
    return records


# ----------------------------------------------------------------------------- other inputs


def _object_rows(path: Path, jsonl: bool) -> list[Row]:
    """Rows of a .jsonl file or a .json array, each checked to be an object."""
    rows = _jsonl_rows(path) if jsonl else _json_array_rows(path)
    for line, row in rows:
        if not isinstance(row, dict):
            raise DataError(str(path), line, None, f"expected a JSON object, got {type(row).__name__}")
    return rows


def load_dictionary(*paths: str | Path) -> list[DictEntry]:
    """Load medical terms and symbols; a term defined twice (in any file) is an error."""
    entries: list[DictEntry] = []
    first_seen: dict[str, str] = {}
    for path in map(Path, paths):
        rows = _object_rows(path, jsonl=path.suffix.lower() == ".jsonl")
        if not rows:
            raise DataError(str(path), None, None, "no records")
        for line, row in rows:
            where = (str(path), line)
            term = _text(row, "term", where, required=True)
            definition = _text(row, "definition", where, required=True)
            category = _text(row, "category", where, required=False)
            if term in first_seen:
                raise DataError(*where, "term", f"duplicate term '{term}' (first at {first_seen[term]})")
            first_seen[term] = f"{path}:{line}"
            kind = "symbol" if category == "symbol" else "term"
            entries.append(DictEntry(term, definition, kind, source=f"{path}:{line}"))
    return entries


def read_text_corpus(path: str | Path) -> list[str]:
    """Non-empty stripped lines of a .txt file, or of every .txt file in a directory (by name)."""
    path = Path(path)
    files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".txt" and p.is_file()) if path.is_dir() else [path]
    if not files:
        raise DataError(str(path), None, None, "no .txt files")
    paragraphs = []
    for file in files:
        paragraphs.extend(line.strip() for line in _read_text(file).split("\n") if line.strip())
    return paragraphs


def read_jsonl(path: str | Path, allow_empty: bool = False) -> list[dict]:
    """Objects of a JSONL file (blank lines skipped); errors name the file and line."""
    path = Path(path)
    rows = _object_rows(path, jsonl=True)
    if not rows and not allow_empty:
        raise DataError(str(path), None, None, "no records")
    return [row for _, row in rows]


# Writers live with the other run-output helpers; re-exported because callers read and write here.
from kormedqa.runs import write_json_atomic, write_jsonl_atomic  # noqa: E402,F401
