"""Option-order augmentation: training questions again with their options rotated.

A small model fine-tuned on a few hundred questions learns the letters' base rates before it
learns which letter holds the option its rationale named (bench/learning.py measures both).
Showing the same question with the answer at other letters makes the letter depend on the
prompt's option list instead of on position; the content (question, options, rationale) stays
the same. Used for training rows only, never on an evaluation split.
"""
from __future__ import annotations

import random
from dataclasses import replace
from typing import Sequence

from .records import LETTERS, MCQ


def rotate_options(mcq: MCQ, shift: int) -> MCQ:
    """`mcq` with option i moved to position (i + shift) % 5 and `answer` following its option.

    The id gets a `~rot{shift}` suffix so rows stay distinct; shift 0 returns `mcq` unchanged.
    Raises ValueError for a question with a written rationale (`cot`): its text names letters,
    which a rotation would contradict.
    """
    shift %= len(LETTERS)
    if shift == 0:
        return mcq
    if mcq.cot.strip():
        raise ValueError(f"{mcq.id}: a question with a written rationale cannot be rotated (it names letters)")
    n = len(LETTERS)
    options = [""] * n
    for i, text in enumerate(mcq.options):
        options[(i + shift) % n] = text
    return replace(mcq, id=f"{mcq.id}~rot{shift}", options=tuple(options),
                   answer=LETTERS[(mcq.answer_index + shift) % n])


def option_rotations(mcqs: Sequence[MCQ], copies: int, seed: int) -> list[MCQ]:
    """Each question as given, then `copies - 1` rotations of it by distinct non-zero shifts drawn
    with `random.Random(seed)` (so the answer sits at `copies` different letters, at most 5).

    Returns a list of `len(mcqs) * copies` records (questions with a written rationale are kept
    once, unrotated). `copies=1` returns the questions unchanged. Raises ValueError for copies < 1
    or > 5.
    """
    if not 1 <= copies <= len(LETTERS):
        raise ValueError(f"copies must be 1-{len(LETTERS)}, got {copies}")
    rng = random.Random(seed)
    out: list[MCQ] = []
    for mcq in mcqs:
        out.append(mcq)
        if copies > 1 and not mcq.cot.strip():
            out.extend(rotate_options(mcq, s) for s in rng.sample(range(1, len(LETTERS)), copies - 1))
    return out
