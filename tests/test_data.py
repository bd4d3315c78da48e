"""Readers and validation in kormedqa.data: every malformed record names file, line and field."""
from __future__ import annotations

import csv
import json
import os
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kormedqa.data import (
    load_dictionary,
    load_mcq,
    read_jsonl,
    read_text_corpus,
)
from kormedqa.fsio import write_json_atomic, write_jsonl_atomic
from kormedqa.records import LETTERS, DataError
from kormedqa.text import normalize_text

FIELDS = ["id", "question", "A", "B", "C", "D", "E", "answer", "subject", "year", "q_number"]
HYP = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def row(i: int = 1, **overrides) -> dict:
    base = {
        "id": f"doctor-{i}",
        "question": f"다음 중 '질환{i}'에 대한 설명으로 옳은 것은?",
        "A": f"보기 가{i}",
        "B": f"보기 나{i}",
        "C": f"보기 다{i}",
        "D": f"보기 라{i}",
        "E": f"보기 마{i}",
        "answer": (i % 5) + 1,
        "subject": "내과",
        "year": 2020,
        "q_number": i,
    }
    base.update(overrides)
    return base


def rows(n: int = 3) -> list[dict]:
    return [row(i) for i in range(1, n + 1)]


def write_jsonl(path: Path, items: list, newline: str = "\n") -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + newline for r in items), encoding="utf-8")
    return path


def write_csv(path: Path, items: list[dict]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(items)
    return path


def write_parquet(path: Path, items: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(items), path)
    return path


def strip_source(records):
    return [replace(r, source="") for r in records]


@contextmanager
def raises_at(path: Path, line, field, match: str | None = None):
    """Assert a DataError at path/line/field whose message says so too."""
    with pytest.raises(DataError, match=match) as info:
        yield info
    err = info.value
    assert (err.path, err.line, err.field) == (str(path), line, field), str(err)
    text = str(err)
    assert str(path) in text
    if line is not None:
        assert f"{path}:{line}" in text
    if field is not None:
        assert f"'{field}'" in text


# ----------------------------------------------------------------------------- happy paths


def test_jsonl_loads_records(tmp_path):
    records = load_mcq(write_jsonl(tmp_path / "q.jsonl", rows(3)))
    assert [r.id for r in records] == ["doctor-1", "doctor-2", "doctor-3"]
    first = records[0]
    assert first.answer == "B" and first.answer_index == 1
    assert first.options == ("보기 가1", "보기 나1", "보기 다1", "보기 라1", "보기 마1")
    assert first.year == 2020 and first.q_number == 1 and first.subject == "내과"
    assert first.source == f"{tmp_path / 'q.jsonl'}:1"


def test_every_layout_loads_to_equal_records(tmp_path):
    items = rows(4)
    letters = [dict(r, answer=LETTERS[r["answer"] - 1]) for r in items]
    reference = strip_source(load_mcq(write_jsonl(tmp_path / "a.jsonl", items)))
    (tmp_path / "b.json").write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")
    split_dir = tmp_path / "splits"
    split_dir.mkdir()
    write_csv(split_dir / "test.csv", items)
    write_jsonl(split_dir / "train.jsonl", rows(1))
    variants = {
        "json": load_mcq(tmp_path / "b.json"),
        "csv": load_mcq(write_csv(tmp_path / "c.csv", items)),
        "csv letters": load_mcq(write_csv(tmp_path / "d.csv", letters)),
        "parquet": load_mcq(write_parquet(tmp_path / "e.parquet", items)),
        "jsonl letters": load_mcq(write_jsonl(tmp_path / "f.jsonl", letters)),
        "directory": load_mcq(str(split_dir), split="test"),
    }
    for name, records in variants.items():
        assert strip_source(records) == reference, name


def test_exam_subfolders_set_exam_type(tmp_path):
    for exam in ("doctor", "nurse"):
        (tmp_path / exam).mkdir()
        items = [{k: v for k, v in row(i).items() if k != "id"} for i in (1, 2)]
        write_jsonl(tmp_path / exam / "test.jsonl", items)
    records = load_mcq(tmp_path, split="test")
    assert [(r.exam_type, r.id) for r in records] == [
        ("doctor", "doctor-2020-1"),
        ("doctor", "doctor-2020-2"),
        ("nurse", "nurse-2020-1"),
        ("nurse", "nurse-2020-2"),
    ]
    assert {r.exam_type for r in load_mcq(tmp_path, split="test", exam_type="nurse")} == {"nurse"}
    with pytest.raises(ValueError, match="split"):
        load_mcq(tmp_path)
    with pytest.raises(DataError, match="no 'dev' file"):
        load_mcq(tmp_path, split="dev", exam_type="doctor")


def test_id_fallbacks(tmp_path):
    bare = {k: v for k, v in row(1).items() if k not in ("id", "year", "q_number")}
    numbered = dict(bare, year=2019, q_number=7)
    path = write_jsonl(tmp_path / "mixed.jsonl", [bare, numbered, dict(bare, exam_type="nurse", year=2019, q_number=7)])
    assert [r.id for r in load_mcq(path)] == ["mixed-1", "q-2019-7", "nurse-2019-7"]


def test_bom_crlf_and_blank_lines(tmp_path):
    path = tmp_path / "q.jsonl"
    body = "\r\n".join(json.dumps(r, ensure_ascii=False) for r in rows(2))
    path.write_bytes(b"\xef\xbb\xbf" + body.replace("\r\n", "\r\n\r\n").encode("utf-8") + b"\r\n")
    records = load_mcq(path)
    assert [r.source.rsplit(":", 1)[1] for r in records] == ["1", "3"]
    assert records[0].id == "doctor-1"
    csv_path = write_csv(tmp_path / "q.csv", rows(2))
    csv_path.write_bytes(b"\xef\xbb\xbf" + csv_path.read_bytes())  # csv module already wrote CRLF
    assert strip_source(load_mcq(csv_path)) == strip_source(records)


def test_csv_line_numbers_count_header_and_multiline_cells(tmp_path):
    items = rows(3)
    items[0]["question"] = "첫 줄\n둘째 줄"
    items[2]["answer"] = "7"
    path = write_csv(tmp_path / "q.csv", items)
    # header=1, record 1 spans lines 2-3, record 2 is line 4, record 3 line 5
    with raises_at(path, 5, "answer", "out of range"):
        load_mcq(path)


# ----------------------------------------------------------------------------- malformed input


@pytest.mark.parametrize(
    "overrides, field, reason",
    [
        ({"answer": 0}, "answer", "out of range"),
        ({"answer": 6}, "answer", "out of range"),
        ({"answer": "F"}, "answer", "out of range"),
        ({"answer": "a"}, "answer", "out of range"),
        ({"answer": "2"}, "answer", "must be an integer"),
        ({"answer": 2.0}, "answer", "must be"),
        ({"answer": True}, "answer", "must be"),
        ({"answer": [2]}, "answer", "must be"),
        ({"answer": None}, "answer", "missing"),
        ({"question": "   "}, "question", "empty"),
        ({"question": None}, "question", "missing"),
        ({"C": ""}, "C", "empty"),
        ({"E": " \t"}, "E", "empty"),
        ({"B": 3}, "B", "must be a string"),
        ({"year": "2020"}, "year", "must be an integer"),
        ({"question": "가" * 20001}, "question", "longer than 20000 characters"),
    ],
)
def test_bad_field_in_jsonl(tmp_path, overrides, field, reason):
    items = rows(3)
    items[1] = {k: v for k, v in row(2, **overrides).items() if v is not None}
    path = write_jsonl(tmp_path / "bad.jsonl", items)
    with raises_at(path, 2, field, reason):
        load_mcq(path)


def test_bad_answer_in_csv_and_json_array(tmp_path):
    path = write_csv(tmp_path / "bad.csv", [row(1), row(2, answer="0")])
    with raises_at(path, 3, "answer", "out of range"):
        load_mcq(path)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([row(1), row(2), row(3, answer="F")]), encoding="utf-8")
    with raises_at(path, 3, "answer", "out of range"):
        load_mcq(path)
    path = write_parquet(tmp_path / "bad.parquet", [row(1), row(2, answer=6)])
    with raises_at(path, 2, "answer", "out of range"):
        load_mcq(path)


def test_bad_json_truncated_line_and_non_object(tmp_path):
    path = tmp_path / "trunc.jsonl"
    good = json.dumps(row(1), ensure_ascii=False)
    path.write_text(good + "\n" + good[:40], encoding="utf-8")
    with raises_at(path, 2, None, "invalid JSON"):
        load_mcq(path)
    path = write_jsonl(tmp_path / "list.jsonl", [row(1), ["not", "an", "object"]])
    with raises_at(path, 2, None, "expected a JSON object"):
        load_mcq(path)
    path = tmp_path / "arr.json"
    path.write_text('[\n  {"question": "x",\n  oops\n]', encoding="utf-8")
    with raises_at(path, 3, None, "invalid JSON"):
        load_mcq(path)


def test_non_utf8_reports_line(tmp_path):
    path = tmp_path / "latin.jsonl"
    lines = [json.dumps(r, ensure_ascii=False).encode("utf-8") for r in rows(3)]
    lines[2] = lines[2].replace("설명".encode("utf-8"), "설명".encode("euc-kr"))
    path.write_bytes(b"\n".join(lines))
    with raises_at(path, 3, None, "not valid UTF-8"):
        load_mcq(path)


@pytest.mark.parametrize("content", [b"", b"\n\n", b"\xef\xbb\xbf", b"[]"])
def test_empty_file(tmp_path, content):
    path = tmp_path / ("empty.json" if content == b"[]" else "empty.jsonl")
    path.write_bytes(content)
    with raises_at(path, None, None, "no records"):
        load_mcq(path)


def test_duplicate_ids(tmp_path):
    path = write_jsonl(tmp_path / "dup.jsonl", [row(1), row(2), row(3, id="doctor-1")])
    with raises_at(path, 3, "id", "duplicate id 'doctor-1'"):
        load_mcq(path)
    # Generated ids collide too: same year and q_number in one file.
    same = [{k: v for k, v in row(i, q_number=5).items() if k != "id"} for i in (1, 2)]
    path = write_jsonl(tmp_path / "dup2.jsonl", same)
    with raises_at(path, 2, "id", "duplicate id 'q-2020-5'"):
        load_mcq(path)


def test_missing_source(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_mcq(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="no such file"):
        load_mcq("data/nope/test.jsonl")


_field = st.sampled_from(["question", "A", "B", "C", "D", "E", "answer"])
_bad_value = st.one_of(st.none(), st.just(""), st.just("  "), st.integers(-5, 0), st.integers(6, 99), st.floats(), st.booleans())


@HYP
@given(n=st.integers(1, 6), bad_at=st.integers(0, 5), field=_field, value=_bad_value, blank_lines=st.booleans())
def test_property_malformed_record_names_path_line_field(tmp_path, n, bad_at, field, value, blank_lines):
    bad_at = bad_at % n
    items = rows(n)
    if value is None:
        del items[bad_at][field]
    else:
        items[bad_at][field] = value
    sep = "\n\n" if blank_lines else "\n"
    path = tmp_path / "prop.jsonl"
    path.write_text(sep.join(json.dumps(r, ensure_ascii=False) for r in items), encoding="utf-8")
    line = bad_at * (2 if blank_lines else 1) + 1
    with raises_at(path, line, field):
        load_mcq(path)


@HYP
@given(
    items=st.lists(
        st.fixed_dictionaries(
            {
                "question": st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1).filter(
                    lambda q: normalize_text(q).strip()
                ),
                "answer": st.integers(1, 5),
                "year": st.integers(2012, 2024),
            }
        ),
        min_size=1,
        max_size=5,
    )
)
def test_property_layouts_agree(tmp_path, items):
    full = [row(i, question=it["question"], answer=it["answer"], year=it["year"]) for i, it in enumerate(items, 1)]
    reference = strip_source(load_mcq(write_jsonl(tmp_path / "p.jsonl", full)))
    # Any text round-trips through every format as its normal form (kormedqa.text).
    assert [r.question for r in reference] == [normalize_text(it["question"]).strip() for it in items]
    (tmp_path / "p.json").write_text(json.dumps(full), encoding="utf-8")
    assert strip_source(load_mcq(tmp_path / "p.json")) == reference
    assert strip_source(load_mcq(write_csv(tmp_path / "p.csv", full))) == reference
    assert strip_source(load_mcq(write_parquet(tmp_path / "p.parquet", full))) == reference


# ----------------------------------------------------------------------------- other readers


def test_load_dictionary(tmp_path):
    terms = tmp_path / "terms.json"
    terms.write_text(
        json.dumps(
            [{"term": "고혈압", "definition": "혈압이 높은 상태"}, {"term": "㎎", "definition": "밀리그램", "category": "symbol"}],
            ensure_ascii=False,
        ),
        encoding="utf-8",
    )
    extra = write_jsonl(tmp_path / "extra.jsonl", [{"term": "빈혈", "definition": "혈색소 감소", "category": "혈액"}])
    entries = load_dictionary(terms, extra)
    assert [(e.term, e.category, e.is_symbol) for e in entries] == [("고혈압", "", False), ("㎎", "symbol", True), ("빈혈", "혈액", False)]
    assert entries[2].source == f"{extra}:1"

    dup = write_jsonl(tmp_path / "dup.jsonl", [{"term": "x", "definition": "y"}, {"term": "고혈압", "definition": "z"}])
    with raises_at(dup, 2, "term", "duplicate term"):
        load_dictionary(terms, dup)
    blank = write_jsonl(tmp_path / "blank.jsonl", [{"term": "x", "definition": " "}])
    with raises_at(blank, 1, "definition", "empty"):
        load_dictionary(blank)
    broken = tmp_path / "broken.json"
    broken.write_text('[\n{"term": "a", "definition": "b"},\n{"term": }\n]', encoding="utf-8")
    with raises_at(broken, 3, None, "invalid JSON"):
        load_dictionary(broken)


def test_read_text_corpus(tmp_path):
    (tmp_path / "b.txt").write_text("둘째 파일\r\n\r\n마지막\n", encoding="utf-8")
    (tmp_path / "a.txt").write_bytes(b"\xef\xbb\xbf" + "첫 문단\n\n  둘째 문단  \n".encode("utf-8"))
    (tmp_path / "skip.md").write_text("ignored", encoding="utf-8")
    assert read_text_corpus(tmp_path) == ["첫 문단", "둘째 문단", "둘째 파일", "마지막"]
    bad = tmp_path / "bad" / "x.txt"
    bad.parent.mkdir()
    bad.write_bytes(b"ok\nok\n\xff\n")
    with raises_at(bad, 3, None, "UTF-8"):
        read_text_corpus(bad.parent)


def test_read_jsonl(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "질문", "completion": "A"}])
    assert read_jsonl(path) == [{"prompt": "질문", "completion": "A"}]
    path.write_text('{"prompt": "x"}\n"just a string"\n', encoding="utf-8")
    with raises_at(path, 2, None, "expected a JSON object"):
        read_jsonl(path)
    path.write_text("", encoding="utf-8")
    assert read_jsonl(path, allow_empty=True) == []
    with raises_at(path, None, None, "no records"):
        read_jsonl(path)


# ----------------------------------------------------------------------------- atomic writers


def test_atomic_writers_round_trip(tmp_path):
    target = tmp_path / "out" / "rows.jsonl"
    write_jsonl_atomic(target, [{"q": "한글"}, {"q": "둘"}])
    assert target.read_bytes() == '{"q": "한글"}\n{"q": "둘"}\n'.encode("utf-8")
    assert read_jsonl(target) == [{"q": "한글"}, {"q": "둘"}]
    write_json_atomic(tmp_path / "m.json", {"이름": 1})
    assert (tmp_path / "m.json").read_text(encoding="utf-8") == '{\n  "이름": 1\n}\n'


def _exploding_rows(n):
    for i in range(n):
        yield {"i": i}
    raise RuntimeError("boom")


def test_atomic_writer_failure_leaves_no_file(tmp_path):
    target = tmp_path / "rows.jsonl"
    with pytest.raises(RuntimeError, match="boom"):
        write_jsonl_atomic(target, _exploding_rows(3))
    assert os.listdir(tmp_path) == []


def test_atomic_writer_failure_keeps_old_target(tmp_path):
    target = tmp_path / "rows.jsonl"
    target.write_text("old\n", encoding="utf-8")
    with pytest.raises(TypeError):
        write_jsonl_atomic(target, [{"ok": 1}, {"bad": object()}])
    assert target.read_text(encoding="utf-8") == "old\n"
    assert os.listdir(tmp_path) == ["rows.jsonl"]


# ----------------------------------------------------------------------------- hub (no network: a stand-in module)


def test_hub_id_loads_each_config(monkeypatch):
    import sys
    import types

    calls = []

    def load_dataset(name, config, split):
        calls.append((name, config, split))
        if config == "dentist":
            raise ConnectionError("offline")
        return [{k: v for k, v in row(i).items() if k != "id"} | {"period": 1, "cot": None} for i in (1, 2)]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    records = load_mcq("sean0042/KorMedMCQA", split="test", exam_type="nurse")
    assert calls == [("sean0042/KorMedMCQA", "nurse", "test")]
    assert [(r.id, r.exam_type, r.answer) for r in records] == [("nurse-2020-1-1", "nurse", "B"), ("nurse-2020-1-2", "nurse", "C")]
    assert records[0].source == "sean0042/KorMedMCQA/nurse/test:1"
    with pytest.raises(DataError, match="could not load from the Hugging Face hub: offline"):
        load_mcq("sean0042/KorMedMCQA", split="test")
    with pytest.raises(ValueError, match="split"):
        load_mcq("sean0042/KorMedMCQA")


def test_atomic_writer_file_mode(tmp_path):
    target = tmp_path / "m.json"
    write_json_atomic(target, [1])
    assert target.stat().st_mode & 0o777 == 0o644
    target.chmod(0o600)
    write_json_atomic(target, [2])
    assert target.stat().st_mode & 0o777 == 0o600


def test_two_training_sources_may_not_share_an_id(tmp_path):
    """Rationales, rotations and records are keyed by id: a second source repeating one is refused
    with its file, line and field; the shipped forward and reverse splits have distinct ids."""
    import pytest

    from kormedqa.data import load_mcq_sources
    from kormedqa.errors import DataError

    root = Path(__file__).resolve().parents[1] / "data/sample"
    both = load_mcq_sources([root / "mcq", root / "mcq_reverse"], "train")
    assert len(both) == 448 and len({q.id for q in both}) == 448
    with pytest.raises(DataError) as err:
        load_mcq_sources([root / "mcq", root / "mcq"], "train")
    assert "train.jsonl" in str(err.value) and ":1" in str(err.value) and "id" in str(err.value)


def test_dictionary_directions_are_checked_at_parse_time():
    import pytest

    from kormedqa.errors import UsageError
    from kormedqa.loop_config import LoopConfig
    from kormedqa.prepare import PrepareConfig

    assert LoopConfig(dict_directions="forward,reverse").dict_directions == "forward,reverse"
    for bad in ("sideways", "forward,forward", ""):
        with pytest.raises(UsageError, match="dict-directions"):
            LoopConfig(dict_directions=bad)
        with pytest.raises(UsageError, match="dict-directions"):
            PrepareConfig(dict_directions=bad)
