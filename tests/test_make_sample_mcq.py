"""scripts/make_sample_mcq.py: the shipped sample is its output, and --rephrase asks the same terms another way."""
import json
from pathlib import Path

from helpers import load_script

ROOT = Path(__file__).resolve().parents[1]


def _script():
    return load_script(ROOT / "scripts" / "make_sample_mcq.py")


def _read(folder, split):
    return [json.loads(line) for line in (folder / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]


def test_default_seed_writes_the_shipped_sample(tmp_path):
    assert _script().main(["--out-dir", str(tmp_path)]) == 0
    for split in ("train", "dev", "test"):
        assert (tmp_path / f"{split}.jsonl").read_bytes() == (ROOT / "data/sample/mcq" / f"{split}.jsonl").read_bytes()


def test_rephrase_asks_the_same_terms_another_way(tmp_path):
    script = _script()
    assert script.main(["--out-dir", str(tmp_path), "--rephrase", "1"]) == 0
    shipped, rephrased = _read(ROOT / "data/sample/mcq", "test"), _read(tmp_path, "test")
    assert [q["id"] for q in rephrased] == [q["id"] for q in shipped]
    moved = 0
    for old, new in zip(shipped, rephrased):
        right_old, right_new = old["ABCDE"[old["answer"] - 1]], new["ABCDE"[new["answer"] - 1]]
        assert right_new == right_old  # the term's own definition is still the answer
        assert new["question"] != old["question"]  # another of the five phrasings
        moved += new["answer"] != old["answer"]
    assert moved > len(shipped) / 2  # answer positions drawn again, not kept
    # The same seeds give the same bytes.
    assert script.main(["--out-dir", str(tmp_path / "again"), "--rephrase", "1"]) == 0
    assert (tmp_path / "again" / "test.jsonl").read_bytes() == (tmp_path / "test.jsonl").read_bytes()
    # The demo's shipped set of other phrasings is this output, not a hand-picked one.
    assert (ROOT / "data/sample/mcq_rephrased/test.jsonl").read_bytes() == (tmp_path / "test.jsonl").read_bytes()


def test_reverse_asks_for_the_term_from_its_definition(tmp_path):
    script = _script()
    assert script.main(["--out-dir", str(tmp_path), "--reverse", "1"]) == 0
    shipped, reverse = _read(ROOT / "data/sample/mcq", "test"), _read(tmp_path, "test")
    terms = {(e["category"], e["term"]): e["definition"].partition(". ")[2]
             for e in json.loads((ROOT / "data/sample/dictionary.json").read_text(encoding="utf-8"))}
    assert [q["id"] for q in reverse] == [q["id"] + "-rev" for q in shipped]  # same terms, same split, own ids
    phrasings = set()
    for old, new in zip(shipped, reverse):
        term = new["ABCDE"[new["answer"] - 1]]
        definition = terms[(new["exam_type"], term)]
        # The definition the forward question had as its right option is now in the question.
        assert definition == old["ABCDE"[old["answer"] - 1]]
        assert definition in new["question"]
        options = [new[letter] for letter in "ABCDE"]
        assert len(set(options)) == 5 and all((new["exam_type"], o) in terms for o in options)
        phrasings.add(new["question"].replace(definition, ""))
    assert len(phrasings) >= 4  # several phrasings, not one
    assert script.main(["--out-dir", str(tmp_path / "again"), "--reverse", "1"]) == 0
    assert (tmp_path / "again" / "test.jsonl").read_bytes() == (tmp_path / "test.jsonl").read_bytes()
    # The shipped reverse splits (train and dev too: `kormedqa loop --extra-train-data`) are this output, byte for byte.
    for split in ("train", "dev", "test"):
        assert (ROOT / f"data/sample/mcq_reverse/{split}.jsonl").read_bytes() == (tmp_path / f"{split}.jsonl").read_bytes()


def test_the_dictionary_tracks_wordings_are_no_question_stem_of_the_sample():
    """The extra dictionary wordings (formats.FORWARD/REVERSE_PHRASINGS) must not teach the evaluation
    sets' question stems: none of them shares a stem with scripts/make_sample_mcq.py's templates."""
    from kormedqa.formats import FORWARD_PHRASINGS, REVERSE_PHRASINGS

    script = _script()
    stems = {t("X") for t in script.TEMPLATES} | {t("X") for t in script.REVERSE_TEMPLATES}
    for wording in (*FORWARD_PHRASINGS, *REVERSE_PHRASINGS):
        ours = wording.format(term="X", description="X")
        assert not any(ours.replace("X", "").strip(" :") in stem or stem.replace("X", "").strip(" \n'?") in ours
                       for stem in stems), ours
