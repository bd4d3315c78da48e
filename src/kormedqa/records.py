"""The only shapes data takes inside kormedqa.

Everything read from disk or the hub is validated into these records by
`kormedqa.data`; everything downstream (formats, training, evaluation) takes
them and nothing else, so a malformed file can only fail in one place.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import DataError  # noqa: F401  (its old home; raised by the loaders)

LETTERS = ("A", "B", "C", "D", "E")
EXAM_TYPES = ("doctor", "nurse", "pharm", "dentist")


@dataclass(frozen=True)
class MCQ:
    """One KorMedMCQA question. `answer` is the letter; the public schema's 1-5 is converted on load."""

    id: str
    question: str
    options: tuple[str, str, str, str, str]
    answer: str
    exam_type: str = ""
    subject: str = ""
    year: int | None = None
    q_number: int | None = None
    cot: str = ""
    source: str = ""  # "path:line" the record was read from, for error messages downstream

    @property
    def answer_index(self) -> int:
        """The answer as an index into `options` (A -> 0 ... E -> 4)."""
        return LETTERS.index(self.answer)


@dataclass(frozen=True)
class DictEntry:
    """A medical dictionary term or a character symbol with its definition.

    `category` is the dictionary row's category as read (doctor, nurse, pharm, dentist, symbol, ...;
    "" for a row without one); `is_symbol` is true for category "symbol", every other entry is a term.
    """

    term: str
    definition: str
    category: str = ""
    source: str = ""

    @property
    def is_symbol(self) -> bool:
        """True for a character symbol (category "symbol"); any other category, or none, is a term."""
        return self.category == "symbol"
