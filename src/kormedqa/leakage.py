"""Train/evaluation overlap: exact and near-duplicate questions.

Licensing-exam questions are often reused across years with cosmetic edits
(spacing, punctuation, full-width characters), so questions are compared after
normalisation, and near duplicates by character 5-gram Jaccard similarity.
"""
from __future__ import annotations

import math
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from kormedqa.records import MCQ
from kormedqa.text import normalize_text


def normalize_question(text: str) -> str:
    """The comparison key: the load normal form, then NFKC and lowercase, without whitespace,
    punctuation, symbols and invisible (format/control) characters.

    NFKC is right here and not at load: this key only decides "same question?", so '℃' equal to
    '°C' is wanted, while the text the model sees keeps '℃'. Starting from `normalize_text`
    keeps the key equal to what the readers produce for any input (a question built in code
    included), and dropping category C removes zero-width characters NFKC keeps.
    """
    text = unicodedata.normalize("NFKC", normalize_text(text)).lower()
    return "".join(c for c in text if not c.isspace() and unicodedata.category(c)[0] not in "PSC")


def char_ngrams(text: str, n: int = 5) -> set[str]:
    """Character n-grams of the normalised text; a text shorter than n is its own single gram."""
    norm = normalize_question(text)
    if len(norm) < n:
        return {norm}
    return {norm[i : i + n] for i in range(len(norm) - n + 1)}


@dataclass
class OverlapReport:
    """Training questions that overlap the evaluation set: exact pairs (train id, eval id) and
    near-duplicate triples (train id, eval id, character 5-gram Jaccard >= `near_threshold`).
    """

    exact: list[tuple[str, str]] = field(default_factory=list)  # (train id, eval id)
    near: list[tuple[str, str, float]] = field(default_factory=list)  # (train id, eval id, jaccard)
    near_threshold: float = 0.9

    @property
    def count(self) -> int:
        """Distinct training questions that overlap the evaluation set."""
        return len({pair[0] for pair in self.exact} | {triple[0] for triple in self.near})

    def to_dict(self) -> dict:
        """JSON-ready form: {count, near_threshold, exact: [{train_id, eval_id}], near: [{..., similarity}]}."""
        return {
            "count": self.count,
            "near_threshold": self.near_threshold,
            "exact": [{"train_id": t, "eval_id": e} for t, e in self.exact],
            "near": [{"train_id": t, "eval_id": e, "similarity": round(s, 4)} for t, e, s in self.near],
        }


def _prefix_length(size: int, threshold: float) -> int:
    # Prefix filtering (Chaudhuri et al. 2006; Bayardo et al. 2007): two sets with
    # Jaccard >= t must share a gram among the first |x| - ceil(t|x|) + 1 grams of each,
    # under one global order. The epsilon keeps float rounding from shortening the prefix.
    return min(size, size - math.ceil(threshold * size - 1e-9) + 1)


def find_overlap(train: list[MCQ], evaluation: list[MCQ], near_threshold: float = 0.9) -> OverlapReport:
    """Exact (normalised question equal) and near (5-gram Jaccard >= threshold) train/eval pairs."""
    if not 0 < near_threshold <= 1:
        raise ValueError(f"near_threshold must be in (0, 1], got {near_threshold}")
    report = OverlapReport(near_threshold=near_threshold)

    eval_norm = [normalize_question(m.question) for m in evaluation]
    by_text: dict[str, list[int]] = defaultdict(list)
    for j, norm in enumerate(eval_norm):
        if norm:  # a question of only punctuation would "match" every other such question
            by_text[norm].append(j)

    train_grams = [char_ngrams(m.question) for m in train]
    eval_grams = [char_ngrams(m.question) for m in evaluation]
    # Rare grams first, so prefixes hold the selective grams and template phrases
    # ("다음 중 ... 옳은 것은") shared by every question rarely enter the index.
    frequency = Counter(g for grams in train_grams + eval_grams for g in grams)

    def ordered(grams: set[str]) -> list[str]:
        return sorted(grams, key=lambda g: (frequency[g], g))

    index: dict[str, list[int]] = defaultdict(list)
    for j, grams in enumerate(eval_grams):
        if eval_norm[j]:
            for g in ordered(grams)[: _prefix_length(len(grams), near_threshold)]:
                index[g].append(j)

    for i, mcq in enumerate(train):
        norm = normalize_question(mcq.question)
        if not norm:
            continue
        exact = set(by_text.get(norm, ()))
        report.exact.extend((mcq.id, evaluation[j].id) for j in sorted(exact))
        grams = train_grams[i]
        candidates = {j for g in ordered(grams)[: _prefix_length(len(grams), near_threshold)] for j in index.get(g, ())}
        for j in sorted(candidates - exact):
            other = eval_grams[j]
            # Cheap size bound before the set intersection: J <= min/max.
            if min(len(grams), len(other)) < near_threshold * max(len(grams), len(other)) - 1e-9:
                continue
            shared = len(grams & other)
            similarity = shared / (len(grams) + len(other) - shared)
            if similarity >= near_threshold:
                report.near.append((mcq.id, evaluation[j].id, similarity))
    return report
