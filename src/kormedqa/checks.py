"""Validating a parsed config: choices and ranges, at parse time, before anything is written.

argparse (through HfArgumentParser/TrlParser) already refuses a bad choice typed as a flag when
the field is a `Literal` or has `metadata={"choices": ...}`; it does not check values that come
from `--config file.yaml` or from code, nor ranges. `check_config` does both, from the same
declarations, and is called by each config's `__post_init__`:

    @dataclass
    class SomeConfig(RunArgs):                         # argument groups from kormedqa.config
        RANGES: ClassVar[dict] = {"batch_size": Range(low=1)}   # merged with the groups' RANGES
        batch_size: int = arg(8, "questions per batch")
        mode: str = arg("fast", "fast or slow", choices=["fast", "slow"])
        def __post_init__(self): check_config(self)

Every failure is a `UsageError` whose message names the flag as typed (`--batch-size`).
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

from .errors import UsageError

DEVICE_HINT = "auto, cpu, cuda, cuda:N or mps"


@dataclass(frozen=True)
class Range:
    """Accepted values of a number: [low, high] with either end open or unbounded; `also` are extra values."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    also: tuple = ()

    def accepts(self, value) -> bool:
        """Whether the number `value` lies in the range (or is one of `also`)."""
        if value in self.also:
            return True
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            return False
        return True

    def describe(self) -> str:
        """The range in words for an error message: 'in [0, 1)', '>= 1 or -1'."""
        if self.low is not None and self.high is not None:
            text = f"in {'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}{')' if self.high_open else ']'}"
        elif self.low is not None:
            text = f"{'>' if self.low_open else '>='} {_num(self.low)}"
        elif self.high is not None:
            text = f"{'<' if self.high_open else '<='} {_num(self.high)}"
        else:
            text = "any number"
        return text + "".join(f" or {_num(v)}" for v in self.also)


def _num(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def flag(name: str) -> str:
    """A field name as the flag a user types: 'batch_size' -> '--batch-size'."""
    return "--" + name.replace("_", "-")


def field_choices(cfg_cls, f: dataclasses.Field) -> tuple | None:
    """The choices a field declares: its `Literal[...]` type or `metadata["choices"]`."""
    if "choices" in f.metadata:
        return tuple(f.metadata["choices"])
    hint = typing.get_type_hints(cfg_cls).get(f.name)
    for candidate in (hint, *typing.get_args(hint)):
        if typing.get_origin(candidate) is Literal:
            return typing.get_args(candidate)
    return None


def config_ranges(cfg_cls) -> dict[str, Range]:
    """The `RANGES` of a config class and of every argument group it composes (the subclass wins)."""
    ranges: dict[str, Range] = {}
    for klass in reversed(cfg_cls.__mro__):
        ranges.update(vars(klass).get("RANGES", {}))
    return ranges


def check_config(cfg) -> None:
    """Raise UsageError for the first field outside its choices or range (None means unset: skipped).

    `cfg` is a dataclass instance; choices come from `field_choices`, ranges from `config_ranges`,
    a field named `device` is checked by `check_device` and one named `report_to` by `parse_report_to`. Returns None when every field passes.
    """
    ranges = config_ranges(type(cfg))
    if isinstance(getattr(cfg, "report_to", None), str):
        parse_report_to(cfg.report_to)
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if value is None:
            continue
        if f.name == "device":
            check_device(value)
        choices = field_choices(type(cfg), f)
        values = value if isinstance(value, (list, tuple)) else [value]
        if choices is not None:
            for v in values:
                if v not in choices:
                    raise UsageError(f"{flag(f.name)} must be one of {', '.join(map(str, choices))}; got {v!r}")
        rng = ranges.get(f.name)
        if rng is not None:
            for v in values:
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise UsageError(f"{flag(f.name)} must be a number, got {v!r}")
                if not rng.accepts(v):
                    raise UsageError(f"{flag(f.name)} must be {rng.describe()}, got {_num(v)}")


def check_device(device: str) -> None:
    """`auto`, `cpu`, `mps`, `cuda` or `cuda:N`; what torch would accept, refused early with one line."""
    base, _, index = device.partition(":")
    if base not in ("auto", "cpu", "cuda", "mps") or (index and (base != "cuda" or not index.isdigit())):
        raise UsageError(f"--device must be {DEVICE_HINT}; got {device!r}")


def parse_answer_weight(value: str | float | None) -> float | None:
    """'none' -> None (plain token mean); '2/3' or '0.667' -> a float in [0, 1]; else UsageError."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "")):
        return None
    try:
        weight = float(Fraction(value.strip())) if isinstance(value, str) else float(value)
    except (ValueError, ZeroDivisionError):
        raise UsageError(f"--answer-weight must be a number or fraction in [0, 1] or 'none', got {value!r}") from None
    if not 0.0 <= weight <= 1.0:
        raise UsageError(f"--answer-weight must lie in [0, 1] or be 'none', got {value}")
    return weight


def parse_report_to(value: str) -> tuple[str, ...]:
    """`tensorboard,wandb` -> ('tensorboard', 'wandb'); 'none' or '' -> ().

    Names are transformers' integrations (`INTEGRATION_TO_CALLBACK`: tensorboard, wandb, mlflow,
    trackio, comet_ml, ...). UsageError for an unknown name or one whose package is not installed,
    so a tracker is never silently dropped after hours of training.
    """
    names = tuple(dict.fromkeys(p.strip() for p in str(value).split(",") if p.strip() and p.strip() != "none"))
    if not names:
        return ()
    # transformers' integration table, imported here: it is heavy and only training commands need it.
    from transformers.integrations.integration_utils import (INTEGRATION_TO_CALLBACK,
                                                             get_available_reporting_integrations)

    unknown = [n for n in names if n not in INTEGRATION_TO_CALLBACK]
    if unknown:
        raise UsageError(f"--report-to takes transformers' integration names ({', '.join(INTEGRATION_TO_CALLBACK)}) "
                         f"or none; got {', '.join(unknown)}")
    available = set(get_available_reporting_integrations()) | {"tensorboard"}  # torch ships its writer
    missing = [n for n in names if n not in available]
    if missing:
        raise UsageError(f"--report-to {','.join(missing)}: not installed here (pip install {' '.join(missing)})")
    return names
