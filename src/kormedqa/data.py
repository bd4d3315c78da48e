"""Readers: the only place kormedqa reads input files (MCQs, dictionaries, CPT text, prepared JSONL).

Every reader turns raw rows into `MCQ` / `DictEntry` records or raises `DataError`
naming the file, the line (JSONL/CSV line, JSON array element, parquet row) and the
field, so a bad record is fixed at its source instead of surfacing as a KeyError
deep inside training. The field checks of an MCQ row live in `kormedqa.validate`; local hub
copies and hub ids are read through `datasets` in `kormedqa.hub`; the atomic writers live in
`kormedqa.fsio`.

Every string a reader returns (MCQ files of every format, local hub copies and hub ids,
dictionaries, CPT text, rationale and prepared JSONL) is put in `kormedqa.text`'s normal form
here, once, as it is parsed: nothing downstream sees NFD Hangul, fullwidth letters, invisible
characters or CR line ends.
"""
from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

from kormedqa.errors import UsageError
from kormedqa.hub import card_configs, load_card, load_hub
from kormedqa.records import EXAM_TYPES, MCQ, DataError, DictEntry
from kormedqa.text import normalize_text, normalize_value, split_lines
from kormedqa.validate import MAX_QUESTION_CHARS, row_to_mcq, text_field  # noqa: F401  (MAX_...: its old home)

SPLITS = ("train", "dev", "test", "fewshot")
MCQ_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")  # Notepad's and Excel's "Unicode" text
# A hub id is "owner/name"; anything with a file extension or more slashes is a path typo.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

Row = tuple[int, Any]  # (1-based line / element / row number, parsed value)


# ----------------------------------------------------------------------------- raw readers


def _read_text(path: Path) -> str:
    """Decode a whole file as UTF-8, reporting the line of the first bad byte.

    A path that is a folder, missing or unreadable is a DataError naming it (one line, exit 2 in
    the CLI), whichever command's input it is.
    """
    try:
        raw = path.read_bytes()
    except IsADirectoryError:
        raise DataError(str(path), None, None, "is a folder; a file is expected here") from None
    except FileNotFoundError:
        raise DataError(str(path), None, None, "no such file") from None
    except OSError as err:  # permission denied, a broken link, a device that fails
        raise DataError(str(path), None, None, f"cannot be read: {err.strerror or err}") from None
    if raw.startswith(_UTF16_BOMS):
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError:
            raise DataError(str(path), None, None, "starts with a UTF-16 byte order mark but is not UTF-16") from None
    if raw.startswith(_BOM):  # Excel and Notepad add one; it is not part of the data
        raw = raw[len(_BOM):]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            str(path), line, None,
            f"not valid UTF-8 (byte 0x{raw[exc.start]:02x}); save it as UTF-8 (Excel: 'CSV UTF-8')",
        ) from None


def _jsonl_rows(path: Path) -> list[Row]:
    rows = []
    for number, line in enumerate(split_lines(_read_text(path)), start=1):
        line = line.lstrip("\ufeff")  # files joined with `cat` keep each one's BOM
        if not line.strip():
            continue
        try:
            rows.append((number, normalize_value(json.loads(line))))
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
    return list(enumerate(normalize_value(value), start=1))


def _csv_rows(path: Path) -> list[Row]:
    # newline="" lets the csv module handle CRLF and quoted multi-line cells itself.
    reader = csv.reader(io.StringIO(_read_text(path), newline=""))
    try:
        header = next(reader)
    except StopIteration:
        return []
    except csv.Error as exc:
        raise DataError(str(path), reader.line_num, None, f"invalid CSV: {exc}") from None
    header = [normalize_text(name).strip() for name in header]
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
        cells = [normalize_text(cell) for cell in cells]
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
    return list(enumerate(normalize_value(table.to_pylist()), start=1))


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


# ----------------------------------------------------------------------------- MCQ loading

# A hub shard: "test-00000-of-00001.parquet", or with the hash `push_to_hub` adds on re-upload,
# "train-00000-of-00001-e92541767961eccb.parquet".
_SHARD = re.compile(r"-(\d{5})-of-(\d{5})(?:-[0-9a-f]+)?")


def _exam_from_path(path: Path) -> str:
    """The exam a file belongs to by its place: `doctor/test.csv`, `data/doctor-test.csv`."""
    if path.parent.name in EXAM_TYPES:
        return path.parent.name
    head = path.name.split("-", 1)[0]
    return head if head in EXAM_TYPES else ""


def _load_mcq_file(path: Path, exam_forced: str, exam_filter: str | None) -> list[MCQ]:
    rows, typed = _rows(path)
    if not rows:
        raise DataError(str(path), None, None, "no records")
    # Files inside an exam folder share stems (doctor/test, nurse/test): keep fallback ids apart.
    stem = f"{exam_forced}-{path.stem}" if exam_forced else path.stem
    default = exam_filter or _exam_from_path(path)
    out = []
    for line, row in rows:
        mcq = row_to_mcq(row, path, line, typed, exam_forced, f"{stem}-{line}", default)
        if not exam_filter or mcq.exam_type == exam_filter:
            out.append(mcq)
    return out


def _split_files(folder: Path, split: str, prefix: str = "") -> list[Path]:
    """The files holding `split` in `folder`: one `<prefix><split>.<ext>`, or the hub's shards of it.

    Raises DataError when that is ambiguous: two formats of one split, or two copies of a shard
    (the hub kept `train-00000-of-00001.parquet` beside its re-upload with a hash for a while).
    """
    name = re.escape(prefix + split)
    suffixes = "|".join(re.escape(s) for s in MCQ_SUFFIXES)
    pattern = re.compile(rf"{name}(?P<shard>{_SHARD.pattern})?(?P<ext>{suffixes})", re.IGNORECASE)
    found = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    matches = [(m, p) for p in found if (m := pattern.fullmatch(p.name)) is not None]
    shards = [_SHARD.fullmatch(m["shard"]).group(1) for m, _ in matches if m["shard"]]
    one_kind = len({m["ext"].lower() for m, _ in matches}) == 1 and len({bool(m["shard"]) for m, _ in matches}) == 1
    if len(matches) > 1 and (not one_kind or not shards or len(set(shards)) < len(shards)):
        names = ", ".join(p.name for _, p in matches)
        raise DataError(str(folder), None, None, f"several files for split '{split}': {names}")
    return [p for _, p in matches]


def _load_files(files: list[Path], exam_forced: str, exam_filter: str | None) -> list[MCQ]:
    return [mcq for file in files for mcq in _load_mcq_file(file, exam_forced, exam_filter)]


def _layouts(split: str) -> str:
    return (f"expected {split}.jsonl/.json/.csv/.parquet (or its hub shards), <exam>/{split}.*, "
            f"<exam>-{split}.*, or a README.md dataset card with configs")


def _load_directory(root: Path, split: str | None, exam_type: str | None) -> list[MCQ]:
    if not split:
        raise UsageError(f"{root} is a directory: pass --split (one of {', '.join(SPLITS)})")
    configs = card_configs(root)
    if configs:
        return load_card(root, configs, split, exam_type)
    exam_dirs = [e for e in EXAM_TYPES if (root / e).is_dir()]
    if exam_dirs:
        wanted = [exam_type] if exam_type else exam_dirs
        out = []
        for exam in wanted:
            files = _split_files(root / exam, split)
            if not files:
                if exam_type:
                    raise DataError(str(root / exam), None, None, f"no '{split}' file")
                continue  # an exam folder may legitimately lack e.g. a fewshot split
            out.extend(_load_files(files, exam, None))
        if not out and not exam_type:
            raise DataError(str(root), None, None, f"no '{split}' file in any exam folder")
        return out
    files = _split_files(root, split)
    if files:
        return _load_files(files, "", exam_type)
    # The hub's older layout, data/doctor-test.csv: the exam is in the file name.
    per_exam = {exam: _split_files(root, split, f"{exam}-") for exam in ([exam_type] if exam_type else EXAM_TYPES)}
    if any(per_exam.values()):
        return [mcq for exam, found in per_exam.items() for mcq in _load_files(found, exam, None)]
    raise DataError(str(root), None, None, f"no '{split}' file ({_layouts(split)})")


def load_mcq(source: str | Path, split: str | None = None, exam_type: str | None = None) -> list[MCQ]:
    """Load and validate KorMedMCQA-style questions from a file, a folder or the hub.

    A folder is, in this order: a local copy of a hub dataset repository (a README.md whose
    `configs:` map configs to data files, read through `datasets` like a hub id); exam
    subfolders (`doctor/test.jsonl`, or the hub's `doctor/test-00000-of-00001[-<hash>].parquet`);
    one file per split (`test.csv`); or the hub's older `<exam>-<split>.csv` files (`data/`).
    `split` picks the files in a folder (required there and for the hub; ignored for a file).
    Exam types come from config, folder or file names where the rows have none.
    For a single file, `exam_type` keeps only matching records and fills it in where absent.
    Text is normalised once here (`kormedqa.text.normalize_text`).

    Returns the records in file and row order, each with `source` "path:line". Raises DataError
    naming file, line (row) and field (also for a duplicate id, or a source that does not exist);
    UsageError (a ValueError) for a bad `exam_type` or a missing `split`.
    """
    if exam_type is not None and exam_type not in EXAM_TYPES:
        raise UsageError(f"--exam-type must be one of {', '.join(EXAM_TYPES)}, got {exam_type!r}")
    path = Path(source)
    if path.is_dir():
        records = _load_directory(path, split, exam_type)
    elif path.is_file():
        records = _load_mcq_file(path, "", exam_type)
    elif isinstance(source, str) and _HUB_ID.match(source) and path.suffix.lower() not in MCQ_SUFFIXES:
        if not split:
            raise UsageError(f"loading {source} from the hub needs --split (one of {', '.join(SPLITS)})")
        records = load_hub(source, split, exam_type)
    else:
        raise DataError(str(source), None, None, "no such file or directory")
    first_seen: dict[str, str] = {}
    for mcq in records:
        if mcq.id in first_seen:
            path_, _, line = mcq.source.rpartition(":")
            raise DataError(path_, int(line), "id", f"duplicate id '{mcq.id}' (first at {first_seen[mcq.id]})")
        first_seen[mcq.id] = mcq.source
    return records


def load_mcq_sources(sources, split: str | None) -> list[MCQ]:
    """The questions of every source in `sources` (files, folders, hub ids; `load_mcq` each), in order.

    What `prepare mcq` trains on and `rationales` writes for: the same list, so both choose the
    same questions for the detailed format. Raises what `load_mcq` raises, and DataError (file,
    line, "id") for an id that two sources share: rationales, option rotations and records are
    keyed by id.
    """
    out: list[MCQ] = []
    first_seen: dict[str, str] = {}
    for source in sources:
        for mcq in load_mcq(source, split=split):
            if mcq.id in first_seen:
                path_, _, line = mcq.source.rpartition(":")
                raise DataError(path_, int(line) if line.isdigit() else None, "id",
                                f"duplicate id '{mcq.id}' (first at {first_seen[mcq.id]})")
            first_seen[mcq.id] = mcq.source
            out.append(mcq)
    return out


# ----------------------------------------------------------------------------- other inputs


def _object_rows(path: Path, jsonl: bool) -> list[Row]:
    """Rows of a .jsonl file or a .json array, each checked to be an object."""
    rows = _jsonl_rows(path) if jsonl else _json_array_rows(path)
    for line, row in rows:
        if not isinstance(row, dict):
            raise DataError(str(path), line, None, f"expected a JSON object, got {type(row).__name__}")
    return rows


def load_dictionary(*paths: str | Path) -> list[DictEntry]:
    """Load medical terms and symbols from .json arrays or .jsonl files of {term, definition[, category]}.

    Returns one `DictEntry` per row, files in the order given, with the row's `category` as read
    ("" without one); category "symbol" makes a symbol entry (`is_symbol`), anything else a term.
    Raises DataError naming file, line and field for a missing or empty term/definition, a file
    without records, or a term defined twice (in any file).
    """
    entries: list[DictEntry] = []
    first_seen: dict[str, str] = {}
    for path in map(Path, paths):
        rows = _object_rows(path, jsonl=path.suffix.lower() == ".jsonl")
        if not rows:
            raise DataError(str(path), None, None, "no records")
        for line, row in rows:
            where = (str(path), line)
            term = text_field(row, "term", where, required=True)
            definition = text_field(row, "definition", where, required=True)
            category = text_field(row, "category", where, required=False)
            if term in first_seen:
                raise DataError(*where, "term", f"duplicate term '{term}' (first at {first_seen[term]})")
            first_seen[term] = f"{path}:{line}"
            entries.append(DictEntry(term, definition, category, source=f"{path}:{line}"))
    return entries


def read_text_corpus(path: str | Path) -> list[str]:
    """Non-empty stripped lines of a .txt file, or of every .txt file in a directory (by name), normalised.

    Raises DataError for a folder without .txt files or a file that is not UTF-8 (naming the line).
    """
    path = Path(path)
    files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".txt" and p.is_file()) if path.is_dir() else [path]
    if not files:
        raise DataError(str(path), None, None, "no .txt files")
    paragraphs = []
    for file in files:
        # Plain text has no strings to protect, so U+2028 and the other line ends split too.
        paragraphs.extend(line.strip() for line in normalize_text(_read_text(file)).split("\n") if line.strip())
    return paragraphs


def read_jsonl(path: str | Path, allow_empty: bool = False) -> list[dict]:
    """Objects (dicts) of a JSONL file, blank lines skipped, strings normalised.

    Raises DataError naming file and line for invalid JSON or a line that is not an object, and
    for a file without records unless `allow_empty`.
    """
    path = Path(path)
    rows = _object_rows(path, jsonl=True)
    if not rows and not allow_empty:
        raise DataError(str(path), None, None, "no records")
    return [row for _, row in rows]

