"""Issue-4 guarantees at the command level: exit code 2, one message naming file/line/field, no output."""
from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kormedqa.cli import main

GOOD = {"question": "'고혈압'의 정의로 옳은 것은?", "A": "가", "B": "나", "C": "다", "D": "라", "E": "마", "answer": 2}
BREAKAGES = {
    "missing question": ({k: v for k, v in GOOD.items() if k != "question"}, "question"),
    "empty option": ({**GOOD, "C": "   "}, "C"),
    "answer 0": ({**GOOD, "answer": 0}, "answer"),
    "answer 6": ({**GOOD, "answer": 6}, "answer"),
    "answer F": ({**GOOD, "answer": "F"}, "answer"),
    "answer '2' in JSON": ({**GOOD, "answer": "2"}, "answer"),
    "option not a string": ({**GOOD, "A": 3}, "A"),
    "answer a float": ({**GOOD, "answer": 2.0}, "answer"),
}


def _run(args, capsys):
    code = main(args)
    return code, capsys.readouterr().err


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(sorted(BREAKAGES)), n_good=st.integers(0, 4), crlf=st.booleans())
def test_prepare_mcq_rejects_each_breakage(tmp_path_factory, capsys, kind, n_good, crlf):
    tmp = tmp_path_factory.mktemp("p")
    bad, field = BREAKAGES[kind]
    nl = "\r\n" if crlf else "\n"
    lines = [json.dumps({**GOOD, "id": f"g{i}"}, ensure_ascii=False) for i in range(n_good)]
    lines.append(json.dumps({**bad, "id": "bad"}, ensure_ascii=False))
    src = tmp / "train.jsonl"
    src.write_text(nl.join(lines) + nl, encoding="utf-8")
    out = tmp / "out.jsonl"
    code, err = _run(["prepare", "mcq", "--data", str(src), "--output", str(out)], capsys)
    assert code == 2
    assert f"{src}:{n_good + 1}" in err and field in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp.glob(".out.jsonl*"))


@pytest.mark.parametrize("content,line", [
    (b'{"question": "q", "A": "a"', 1),                     # truncated last line
    (b"", None),                                            # empty file
    (b'{"question": "\xff\xfe"}\n', 1),                      # not UTF-8
])
def test_prepare_rejects_broken_files(tmp_path, capsys, content, line):
    src = tmp_path / "train.jsonl"
    src.write_bytes(content)
    out = tmp_path / "out.jsonl"
    code, err = _run(["prepare", "mcq", "--data", str(src), "--output", str(out)], capsys)
    assert code == 2 and str(src) in err and not out.exists()
    if line:
        assert f"{src}:{line}" in err


def test_prepare_dict_rejects_empty_definition(tmp_path, capsys):
    src = tmp_path / "dict.json"
    src.write_text(json.dumps([{"term": "고혈압", "definition": "x"}, {"term": "빈혈", "definition": " "}], ensure_ascii=False))
    out = tmp_path / "dict.jsonl"
    code, err = _run(["prepare", "dict", "--data", str(src), "--output", str(out)], capsys)
    assert code == 2 and f"{src}:2" in err and "definition" in err and not out.exists()


def test_existing_prepared_file_is_not_overwritten(tmp_path, capsys):
    src = tmp_path / "dict.json"
    src.write_text(json.dumps([{"term": "고혈압", "definition": "x"}], ensure_ascii=False))
    out = tmp_path / "dict.jsonl"
    out.write_text("keep me")
    code, err = _run(["prepare", "dict", "--data", str(src), "--output", str(out)], capsys)
    assert code == 2 and "--overwrite" in err and out.read_text() == "keep me"
    assert _run(["prepare", "dict", "--data", str(src), "--output", str(out), "--overwrite"], capsys)[0] == 0
    assert "고혈압" in out.read_text()


def test_tokenizer_without_end_of_turn_fails_early():
    from kormedqa.chat import stop_token_ids
    from kormedqa.errors import ModelError

    class NoTurns:
        unk_token_id = 3
        eos_token_id = 1

        def convert_tokens_to_ids(self, token):
            return self.unk_token_id

    with pytest.raises(ModelError, match="<end_of_turn>"):
        stop_token_ids(NoTurns())


def test_out_of_memory_names_the_settings_to_lower(monkeypatch, capsys, tmp_path):
    import kormedqa.cli as cli
    from kormedqa.sft import TrainConfig

    (tmp_path / "train_log.jsonl").write_text("")  # a run folder with finished work to resume

    def boom(argv):
        cli.parse(TrainConfig, ["--output", str(tmp_path)], "kormedqa train")
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setitem(cli.COMMANDS, "train", boom)
    code, err = _run(["train", "mcq"], capsys)
    assert code == 2 and "--batch-size" in err and "--max-length" in err and "--resume" in err


def test_config_yaml_sets_flags_and_flags_win(tmp_path, capsys):
    src = tmp_path / "dict.json"
    src.write_text(json.dumps([{"term": "고혈압", "definition": "x"}], ensure_ascii=False))
    cfg = tmp_path / "prepare.yaml"
    cfg.write_text(f"data: [{src}]\noutput: {tmp_path / 'from_yaml.jsonl'}\n")
    assert _run(["prepare", "dict", "--config", str(cfg)], capsys)[0] == 0
    assert (tmp_path / "from_yaml.jsonl").exists()
    assert _run(["prepare", "dict", "--config", str(cfg), "--output", str(tmp_path / "flag.jsonl")], capsys)[0] == 0
    assert (tmp_path / "flag.jsonl").exists()
