"""One normal form for all text, applied once at load (issue 13, item 2; case nfd_hangul).

Members of the class covered here: decomposed Hangul (NFD, as macOS writes it); invisible
characters (zero-width space / non-joiner / joiner, word joiner, BOM inside text, soft hyphen,
LRM); NBSP and ideographic spaces; fullwidth letters, digits and colon (Windows IMEs, Excel);
halfwidth Hangul; CRLF, CR and U+2028 line ends. Readers: JSONL, JSON, CSV, parquet, exam
folders, a hub card folder through `datasets`, a hub id, dictionaries, CPT text, rationale and
prepared JSONL. Consumers: prepare (prompt and dictionary recall), leakage, answer extraction.
"""
from __future__ import annotations

import json
import sys
import types
import unicodedata
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kormedqa.data import load_dictionary, load_mcq, read_jsonl, read_text_corpus
from kormedqa.extract import answer_after_reasoning, extract_answer, has_detailed_keywords, reasoning_score
from kormedqa.leakage import find_overlap, normalize_question
from kormedqa.records import MCQ, DataError
from kormedqa.text import normalize_text

# The record of ../shared/cases/nfd_hangul (nfc/train.jsonl) and its dictionary.
CASE_ROW = {"id": "q1", "question": "고혈압 환자에게 가장 먼저 투여할 약물은?", "A": "이뇨제", "B": "베타차단제",
            "C": "칼슘통로차단제", "D": "안지오텐신전환효소억제제", "E": "알파차단제", "answer": 1, "exam_type": "doctor"}
CASE_DICT = [{"term": "고혈압", "definition": "Hypertension. 혈압이 정상 범위보다 높은 상태"}]
ZW = "\u200b"


def nfd(value):
    if isinstance(value, str):
        return unicodedata.normalize("NFD", value)
    if isinstance(value, dict):
        return {k: nfd(v) for k, v in value.items()}
    if isinstance(value, list):
        return [nfd(v) for v in value]
    return value


def fullwidth(text: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


# ----------------------------------------------------------------------------- the mapping


@pytest.mark.parametrize("raw,normal", [
    (unicodedata.normalize("NFD", "고혈압"), "고혈압"),                       # macOS NFD Hangul
    ("ᄀ" + ZW + "ᅩ", "고"),                                                   # invisible between jamo
    ("고" + ZW + "혈\u200c압\u200d 환\u2060자\ufeff", "고혈압 환자"),            # ZWSP, ZWNJ, ZWJ, WJ, BOM
    ("에피\u00ad네프린\u200e", "에피네프린"),                                   # soft hyphen, LRM
    ("혈압\u00a0140\u202f/\u200990\u3000mmHg", "혈압 140 / 90 mmHg"),          # NBSP, narrow, thin, ideographic
    ("정답：Ｂ", "정답:B"), ("Ａ）ＣＴ　２회", "A)CT 2회"), ("ａｂｃ～", "abc~"),  # fullwidth (IME, Excel)
    ("ﾡ ￦1000", "ㄱ ₩1000"),                                                  # halfwidth forms
    ("첫줄\r\n둘째\r셋째\u2028넷째\u2029다섯\x0b여섯", "첫줄\n둘째\n셋째\n넷째\n다섯\n여섯"),  # line ends
])
def test_normal_form(raw, normal):
    assert normalize_text(raw) == normal


def test_content_symbols_are_kept():
    """What full NFKC would rewrite and must not: units, list markers, exponents."""
    text = "체온 38.5℃, 아세트아미노펜 500㎎ 5㎖, ㄱ. ㄴ. ㄷ. ① ② 백혈구 12×10⁹/L, 체표면적 1.7m², 5µg, 제Ⅱ형, ½, ™, …"
    assert normalize_text(text) == text
    assert unicodedata.normalize("NFKC", text) != text  # the test would catch NFKC


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs",))))
def test_idempotent_and_blind_to_nfd(text):
    once = normalize_text(text)
    assert normalize_text(once) == once
    assert normalize_text(unicodedata.normalize("NFD", text)) == once
    assert unicodedata.is_normalized("NFC", once)
    assert "\r" not in once and ZW not in once and "\ufeff" not in once


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E)))
def test_fullwidth_ascii_is_ascii(text):
    assert normalize_text(fullwidth(text)) == text


# ----------------------------------------------------------------------------- the case


def test_nfd_case_prepares_the_same_rows_and_tokens(tmp_path, tokenizer):
    from kormedqa.prepare import PrepareConfig, run_prepare

    (tmp_path / "dict.json").write_text(json.dumps(nfd(CASE_DICT), ensure_ascii=False), encoding="utf-8")
    outputs = {}
    for name, record in (("nfc", CASE_ROW), ("nfd", nfd(CASE_ROW))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "train.jsonl").write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
        out = tmp_path / f"prep_{name}.jsonl"
        run_prepare(PrepareConfig(track="mcq", data=[str(tmp_path / name)], split="train",
                                  dictionary=[str(tmp_path / "dict.json")], output=str(out)))
        outputs[name] = out.read_bytes()
    assert outputs["nfd"] == outputs["nfc"]
    row = json.loads(outputs["nfd"])
    assert "고혈압: 혈압이 정상 범위보다 높은 상태" in row["completion"]  # the dictionary recall line
    nfc_tokens = len(tokenizer(row["prompt"])["input_ids"])
    raw_nfd_tokens = len(tokenizer(unicodedata.normalize("NFD", row["prompt"]))["input_ids"])
    assert raw_nfd_tokens > nfc_tokens + 40  # what the case saw (165 vs 79): one token per jamo


# ----------------------------------------------------------------------------- every reader


def dirty_row() -> dict:
    """CASE_ROW as Windows/macOS/web tools deliver it: every field in some other code points."""
    return {
        "id": "ｑ１",
        "question": unicodedata.normalize("NFD", "고혈압" + ZW + "\u00a0환자에게 가장\u00ad 먼저 투여할 약물은？"),
        "A": "이뇨제\ufeff", "B": fullwidth("") + "베타\u200d차단제", "C": "칼슘통로차단제\u2060",
        "D": unicodedata.normalize("NFD", "안지오텐신전환효소억제제"), "E": "알파차단제\u3000",
        "answer": "Ａ", "exam_type": "ｄｏｃｔｏｒ", "cot": "첫째 줄\r\n둘째 줄\r셋째 줄",
    }


CLEAN = MCQ(id="q1", question="고혈압 환자에게 가장 먼저 투여할 약물은?", options=("이뇨제", "베타차단제", "칼슘통로차단제",
            "안지오텐신전환효소억제제", "알파차단제"), answer="A", exam_type="doctor", cot="첫째 줄\n둘째 줄\n셋째 줄")


def same(records: list[MCQ]) -> bool:
    return [replace(r, source="") for r in records] == [CLEAN]


def write_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_every_mcq_file_format(tmp_path):
    row = dirty_row()
    jsonl = tmp_path / "q.jsonl"
    jsonl.write_bytes(("\ufeff" + json.dumps(row, ensure_ascii=False) + "\r\n").encode("utf-8"))
    assert same(load_mcq(jsonl))
    (tmp_path / "q.json").write_text(json.dumps([row]), encoding="utf-8")  # \u escapes, normalised after parsing
    assert same(load_mcq(tmp_path / "q.json"))
    (tmp_path / "q16.json").write_bytes(json.dumps([row], ensure_ascii=False).encode("utf-16"))  # Notepad "Unicode"
    assert same(load_mcq(tmp_path / "q16.json"))
    import csv

    with (tmp_path / "q.csv").open("w", encoding="utf-8-sig", newline="") as fh:  # Excel "CSV UTF-8"
        writer = csv.DictWriter(fh, fieldnames=list(row), lineterminator="\r\n")
        writer.writeheader()
        writer.writerow(row)
    assert same(load_mcq(tmp_path / "q.csv"))
    assert same(load_mcq(write_parquet(tmp_path / "q.parquet", [row])))
    assert same(load_mcq(write_parquet(tmp_path / "folder" / "doctor" / "test.parquet", [row]), exam_type="doctor"))
    assert same(load_mcq(tmp_path / "folder", split="test"))


def test_card_folder_and_hub_id(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    row = {k: v for k, v in dirty_row().items() if k != "exam_type"}
    write_parquet(tmp_path / "hub" / "doctor" / "test-00000-of-00001.parquet", [row])
    (tmp_path / "hub" / "README.md").write_text(
        "---\nconfigs:\n- config_name: doctor\n  data_files:\n  - split: test\n    path: doctor/test-*\n---\n", encoding="utf-8")
    assert same(load_mcq(tmp_path / "hub", split="test"))
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=lambda *a, **k: [row]))
    assert same(load_mcq("sean0042/KorMedMCQA", split="test", exam_type="doctor"))


@pytest.mark.parametrize("cell", ["Ａ", "１", " A" + ZW, "\u00a0１\u00a0"])
def test_answer_cells_from_excel(tmp_path, cell):
    header = "question,A,B,C,D,E,answer\n"
    (tmp_path / "a.csv").write_text(header + f"질문?,가,나,다,라,마,{cell}\n", encoding="utf-8")
    assert load_mcq(tmp_path / "a.csv")[0].answer == "A"


def test_an_answer_that_is_not_one_still_fails(tmp_path):
    (tmp_path / "a.csv").write_text("question,A,B,C,D,E,answer\n질문?,가,나,다,라,마,정답：Ｂ\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"a.csv:2: field 'answer' out of range: '정답:B'"):
        load_mcq(tmp_path / "a.csv")


def test_cr_only_line_ends_keep_line_numbers(tmp_path):
    lines = [json.dumps(CASE_ROW | {"id": f"q{i}"}, ensure_ascii=False) for i in (1, 2)] + ['{"id": "q3", "question": "?"}']
    (tmp_path / "mac.jsonl").write_text("\r".join(lines) + "\r", encoding="utf-8")
    with pytest.raises(DataError, match=r"mac.jsonl:3: field 'A' missing"):
        load_mcq(tmp_path / "mac.jsonl")


def test_files_joined_with_cat_keep_their_bom(tmp_path):
    one = ("\ufeff" + json.dumps(CASE_ROW, ensure_ascii=False) + "\n").encode("utf-8")
    two = ("\ufeff" + json.dumps(CASE_ROW | {"id": "q2"}, ensure_ascii=False) + "\n").encode("utf-8")
    (tmp_path / "both.jsonl").write_bytes(one + two)
    assert [r.id for r in load_mcq(tmp_path / "both.jsonl")] == ["q1", "q2"]


def test_legacy_encoding_names_the_fix(tmp_path):
    (tmp_path / "excel.csv").write_bytes("question,A,B,C,D,E,answer\n질문,가,나,다,라,마,1\n".encode("cp949"))
    with pytest.raises(DataError, match=r"excel.csv:2: not valid UTF-8 .*save it as UTF-8 \(Excel: 'CSV UTF-8'\)"):
        load_mcq(tmp_path / "excel.csv")


def test_dictionary_corpus_and_jsonl_readers(tmp_path):
    dirty = [{"term": unicodedata.normalize("NFD", "고혈압") + ZW, "definition": "Hypertension.\u00a0혈압이 높은 상태\r\n"}]
    (tmp_path / "d.json").write_text(json.dumps(dirty, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "d.jsonl").write_text(json.dumps(dirty[0] | {"term": "빈혈"}, ensure_ascii=False) + "\r\n", encoding="utf-8")
    entries = load_dictionary(tmp_path / "d.json", tmp_path / "d.jsonl")
    assert [(e.term, e.definition) for e in entries] == [("고혈압", "Hypertension. 혈압이 높은 상태"),
                                                         ("빈혈", "Hypertension. 혈압이 높은 상태")]
    corpus = unicodedata.normalize("NFD", "첫 문단\r\n둘째\u00a0문단\r셋째 문단\u2028넷째 문단")
    (tmp_path / "c.txt").write_text(corpus, encoding="utf-8", newline="")
    assert read_text_corpus(tmp_path / "c.txt") == ["첫 문단", "둘째 문단", "셋째 문단", "넷째 문단"]
    (tmp_path / "r.jsonl").write_text(json.dumps({"id": "ｑ１", "rationale": nfd("고혈압" + ZW)}, ensure_ascii=False),
                                      encoding="utf-8")
    assert read_jsonl(tmp_path / "r.jsonl") == [{"id": "q1", "rationale": "고혈압"}]


def test_rationales_join_on_the_normal_ids(tmp_path):
    from kormedqa.prepare import load_rationales

    (tmp_path / "q.jsonl").write_text(json.dumps(dirty_row(), ensure_ascii=False), encoding="utf-8")
    (tmp_path / "r.jsonl").write_text(json.dumps({"id": "q1", "rationale": "이유"}, ensure_ascii=False), encoding="utf-8")
    assert [q.id for q in load_mcq(tmp_path / "q.jsonl")] == list(load_rationales(tmp_path / "r.jsonl"))


# ----------------------------------------------------------------------------- leakage and extraction


@pytest.mark.parametrize("variant", [
    lambda q: unicodedata.normalize("NFD", q),
    lambda q: ZW.join(q),
    lambda q: q.replace(" ", "\u00a0"),
    lambda q: q.replace("혈압", "혈\u00ad압").replace("환자", "환\ufeff자"),
    lambda q: fullwidth(q),
])
def test_leakage_sees_through_the_class(variant):
    question = CASE_ROW["question"] + " (CT 소견 2회)"
    train = [MCQ(id="t", question=variant(question), options=CLEAN.options, answer="A")]
    evaluation = [MCQ(id="e", question=question, options=CLEAN.options, answer="A"),
                  MCQ(id="other", question="빈혈 환자에게 가장 먼저 할 검사는?", options=CLEAN.options, answer="A")]
    assert normalize_question(variant(question)) == normalize_question(question)
    assert find_overlap(train, evaluation).exact == [("t", "e")]


@pytest.mark.parametrize("output,letter", [
    ("정답：Ｂ", "B"),                                        # fullwidth colon and letter (IME)
    ("<reasoning>...</reasoning>Ｃ", "C"),
    ("<reasoning>...</reasoning>" + ZW + "D", "D"),
    ("<reasoning>...</reasoning>\u00a0정답：\u00a0Ｅ", "E"),
    (unicodedata.normalize("NFD", "정답은 A입니다"), "A"),    # decomposed Hangul around the letter
    (unicodedata.normalize("NFD", "정답: B"), "B"),
    ("정답" + ZW + ": C", "C"),
])
def test_extraction_sees_the_normal_form(output, letter):
    assert extract_answer(output) == letter


def test_format_checks_see_the_normal_form():
    detailed = "<reasoning>\n첫째: a\n둘째: b\n셋째: c\n넷째: A) 10%, B) 60%, C) 10%, D) 10%, E) 10%\n</reasoning>Ｂ"
    decomposed = unicodedata.normalize("NFD", detailed)
    assert has_detailed_keywords(decomposed)
    assert answer_after_reasoning(decomposed)
    assert reasoning_score(decomposed, "B") == pytest.approx(1.0)
