#!/usr/bin/env python3
"""Generate the sample multiple-choice questions from the sample dictionary.

Reads data/sample/dictionary.json (Korean medical terms; character symbols are not
used) and writes one five-option question per term, in the public KorMedMCQA schema,
to <out-dir>/{train,dev,test}.jsonl.

Each question asks, term -> definition, which option describes the term. The options
are the Korean part of dictionary definitions (the text after the first ". "): the
term's own plus four distractors drawn from other terms of the same category. The
split (about 55/5/40 per category), the question wording, the distractors and the
answer position all come from one `random.Random(seed)`, so a seed always gives the
same files byte for byte.

Usage: python3 scripts/make_sample_mcq.py [--seed 20261125] [--dictionary PATH] [--out-dir DIR]
Standard library only.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CATEGORIES = ("doctor", "nurse", "pharm", "dentist")
SUBJECTS = {"doctor": "의학", "nurse": "간호학", "pharm": "약학", "dentist": "치의학"}
LETTERS = ("A", "B", "C", "D", "E")
DEV_FRACTION = 0.05
TEST_FRACTION = 0.40
YEAR = 2026

# Korean readings of a trailing digit/letter decide the particle after a term that does not end in Hangul.
_DIGIT_HAS_FINAL = {"0": True, "1": True, "2": False, "3": True, "4": False, "5": False,
                    "6": True, "7": True, "8": True, "9": False}
_LETTER_HAS_FINAL = set("LMNR")  # 엘, 엠, 엔, 알


def has_final_consonant(word: str) -> bool:
    """True if the word's last syllable has a final consonant (받침), as read aloud."""
    stripped = word.rstrip(" )]'\"")
    if not stripped:
        return False
    ch = stripped[-1]
    if "가" <= ch <= "힣":
        return (ord(ch) - ord("가")) % 28 != 0
    if ch.isdigit():
        return _DIGIT_HAS_FINAL[ch]
    return ch.upper() in _LETTER_HAS_FINAL


def particle(word: str, with_final: str, without_final: str) -> str:
    return word + (with_final if has_final_consonant(word) else without_final)


TEMPLATES = (
    lambda t: f"다음 중 '{t}'에 대한 설명으로 옳은 것은?",
    lambda t: f"'{t}'의 정의로 가장 적절한 것은?",
    lambda t: f"{particle(t, '이란', '란')} 무엇인가?",
    lambda t: f"다음 중 {particle(t, '을', '를')} 올바르게 설명한 것은?",
    lambda t: f"다음 중 {particle(t, '에', '에')} 해당하는 설명으로 가장 옳은 것은?",
)


def korean_part(definition: str) -> str:
    """The text after the first '. ' of an 'English name. Korean definition' string."""
    english, sep, korean = definition.partition(". ")
    if not sep or not korean.strip():
        raise ValueError(f"definition is not 'English. Korean': {definition!r}")
    return korean.strip()


def load_terms(path: Path) -> dict[str, list[tuple[str, str]]]:
    rows = json.loads(path.read_text(encoding="utf-8"))
    by_category: dict[str, list[tuple[str, str]]] = {c: [] for c in CATEGORIES}
    seen: set[str] = set()
    for i, row in enumerate(rows):
        category = row.get("category")
        if category == "symbol":
            continue
        if category not in by_category:
            raise ValueError(f"{path}: entry {i}: unknown category {category!r}")
        term = row["term"].strip()
        if term in seen:
            raise ValueError(f"{path}: entry {i}: duplicate term {term!r}")
        seen.add(term)
        by_category[category].append((term, korean_part(row["definition"])))
    return by_category


def split_sizes(n: int) -> tuple[int, int, int]:
    n_test = round(n * TEST_FRACTION)
    n_dev = max(1, round(n * DEV_FRACTION)) if n >= 10 else 0
    return n - n_test - n_dev, n_dev, n_test


def make_question(rng: random.Random, term: str, correct: str, pool: list[str]) -> tuple[str, list[str], int]:
    candidates = sorted({d for d in pool if d != correct})
    if len(candidates) < 4:
        raise ValueError(f"fewer than 4 distinct distractors for {term!r}")
    options = rng.sample(candidates, 4)
    answer_index = rng.randrange(5)
    options.insert(answer_index, correct)
    question = rng.choice(TEMPLATES)(term)
    return question, options, answer_index + 1


def generate(dictionary: Path, seed: int) -> dict[str, list[dict]]:
    rng = random.Random(seed)
    by_category = load_terms(dictionary)
    splits: dict[str, list[dict]] = {"train": [], "dev": [], "test": []}
    for category in CATEGORIES:
        entries = by_category[category]
        if not entries:
            continue
        order = list(range(len(entries)))
        rng.shuffle(order)
        n_train, n_dev, _ = split_sizes(len(entries))
        split_of = {}
        for rank, idx in enumerate(order):
            split_of[idx] = "train" if rank < n_train else "dev" if rank < n_train + n_dev else "test"
        pool = [definition for _, definition in entries]
        for idx, (term, correct) in enumerate(entries):
            question, options, answer = make_question(rng, term, correct, pool)
            number = idx + 1
            record = {"id": f"sample-{category}-{number:04d}", "question": question}
            record.update(zip(LETTERS, options))
            record.update({"answer": answer, "exam_type": category, "subject": SUBJECTS[category],
                           "year": YEAR, "q_number": number})
            splits[split_of[idx]].append(record)
    return splits


def write_jsonl_atomic(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=20261125, help="random seed (default: 20261125)")
    parser.add_argument("--dictionary", type=Path, default=ROOT / "data/sample/dictionary.json",
                        help="dictionary JSON (default: data/sample/dictionary.json)")
    parser.add_argument("--out-dir", type=Path, default=Path("data/sample/mcq"),
                        help="output folder, relative to the project root unless absolute (default: data/sample/mcq)")
    args = parser.parse_args(argv)
    out_dir = args.out_dir if args.out_dir.is_absolute() else ROOT / args.out_dir
    splits = generate(args.dictionary, args.seed)
    for name, records in splits.items():
        write_jsonl_atomic(out_dir / f"{name}.jsonl", records)
    counts = ", ".join(f"{name} {len(records)}" for name, records in splits.items())
    print(f"wrote {out_dir}: {counts} (seed {args.seed})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
