"""One raw row -> one validated `MCQ`: the field checks every MCQ reader shares.

The file readers (`kormedqa.data`) and the `datasets` readers (`kormedqa.hub`) both hand their
rows here, so a record is checked the same way whichever way it arrived. Every failure is a
`DataError` naming the file (or hub name), the line (row) and the field.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .records import LETTERS, MCQ, DataError

MAX_QUESTION_CHARS = 20000


def text_field(row: dict, name: str, where: tuple[str, int], required: bool) -> str:
    """`row[name]` stripped; "" when absent and not `required`.

    `where` is (path, line) for the error. Raises DataError when the value is missing or blank
    and `required`, or is not a string.
    """
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


def row_to_mcq(
    row: Any, path: Path | str, line: int, typed: bool, exam_forced: str, fallback_id: str, exam_default: str = ""
) -> MCQ:
    """Validate one parsed row (a dict of the KorMedMCQA columns) into an `MCQ`.

    `path`/`line` locate the row for errors and become `MCQ.source` ("path:line"). `typed` is
    False for CSV, whose cells are all strings ("3" is then an answer or year, not an error).
    `exam_forced` overrides the row's exam_type (a folder or config name); `exam_default` fills
    it where the row has none. `fallback_id` is the id when the row has neither `id` nor
    year + q_number. Raises DataError naming path, line and field.
    """
    where = (str(path), line)
    if not isinstance(row, dict):
        raise DataError(*where, None, f"expected a JSON object, got {type(row).__name__}")
    question = text_field(row, "question", where, required=True)
    if len(question) > MAX_QUESTION_CHARS:
        raise DataError(*where, "question", f"longer than {MAX_QUESTION_CHARS} characters")
    options = tuple(text_field(row, letter, where, required=True) for letter in LETTERS)
    answer = _answer(row, where, typed)
    exam = exam_forced or text_field(row, "exam_type", where, required=False) or exam_default
    year = _int(row, "year", where, typed)
    q_number = _int(row, "q_number", where, typed)
    return MCQ(
        id=_record_id(row, where, exam, year, q_number, fallback_id),
        question=question,
        options=options,  # type: ignore[arg-type]
        answer=answer,
        exam_type=exam,
        subject=text_field(row, "subject", where, required=False),
        year=year,
        q_number=q_number,
        cot=text_field(row, "cot", where, required=False),
        source=f"{path}:{line}",
    )

