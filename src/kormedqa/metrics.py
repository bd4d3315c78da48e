"""Accuracy with intervals, per exam type, and paired significance tests."""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Iterable, Sequence

from .numerics import check_finite_number


def wilson_interval(correct: int, total: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95% Wilson score interval for a proportion; well behaved at 0%, 100% and small n."""
    if total == 0:
        return (0.0, 0.0)
    p = correct / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    # At 0 or all correct the bound is exactly 0 or 1; centre - half leaves rounding dust (1.7e-18 at 0/224).
    low = 0.0 if correct == 0 else max(0.0, centre - half)
    high = 1.0 if correct == total else min(1.0, centre + half)
    return (low, high)


def proportion(correct: int, total: int) -> dict:
    """`correct` of `total` with its Wilson interval; NonFiniteError on a NaN/inf count."""
    check_finite_number(correct, "a metric's count of correct answers")
    check_finite_number(total, "a metric's count of questions")
    low, high = wilson_interval(correct, total)
    return {
        "value": correct / total if total else 0.0,
        "correct": correct,
        "total": total,
        "ci95": [low, high],
    }


def mean_interval(values: Sequence[float], what: str = "a mean metric", z: float = 1.959963984540054) -> dict:
    """Mean with a normal-approximation 95% interval: {value, total, ci95}.

    NonFiniteError (through `finite_mean`) if any value is NaN or inf; {0.0, 0, [0, 0]} if empty.
    """
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        return {"value": 0.0, "total": 0, "ci95": [0.0, 0.0]}
    mean = finite_mean(values, what)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    half = z * sd / math.sqrt(n)
    return {"value": mean, "total": n, "ci95": [mean - half, mean + half]}


def finite_mean(values: Sequence[float], what: str) -> float:
    """Mean of `values`; NonFiniteError if any is NaN or inf, so no NaN becomes a metric. 0.0 if empty."""
    for value in values:
        check_finite_number(value, f"a value of {what}")
    return sum(values) / len(values) if values else 0.0


def accuracy_by_group(hits: Sequence[bool], groups: Sequence[str]) -> dict[str, dict]:
    """Accuracy per group (e.g. exam type) as `proportion` dicts, sorted by group name.

    `hits` and `groups` are parallel lists (ValueError if their lengths differ); an empty group
    name counts as 'unknown'.
    """
    tally: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for hit, group in zip(hits, groups, strict=True):  # parallel lists: unequal lengths are a bug, not data
        tally[group or "unknown"][0] += int(hit)
        tally[group or "unknown"][1] += 1
    return {g: proportion(c, n) for g, (c, n) in sorted(tally.items())}


def rate(preds: Sequence[dict], key: str, where=None) -> dict:
    """The share of records (dicts) holding `key` whose `key` is truthy, as `proportion`; `where`
    (record -> bool) narrows the records counted."""
    rows = [p for p in preds if key in p and (where is None or where(p))]
    return proportion(sum(bool(p[key]) for p in rows), len(rows))


def accuracy_with_groups(preds: Sequence[dict], name: str, key: str) -> dict:
    """`{name: rate of key, name_by_exam_type: the same per exam type}` over records that hold
    `exam_type` and `key` (rates as `proportion` dicts)."""
    return {name: rate(preds, key),
            f"{name}_by_exam_type": accuracy_by_group([p[key] for p in preds], [p["exam_type"] for p in preds])}


def mcnemar_exact(a_hits: Iterable[bool], b_hits: Iterable[bool]) -> dict:
    """Exact two-sided McNemar test on paired outcomes (binomial test on the discordant pairs)."""
    from scipy.stats import binomtest

    pairs = list(zip(a_hits, b_hits, strict=True))  # paired by position: callers pair by id first
    only_a = sum(1 for a, b in pairs if a and not b)
    only_b = sum(1 for a, b in pairs if b and not a)
    n = only_a + only_b
    p = 1.0 if n == 0 else float(binomtest(only_a, n, 0.5).pvalue)
    return {"only_a": only_a, "only_b": only_b, "p_value": p, "significant_at_0.05": bool(p < 0.05)}
