"""Option-order augmentation: training questions again with their options rotated.

A small model fine-tuned on a few hundred questions learns the letters' base rates before it
learns which letter holds the option its rationale named (experiments/learning.py measures both).
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


def question_id(row_id: str) -> str:
    """The id of the question a (possibly rotated) row came from: `q1~rot3` -> `q1`."""
    return row_id.split("~rot", 1)[0]


def rotation_batches(mcq_rows: Sequence[dict], rehearsal: Sequence[dict], batch_size: int, seed: int) -> list[dict]:
    """MCQ rows in training order with each question's rotated copies side by side, so that a batch
    of `batch_size` (a multiple of the copies per question) holds whole questions; rehearsal rows
    come as whole batches spread evenly among the MCQ batches.

    Within such a batch the questions, options and rationales of the copies are the same and only
    the answer's letter differs, so a letter prior gains nothing and only reading the letter off the
    option list lowers the loss. Shuffled randomly the copies land in different batches and the
    prior keeps its pull (docs/decisions.md, "Rotations in one batch").

    `mcq_rows`: rows in `option_rotations` order (a question, then its rotated copies; ids as
    `rotate_options` writes them). Returns every row of both inputs once, in the order to train
    them (`kormedqa train`'s keep_order). Raises ValueError for batch_size < 1.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    groups: list[list[dict]] = []
    for row in mcq_rows:
        if groups and question_id(groups[-1][0]["id"]) == question_id(row["id"]):
            groups[-1].append(row)
        else:
            groups.append([row])
    rng = random.Random(seed)
    rng.shuffle(groups)
    flat = [row for group in groups for row in group]
    mcq_batches = [flat[i : i + batch_size] for i in range(0, len(flat), batch_size)]
    extra = list(rehearsal)
    rng.shuffle(extra)
    extra_batches = [extra[i : i + batch_size] for i in range(0, len(extra), batch_size)]
    # Rehearsal batch j goes after MCQ batch round((j + 1) * M / (R + 1)): evenly spread, none first.
    after = {}
    for j, batch in enumerate(extra_batches):
        after.setdefault(round((j + 1) * len(mcq_batches) / (len(extra_batches) + 1)), []).append(batch)
    ordered: list[dict] = []
    for i in range(len(mcq_batches) + 1):
        for batch in after.get(i, []):
            ordered.extend(batch)
        if i < len(mcq_batches):
            ordered.extend(mcq_batches[i])
    return ordered
