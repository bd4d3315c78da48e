"""Prompts that already carry `<bos>` are trained with one BOS, not two (issue 13, item 5).

Policy: a literal BOS at the start of a prompt or CPT text (as `apply_chat_template` renders
it; with or without whitespace before it; repeated) is stripped, with a log line, because the
tokenizer adds its own; a BOS anywhere else (inside a prompt, in a completion, inside a text)
is refused with a DataError naming the file, row and field.
"""
from __future__ import annotations

import json
import logging

import pytest

from kormedqa.batching import strip_leading_bos, tokenize_pair, tokenize_rows
from kormedqa.records import DataError

# ../shared/cases/double_bos/prepared.jsonl
CASE = [
    {"prompt": "<bos><start_of_turn>user\nMeaning of word 고혈압:<end_of_turn>",
     "completion": "<start_of_turn>model\n혈압이 정상 범위보다 높은 상태<end_of_turn>"},
    {"prompt": "<bos><start_of_turn>user\nMeaning of word 빈혈:<end_of_turn>",
     "completion": "<start_of_turn>model\n혈액의 산소 운반 능력이 감소한 상태<end_of_turn>"},
]
PLAIN = [dict(r, prompt=r["prompt"].removeprefix("<bos>")) for r in CASE]


def test_the_case_trains_with_one_bos_and_says_so(tokenizer, caplog):
    bos = tokenizer.bos_token_id
    assert tokenizer(CASE[0]["prompt"])["input_ids"][:2] == [bos, bos]  # what happened before
    with caplog.at_level(logging.WARNING, logger="kormedqa.batching"):
        features = tokenize_rows(tokenizer, CASE, 512, source="prepared.jsonl")
    assert features == tokenize_rows(tokenizer, PLAIN, 512)
    for feature in features:
        assert feature["input_ids"][0] == bos and feature["input_ids"].count(bos) == 1
    assert "stripped a literal <bos> from the start of 2 of 2 prompts (prepared.jsonl)" in caplog.text


@pytest.mark.parametrize("prefix", ["<bos>", " <bos>", "\n<bos>", "\t <bos>", "<bos><bos>", " <bos> <bos>"])
def test_every_leading_form_is_stripped(tokenizer, prefix):
    row = PLAIN[0]
    expected = tokenize_pair(tokenizer, row["prompt"], row["completion"], 512)
    assert tokenize_pair(tokenizer, prefix + row["prompt"], row["completion"], 512) == expected


def test_strip_leading_bos_leaves_other_text_alone(tokenizer):
    assert strip_leading_bos(tokenizer, "<bos>x") == ("x", True)
    assert strip_leading_bos(tokenizer, "x<bos>") == ("x<bos>", False)
    assert strip_leading_bos(tokenizer, "<bo") == ("<bo", False)
    assert strip_leading_bos(tokenizer, " <start_of_turn>") == (" <start_of_turn>", False)


@pytest.mark.parametrize("field,prompt,completion", [
    ("prompt", "<start_of_turn>user\n<bos>Meaning of word 빈혈:<end_of_turn>", PLAIN[1]["completion"]),
    ("completion", PLAIN[1]["prompt"], "<bos><start_of_turn>model\n혈액의 상태<end_of_turn>"),
    ("completion", PLAIN[1]["prompt"], "<start_of_turn>model\n혈액<bos>의 상태<end_of_turn>"),
])
def test_a_bos_anywhere_else_is_refused_with_its_row(tokenizer, field, prompt, completion):
    rows = [PLAIN[0], {"prompt": prompt, "completion": completion}]
    with pytest.raises(DataError, match=rf"^prepared.jsonl:2: field '{field}' .*<bos>"):
        tokenize_rows(tokenizer, rows, 512, source="prepared.jsonl")


def test_cpt_text(tokenizer, caplog):
    from kormedqa.cpt import text_features

    with caplog.at_level(logging.WARNING, logger="kormedqa.cpt"):
        assert text_features(tokenizer, ["<bos>고혈압: 혈압이 높은 상태", " <bos>빈혈"], 64) == \
            text_features(tokenizer, ["고혈압: 혈압이 높은 상태", "빈혈"], 64)
    assert "stripped a literal <bos> from the start of 2 of 2 CPT texts" in caplog.text
    with pytest.raises(DataError, match="CPT text: .*contains <bos> after its start"):
        text_features(tokenizer, ["문단 하나 <bos> 문단 둘"], 64)


def test_cpt_corpus_file_with_rendered_bos(tmp_path, tokenizer):
    """The corpus reader keeps the text; the tokenisation gives it one BOS."""
    from kormedqa.cpt import text_features
    from kormedqa.data import read_text_corpus

    (tmp_path / "c.txt").write_text("<bos>첫 문단\n<bos>둘째 문단\n", encoding="utf-8")
    features = text_features(tokenizer, read_text_corpus(tmp_path / "c.txt"), 64)
    assert all(f["input_ids"].count(tokenizer.bos_token_id) == 1 for f in features)


def test_prepared_file_read_by_train_is_stripped(tmp_path, tokenizer):
    """The train command's path: read_jsonl (normalised) -> tokenize_rows."""
    from kormedqa.data import read_jsonl

    path = tmp_path / "prepared.jsonl"
    rows = [CASE[0], dict(CASE[1], prompt="\ufeff\u00a0" + CASE[1]["prompt"])]  # BOM, NBSP: gone at load
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in rows), encoding="utf-8")
    assert tokenize_rows(tokenizer, read_jsonl(path), 512, source=str(path)) == tokenize_rows(tokenizer, PLAIN, 512)


def test_grpo_prompts_from_a_rendered_file_lose_the_literal_bos(tokenizer):
    from kormedqa.grpo import grpo_rows_from_prepared

    rows = grpo_rows_from_prepared([dict(CASE[0], completion="<start_of_turn>model\n<reasoning>x</reasoning>B<end_of_turn>")])
    stripped = strip_leading_bos(tokenizer, rows[0]["prompt"])[0]
    assert tokenizer(stripped)["input_ids"].count(tokenizer.bos_token_id) == 1
