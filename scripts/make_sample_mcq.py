#!/usr/bin/env python3
"""Generate the sample multiple-choice questions from the sample dictionary.

Reads data/sample/dictionary.json (Korean medical terms; character symbols are not
used) and writes one five-option question per term, in the public KorMedMCQA schema,
to <out-dir>/{train,dev,test}.jsonl.

Each question asks, term -> definition, which option describes the term. The options
are the Korean part of dictionary definitions (the text after the first ". "): the
term's own plus four distractors drawn from other terms of the same category. The
split (about 55/5/40 per category; terms whose names contain one another stay
together), the question wording, the distractors and the answer position all come
from one `random.Random(seed)`, so a seed always gives the same files byte for byte.
The script refuses to write splits whose questions would trip kormedqa's train/eval
leakage check.

`--rephrase SEED` asks the same terms another way; `--reverse SEED` asks them the other way round
(definition -> term: the question gives the Korean definition, the options are five terms of the
term's category), the form licensing exams use for "which condition is described".

Usage: python3 scripts/make_sample_mcq.py [--seed 20261125] [--dictionary PATH] [--out-dir DIR]
                                          [--rephrase SEED | --reverse SEED]
Standard library only.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import unicodedata
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
    lambda t: f"다음 중 {t}에 해당하는 설명으로 가장 옳은 것은?",
)

# Definition -> term: the question quotes the definition and asks for the term it describes.
REVERSE_TEMPLATES = (
    lambda d: f"다음 설명에 해당하는 용어는?\n{d}",
    lambda d: f"다음은 어떤 용어에 대한 설명인가?\n{d}",
    lambda d: f"다음 내용이 뜻하는 것으로 옳은 것은?\n{d}",
    lambda d: f"다음 설명에 가장 알맞은 용어는?\n{d}",
    lambda d: f"'{d}' 이 설명에 해당하는 것은?",
)


# A distractor must not also describe the asked term. Besides pairs where one term contains
# the other (치수염 / 가역성 치수염), these groups hold a general term and members it also
# describes (부정교합 / 개방교합, 길항제 / 날록손, 비스테로이드성 소염진통제 / 아스피린):
# no member's definition is used as a distractor for another member of the same group.
RELATED_GROUPS = (
    ("갑상선기능항진증", "그레이브스병"),
    ("갑상선기능저하증", "하시모토 갑상선염", "선천성 갑상선기능저하증"),
    ("요로감염", "신우신염"),
    ("격리", "공기주의", "접촉주의", "표준주의"),
    ("의료관련감염", "인공호흡기 관련 폐렴"),
    ("근육주사", "Z-트랙 기법"),
    ("호스피스", "임종간호"),
    ("지역사회 간호", "가정간호"),
    ("효능제", "부분효능제", "에피네프린", "오피오이드"),
    ("길항제", "부분효능제", "날록손", "플루마제닐", "아트로핀", "항콜린제", "베타차단제",
     "안지오텐신 수용체 차단제", "히스타민 H2 수용체 길항제", "항히스타민제", "항정신병약물", "타목시펜"),
    ("항콜린제", "아트로핀"),
    ("비스테로이드성 소염진통제", "아스피린"),
    ("약물유해반응", "추체외로 증상", "스티븐스-존슨 증후군", "QT 연장", "세로토닌 증후군"),
    ("전구약물", "레보도파"),
    ("부정교합", "앵글 II급 부정교합", "앵글 III급 부정교합", "개방교합", "반대교합", "총생"),
    ("치아 변색", "치아 불소증"),
)


def related(a: str, b: str) -> bool:
    """True if one term's definition could also describe the other (see RELATED_GROUPS)."""
    x, y = a.replace(" ", ""), b.replace(" ", "")
    if x in y or y in x:
        return True
    return any(a in group and b in group for group in RELATED_GROUPS)


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


def among_distractors(rng: random.Random, right: str, candidates: list[str], what: str, term: str) -> tuple[list[str], int]:
    """`right` at a random position among 4 of `candidates` (options, 1-based answer); ValueError with fewer than 4."""
    if len(candidates) < 4:
        raise ValueError(f"fewer than 4 distinct {what} for {term!r}")
    options = rng.sample(candidates, 4)
    answer_index = rng.randrange(5)
    options.insert(answer_index, right)
    return options, answer_index + 1


def make_question(rng: random.Random, term: str, correct: str, pool: list[tuple[str, str]]) -> tuple[str, list[str], int]:
    candidates = sorted({d for other, d in pool if d != correct and not related(term, other)})
    options, answer = among_distractors(rng, correct, candidates, "distractors", term)
    question = rng.choice(TEMPLATES)(term)
    return question, options, answer


def term_clusters(terms: list[str]) -> list[list[int]]:
    """Indices of terms grouped so that a term and any term containing it share a group.

    Such terms (가역성 치수염 / 비가역성 치수염, 부종 / 함요부종) give near-identical
    questions, so they are kept in one split; otherwise kormedqa's train/eval leakage check
    (character 5-gram Jaccard >= 0.9) would flag them.
    """
    parent = list(range(len(terms)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    squashed = [t.replace(" ", "") for t in terms]
    for i in range(len(terms)):
        for j in range(i + 1, len(terms)):
            if squashed[i] in squashed[j] or squashed[j] in squashed[i]:
                parent[find(i)] = find(j)
    groups: dict[int, list[int]] = {}
    for i in range(len(terms)):
        groups.setdefault(find(i), []).append(i)
    return sorted(groups.values())


def assign_splits(rng: random.Random, terms: list[str]) -> dict[int, str]:
    """Shuffle the term clusters and fill test, then dev, up to their target sizes; the rest is train."""
    _, n_dev, n_test = split_sizes(len(terms))
    clusters = term_clusters(terms)
    rng.shuffle(clusters)
    split_of: dict[int, str] = {}
    filled = {"test": 0, "dev": 0}
    for cluster in clusters:
        for name, target in (("test", n_test), ("dev", n_dev)):
            if filled[name] + len(cluster) <= target:
                filled[name] += len(cluster)
                break
        else:
            name = "train"
        for idx in cluster:
            split_of[idx] = name
    return split_of


def normalize_question(text: str) -> str:
    """The normalisation of kormedqa.leakage: NFKC, lowercase, no whitespace, punctuation or symbols."""
    text = unicodedata.normalize("NFKC", text).lower()
    return "".join(c for c in text if not c.isspace() and unicodedata.category(c)[0] not in "PS")


def char_5grams(text: str) -> set[str]:
    norm = normalize_question(text)
    return {norm} if len(norm) < 5 else {norm[i : i + 5] for i in range(len(norm) - 4)}


def check_no_leakage(splits: dict[str, list[dict]], threshold: float = 0.9) -> None:
    """Fail if a training question equals or nearly equals (5-gram Jaccard >= threshold) a dev/test question."""
    held_out = [(r["id"], char_5grams(r["question"])) for name in ("dev", "test") for r in splits[name]]
    for record in splits["train"]:
        grams = char_5grams(record["question"])
        for other_id, other in held_out:
            shared = len(grams & other)
            if shared / (len(grams) + len(other) - shared) >= threshold:
                raise RuntimeError(f"near-duplicate questions across splits: {record['id']} ~ {other_id}")


def generate(dictionary: Path, seed: int) -> dict[str, list[dict]]:
    rng = random.Random(seed)
    by_category = load_terms(dictionary)
    splits: dict[str, list[dict]] = {"train": [], "dev": [], "test": []}
    for category in CATEGORIES:
        entries = by_category[category]
        if not entries:
            continue
        split_of = assign_splits(rng, [term for term, _ in entries])
        for idx, (term, correct) in enumerate(entries):
            question, options, answer = make_question(rng, term, correct, entries)
            number = idx + 1
            record = {"id": f"sample-{category}-{number:04d}", "question": question}
            record.update(zip(LETTERS, options))
            record.update({"answer": answer, "exam_type": category, "subject": SUBJECTS[category],
                           "year": YEAR, "q_number": number})
            splits[split_of[idx]].append(record)
    check_no_leakage(splits)
    return splits


def ask_again(splits: dict[str, list[dict]], dictionary: Path, ask) -> dict[str, list[dict]]:
    """Each record's term asked anew: `ask(term, correct, entries, record)` returns the fields that
    change (question, options, answer); ids, splits and the rest stay. Checked for leakage."""
    by_category = load_terms(dictionary)
    out: dict[str, list[dict]] = {}
    for name, records in splits.items():
        out[name] = []
        for record in records:
            entries = by_category[record["exam_type"]]
            term, correct = entries[record["q_number"] - 1]
            out[name].append({**record, **ask(term, correct, entries, record)})
    check_no_leakage(out)
    return out


def rephrase(splits: dict[str, list[dict]], dictionary: Path, seed: int) -> dict[str, list[dict]]:
    """The same terms in the same splits, asked another way: for each question another of the five
    phrasings than its own, new distractors and a new answer position, all from `random.Random(seed)`.

    A model that learned a term, not a question's surface, answers these as well as the originals.
    """
    rng = random.Random(seed)

    def ask(term, correct, entries, record):
        others = [t for t in TEMPLATES if t(term) != record["question"]]
        _, options, answer = make_question(rng, term, correct, entries)
        return {"question": rng.choice(others)(term), **dict(zip(LETTERS, options)), "answer": answer}

    return ask_again(splits, dictionary, ask)


def reverse(splits: dict[str, list[dict]], dictionary: Path, seed: int) -> dict[str, list[dict]]:
    """The same terms in the same splits, asked the other way round (ids with a `-rev` suffix): the
    question gives the term's Korean definition in one of the REVERSE_TEMPLATES phrasings, the options are the term and four
    other terms of its category (none related to it, see `related`), the answer position drawn
    again, all from `random.Random(seed)`.

    A model that learned only term -> definition (the dictionary track's direction) has nothing
    to recall from here (the reversal curse, Berglund et al. 2023).
    """
    rng = random.Random(seed)

    def ask(term, correct, entries, record):
        candidates = sorted({other for other, _ in entries if other != term and not related(term, other)})
        options, answer = among_distractors(rng, term, candidates, "distractor terms", term)
        # Its own id: another question than the forward one, and both may be trained on together.
        return {"id": f"{record['id']}-rev", "question": rng.choice(REVERSE_TEMPLATES)(correct),
                **dict(zip(LETTERS, options)), "answer": answer}

    return ask_again(splits, dictionary, ask)


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
    parser.add_argument("--rephrase", type=int, metavar="SEED",
                        help="keep --seed's splits and terms, and ask each question another way (another phrasing, "
                             "new distractors and answer position, drawn from SEED): a held-out set of other "
                             "phrasings of the same terms")
    parser.add_argument("--reverse", type=int, metavar="SEED",
                        help="keep --seed's splits and terms, and ask each question the other way round "
                             "(the definition given, five terms of its category as options, drawn from SEED)")
    args = parser.parse_args(argv)
    if args.rephrase is not None and args.reverse is not None:
        parser.error("--rephrase and --reverse are two different sets: give one")
    out_dir = args.out_dir if args.out_dir.is_absolute() else ROOT / args.out_dir
    splits = generate(args.dictionary, args.seed)
    if args.rephrase is not None:
        splits = rephrase(splits, args.dictionary, args.rephrase)
    if args.reverse is not None:
        splits = reverse(splits, args.dictionary, args.reverse)
    for name, records in splits.items():
        write_jsonl_atomic(out_dir / f"{name}.jsonl", records)
    counts = ", ".join(f"{name} {len(records)}" for name, records in splits.items())
    print(f"wrote {out_dir}: {counts} (seed {args.seed})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
