"""The mistakes a user can fix, as one hierarchy that `kormedqa.cli.main` prints as one line, exit 2.

Everything here is raised before an output is claimed (or, for `OutputExistsError`, instead of
claiming it), so catching `UserError` never hides half-written work. The old import places keep
working: `records.DataError`, `modeling.ModelError`, `prepare.LeakageError`, `fsio.OutputExistsError`,
`cli.UsageError` are these classes. Each also derives from the builtin its callers used to catch
(ValueError, RuntimeError, FileExistsError).
"""
from __future__ import annotations

from dataclasses import dataclass


class UserError(Exception):
    """Base: a mistake in the command line, the config, the input files or the model path."""


class UsageError(UserError, ValueError):
    """A flag, config value or combination of them that cannot work (unknown flag, bad choice, range)."""


@dataclass
class DataError(UserError, ValueError):
    """A malformed input record. The message names file, line and field so users can fix it."""

    path: str
    line: int | None
    field: str | None
    reason: str

    def __str__(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        what = f" field '{self.field}'" if self.field else ""
        return f"{where}:{what} {self.reason}"


class LeakageError(UserError, ValueError):
    """Training questions that also appear in the evaluation set (pass --allow-overlap to accept)."""


class ModelError(UserError, RuntimeError):
    """A model, adapter base or tokenizer that cannot be used; raised before any work starts."""


class OutputExistsError(UserError, FileExistsError):
    """The output exists and neither --resume nor --overwrite was given."""


def one_line(err: BaseException) -> str:
    """The error's message on one line (a multi-line message would break `grep`-able logs)."""
    return " ".join(str(err).split()) or type(err).__name__
