"""Stopping on NaN and inf before they become a pick, a logged loss or a metric.

A model that overflows (Gemma 3 in fp16, a diverging learning rate) gives NaN logits; `argmax`
over NaN returns index 0, so every question is answered "A" and the accuracy looks plausible
(case fp16_nan: 50% on two questions). Every scorer and the training loss pass their tensors
through `check_finite`, and metric writers through `check_finite_tree`.
"""
from __future__ import annotations

import math
import numbers
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch only where tensors are checked: `import kormedqa` (metrics) stays light
    import torch


class NonFiniteError(RuntimeError):
    """A model produced NaN or inf where a number was needed; nothing from it is kept as a result."""


HINT = "the model overflowed or diverged: try --precision fp32 (or a lower learning rate when training)"


def check_finite(tensor: torch.Tensor, what: str) -> torch.Tensor:
    """Return `tensor` unchanged if every element is finite; else raise NonFiniteError naming `what`.

    One reduction and one host sync; `what` says where (e.g. "letter log-probabilities").
    """
    import torch

    finite = torch.isfinite(tensor.detach())
    if bool(finite.all()):
        return tensor
    bad = tensor.detach()[~finite]
    n_nan = int(torch.isnan(bad).sum())
    raise NonFiniteError(
        f"{what}: {bad.numel()} of {tensor.numel()} values are not finite ({n_nan} NaN, {bad.numel() - n_nan} inf) "
        f"in {str(tensor.dtype).replace('torch.', '')}; {HINT}"
    )


def check_finite_number(value: float, what: str) -> float:
    """The scalar form of `check_finite`, for values already on the host."""
    if not isinstance(value, numbers.Real) or not math.isfinite(value):  # numpy scalars are Real too
        raise NonFiniteError(f"{what} is {value!r}, not a finite number; {HINT}")
    return value


def check_finite_tree(obj, what: str = "metrics") -> None:
    """Raise NonFiniteError if any float inside nested dicts/lists is NaN or inf (None is allowed)."""
    stack = [(what, obj)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, dict):
            stack.extend((f"{path}.{k}", v) for k, v in item.items())
        elif isinstance(item, (list, tuple)):
            stack.extend((f"{path}[{i}]", v) for i, v in enumerate(item))
        elif isinstance(item, float) and not math.isfinite(item):
            raise NonFiniteError(f"{path} is {item}: no NaN or inf is written as a result; {HINT}")
