"""The lm-eval protocol (issue 23): lm-evaluation-harness's own kormedmcqa task, read back as records.

The sample is copied into the hub's layout with a `fewshot` split taken from its train split (never
from test). A tiny Gemma3 whose ' A'..' E' embeddings are scaled up answers with letters, so lm-eval's
filter reads answers and exact_match is not trivially 0. The agreement test runs `lm_eval` by hand as
a subprocess, with task YAMLs written here literally as STACK_NOTES.md describes, and compares it
with `kormedqa eval --protocol lm-eval` question by question.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kormedqa.data import load_mcq, read_jsonl
from kormedqa.errors import UsageError
from kormedqa.hub import fewshot_split, write_hub_copy
from kormedqa.records import EXAM_TYPES

from helpers import write_sample

REPO = Path(__file__).resolve().parents[1]
GEN = "max_gen_toks=4"  # the task's 1024-token budget is the same on both sides; 4 keeps the test short


@pytest.fixture(autouse=True)
def offline_cache(tmp_path, monkeypatch):
    """`datasets` caches under tmp; lm-eval and datasets stay offline."""
    import datasets

    cache = tmp_path / "hf-datasets"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def hub_copy(tmp_path_factory) -> Path:
    """The shipped sample in the hub's layout: two test questions per exam type, fewshot from train."""
    train = load_mcq(REPO / "data/sample/mcq", split="train")
    test = load_mcq(REPO / "data/sample/mcq", split="test")
    test = [q for exam in EXAM_TYPES for q in [x for x in test if x.exam_type == exam][:2]]
    dev = load_mcq(REPO / "data/sample/mcq", split="dev")  # a loop chooses its best checkpoint on dev
    dev = [q for exam in EXAM_TYPES for q in [x for x in dev if x.exam_type == exam][:2]]
    return write_hub_copy(tmp_path_factory.mktemp("hub") / "KorMedMCQA",
                          {"train": train, "dev": dev, "test": test, "fewshot": fewshot_split(train)})


@pytest.fixture(scope="module")
def letter_model(tmp_path_factory, tiny_model_dir) -> Path:
    """The tiny test model with the ' A'..' E' token embeddings (tied to the output) scaled by 40."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("letter-model")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    ids = [tokenizer(" " + x, add_special_tokens=False)["input_ids"][0] for x in "ABCDE"]
    with torch.no_grad():
        model.get_input_embeddings().weight[ids] *= 40
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_prepare_hub_takes_fewshot_from_train_never_test(tmp_path):
    from kormedqa.prepare import PrepareConfig, run_prepare_hub

    out = tmp_path / "hub"
    info = run_prepare_hub(PrepareConfig(track="hub", data=[str(REPO / "data/sample/mcq")], output=str(out)))
    assert info["fewshot_by_exam_type"] == {e: 5 for e in sorted(EXAM_TYPES)}
    fewshot = {q.id for q in load_mcq(out, split="fewshot")}
    train = [q.id for q in load_mcq(REPO / "data/sample/mcq", split="train")]
    test = {q.id for q in load_mcq(REPO / "data/sample/mcq", split="test")}
    assert fewshot <= set(train) and not fewshot & test and len(fewshot) == 20
    assert [q.id for q in load_mcq(out, split="test")] == [q.id for q in load_mcq(REPO / "data/sample/mcq", split="test")]


def test_lm_eval_protocol_refuses_data_outside_the_hub_layout_before_writing(tmp_path):
    out = tmp_path / "eval"
    proc = subprocess.run([sys.executable, "-m", "kormedqa", "eval", "--protocol", "lm-eval", "--data",
                           str(REPO / "data/sample/mcq"), "--output", str(out), "--model", "nowhere/model"],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")}, cwd=tmp_path)
    assert proc.returncode == 2 and not out.exists()
    assert len(proc.stderr.strip().splitlines()) == 1 and "hub's layout" in proc.stderr, proc.stderr


def test_num_fewshot_is_zero_or_five():
    from kormedqa.evaluate import EvalConfig

    with pytest.raises(UsageError, match="--num-fewshot"):
        EvalConfig(protocol="lm-eval", num_fewshot=3)


def _by_hand(model: Path, hub: Path, shots: int, tmp: Path) -> tuple[dict, dict]:
    """`lm_eval --model hf --tasks ... --include_path ...` as a user runs it: results and samples by question id."""
    import lm_eval

    template = Path(lm_eval.__file__).parent / "tasks" / "kormedmcqa" / "_template_yaml"
    tasks = tmp / f"tasks{shots}"
    tasks.mkdir()
    for exam in EXAM_TYPES:
        (tasks / f"byhand_{exam}.yaml").write_text(
            f"include: {template}\ntask: byhand_kormedmcqa_{exam}\ndataset_name: {exam}\ndataset_path: {hub}\n",
            encoding="utf-8")
    (tasks / "_byhand.yaml").write_text(
        "group: byhand_kormedmcqa\ntask:\n" + "".join(f"  - byhand_kormedmcqa_{e}\n" for e in EXAM_TYPES)
        + "aggregate_metric_list:\n  - metric: exact_match\n    aggregation: mean\n    weight_by_size: true\n"
        "    filter_list: extract_answer\nmetadata:\n  version: 3.0\n", encoding="utf-8")
    out = tmp / f"byhand{shots}"
    subprocess.run([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={model},dtype=float32",
                    "--tasks", "byhand_kormedmcqa", "--include_path", str(tasks), "--num_fewshot", str(shots),
                    "--batch_size", "4", "--device", "cpu", "--gen_kwargs", GEN, "--log_samples",
                    "--output_path", str(out)], check=True, capture_output=True, env=dict(os.environ))
    results = json.loads(next(out.rglob("results_*.json")).read_text(encoding="utf-8"))["results"]
    samples = {s["doc"]["id"]: s for f in out.rglob("samples_*.jsonl") for s in read_jsonl(f)}
    return results, samples


@pytest.mark.slow
@pytest.mark.parametrize("shots", [0, 5])
def test_exact_match_and_answers_equal_lm_evals_own_run(shots, hub_copy, letter_model, tmp_path):
    from kormedqa.evaluate import EvalConfig, run_eval

    out = tmp_path / "ours"
    metrics = run_eval(EvalConfig(protocol="lm-eval", num_fewshot=shots, model=str(letter_model), data=str(hub_copy),
                                  output=str(out), device="cpu", precision="fp32", batch_size=4, lm_eval_gen_kwargs=GEN))
    preds = {p["id"]: p for p in read_jsonl(out / "predictions.jsonl")}
    results, samples = _by_hand(letter_model, hub_copy, shots, tmp_path)

    assert set(preds) == set(samples) and len(preds) == 8
    for qid, sample in samples.items():
        assert preds[qid]["lm_eval_raw_output"] == sample["resps"][0][0]
        assert preds[qid]["lm_eval_prediction"] == sample["filtered_resps"][0]
        assert preds[qid]["lm_eval_correct"] == (sample["exact_match"] == 1.0)
        assert preds[qid]["lm_eval_context"] == sample["arguments"]["gen_args_0"]["arg_0"]
    group = results["byhand_kormedmcqa"]["exact_match,extract_answer"]
    assert metrics["lm_eval_exact_match"]["value"] == pytest.approx(group, abs=1e-12)
    for exam in EXAM_TYPES:
        assert (metrics["lm_eval_exact_match_by_exam_type"][exam]["value"]
                == pytest.approx(results[f"byhand_kormedmcqa_{exam}"]["exact_match,extract_answer"], abs=1e-12))
    assert any(p["lm_eval_prediction"] for p in preds.values()), "the letter model answers: the filter reads letters"
    saved = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert saved["lm_eval"]["num_fewshot"] == shots and saved["lm_eval"]["apply_chat_template"] is False
    # each context: the question, and before it `shots` answered examples (read back normalised: '정답：' -> '정답:')
    assert all(p["lm_eval_context"].count("정답:") == 1 + shots for p in preds.values())


def test_lm_eval_scorer_joins_by_id_on_a_subset_and_beside_generation(hub_copy, letter_model):
    """A subset of the questions (as a loop's --eval-every picks) is scored by lm-eval's `samples`,
    joined by id with the spec's generation scorer; McNemar can pair the two protocols."""
    from kormedqa.evaluate import evaluate_mcq
    from kormedqa.hardware import choose
    from kormedqa.lm_eval_protocol import LmEvalSettings
    from kormedqa.modeling import load_model, load_tokenizer
    from kormedqa.report import significance

    questions = load_mcq(hub_copy, split="test")[::3]
    model = load_model(str(letter_model), choose("cpu", "fp32"))
    metrics, preds = evaluate_mcq(model, load_tokenizer(str(letter_model)), questions, "generate,lm_eval", 4, 4,
                                  model_path=str(letter_model), data=str(hub_copy),
                                  lm_eval=LmEvalSettings(batch_size=4, gen_kwargs=GEN))
    assert [p["id"] for p in preds] == [q.id for q in questions]
    assert metrics["lm_eval_exact_match"]["total"] == len(questions)
    assert sum(p["lm_eval_correct"] for p in preds) == metrics["lm_eval_exact_match"]["correct"]
    assert set(metrics["lm_eval_exact_match_by_exam_type"]) == {q.exam_type for q in questions}
    assert metrics["lm_eval"]["reported"] and metrics["lm_eval"]["installed_task"] is False
    test = significance(preds, preds, "lm_eval_correct")
    assert test["only_a"] == test["only_b"] == 0


@pytest.mark.slow
def test_a_loop_selects_its_best_checkpoint_by_lm_eval_exact_match(hub_copy, letter_model, tmp_path):
    from kormedqa.loop import LoopConfig, run_loop

    data = write_sample(tmp_path / "data")
    history = run_loop(LoopConfig(
        base_model=str(letter_model), dictionary=[data["dictionary"]], train_data=data["mcq"], eval_data=str(hub_copy),
        output=str(tmp_path / "run"), max_loops=2, patience=2, stages="mcq", mcq_max_steps=1, mcq_batch_size=2,
        mcq_grad_accum=1, eval_mode="lm_eval", select_by="lm_eval_exact_match", eval_every=2, eval_batch_size=4,
        lm_eval_gen_kwargs=GEN, device="cpu", precision="fp32", seed=3))
    values = [l["metrics"]["lm_eval_exact_match"]["value"] for l in history["loops"]]
    assert [l["selected_metric"] for l in history["loops"]] == values and len(values) == 2
    assert history["best"]["loop"] == 1 + values.index(max(values)) and history["select_by"] == "lm_eval_exact_match"
    from kormedqa.report import results_table

    assert "lm-eval exact_match" in results_table(history["loops"][0]["metrics"], history).splitlines()[0]
