"""Several processes train the model one process trains: a real two-process gloo run on CPU.

The launch is the documented one (`accelerate launch --config_file recipes/accelerate/multi_gpu.yaml
--num_processes 2 -m kormedqa train ... --device cpu`): torchrun underneath, DDP over gloo, the code
path of several GPUs. Questions of different lengths make a per-process token mean differ from the
global one, so a loss normalised per process, or parts logged from process 0 alone, would show.

Tolerance: fp32 everywhere, LoRA dropout 0 (dropout draws differ per process); what differs is the
order of floating-point sums (gloo all-reduce, one packed row vs two): per-step losses agree to
1e-4 relative, adapter weights after three updates to 1e-5 absolute (measured: ~1e-6).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import assert_same_results

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "KORMEDQA_LOG": "WARNING",
       "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "ACCELERATE_USE_CPU"):
    ENV.pop(var, None)

QUESTIONS = [
    ("짧은 질문?", "짧다", "A"),
    ("훨씬 더 긴 질문입니다. 고혈압의 정의와 진단 기준, 그리고 치료 방법에 대해 옳은 것은 무엇인가?",
     "고혈압은 혈압이 정상 범위보다 높은 상태이며 여러 번 측정해 진단한다. 따라서 정답은 C이다.", "C"),
    ("빈혈의 정의는?", "빈혈은 혈액의 산소 운반 능력이 감소한 상태이다.", "B"),
    ("폐렴에서 가장 흔히 관찰되는 소견으로 옳은 것은 무엇인가? 다음 중 고르시오.", "폐렴은 폐 실질의 염증이다.", "E"),
]


def _prepared(path: Path, n: int) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for q, why, letter in QUESTIONS[:n]:
            prompt = f"<start_of_turn>user\nReasoning 후 정답 알파벳 하나만 답하세요.\n\n{q}\nA. 가\nB. 나\nC. 다\nD. 라\nE. 마<end_of_turn>"
            completion = f"<start_of_turn>model\n<reasoning>{why}</reasoning>{letter}<end_of_turn>"
            fh.write(json.dumps({"prompt": prompt, "completion": completion}, ensure_ascii=False) + "\n")
    return path


def _train(launcher: list[str], data: Path, base: Path, out: Path, batch: int, accum: int, weight: str):
    args = ["-m", "kormedqa", "train", "mcq", "--data", data, "--base-model", base, "--output", out,
            "--max-steps", 3, "--batch-size", batch, "--grad-accum", accum, "--learning-rate", 1e-3,
            "--lora-r", 8, "--lora-alpha", 16, "--lora-dropout", 0, "--answer-weight", weight,
            "--device", "cpu", "--precision", "fp32", "--seed", 3]
    run = subprocess.run([*launcher, *map(str, args)], capture_output=True, text=True, env=ENV, timeout=600)
    assert run.returncode == 0, _failure(run.stderr)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return [row for row in log if "loss" in row]


def _adapter(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(out / "adapter" / "adapter_model.safetensors")


ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(REPO / "recipes" / "accelerate" / "multi_gpu.yaml"), "--num_processes", "2"]


@pytest.mark.slow
@pytest.mark.parametrize("weight, n, per_process, accum", [
    ("none", 2, 1, 1),  # the case: global batch 2 = 1 per process x 2 processes
    ("2/3", 4, 1, 2),   # the answer-weighted loss, counts gathered over accumulation and processes
])
def test_two_processes_train_the_one_process_model(tmp_path, tiny_model_dir, weight, n, per_process, accum):
    data = _prepared(tmp_path / "rows.jsonl", n)
    one = _train([sys.executable], data, tiny_model_dir, tmp_path / "one", 2 * per_process, accum, weight)
    two = _train(ACCELERATE, data, tiny_model_dir, tmp_path / "two", per_process, accum, weight)

    assert [r["step"] for r in two] == [1, 2, 3]  # logged once per step, by the main process only
    assert [r["epoch"] for r in two] == [r["epoch"] for r in one]  # same global batch (not 1 per step)
    for a, b in zip(one, two, strict=True):
        for key in ("loss", "answer_loss", "reasoning_loss", "answer_token_accuracy", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (key, a["step"])
    assert one[0]["loss"] != pytest.approx(one[-1]["loss"], rel=1e-3)  # the steps did update the model

    wa, wb = _adapter(tmp_path / "one"), _adapter(tmp_path / "two")
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], rtol=1e-4, atol=1e-5)
    assert not list((tmp_path / "two").rglob("*.tmp-*"))
    assert len(list((tmp_path / "two" / "tensorboard").rglob("events.out.tfevents*"))) == 1  # main process only


def test_accelerate_cpu_flag_starting_one_process_is_refused(monkeypatch):
    """`accelerate launch --cpu --num_processes 2` runs ONE process: it would train on half the batch."""
    from kormedqa.errors import UsageError
    from kormedqa.launch import check_launch

    for var in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    with pytest.raises(UsageError, match="--multi_gpu"):
        check_launch("train")
    monkeypatch.setenv("WORLD_SIZE", "2")  # launched for real (torchrun / accelerate --multi_gpu)
    check_launch("train")
    check_launch("loop")
    check_launch("eval")
    for command in ("cpt", "merge", "demo", "prepare"):  # each process would write the same files
        with pytest.raises(UsageError, match="one process"):
            check_launch(command)


# ---------------------------------------------------------------- the loop and evaluation on two processes

def _loop(launcher: list[str], data: dict, base: Path, out: Path, batch: int, loops: int, resume: bool = False):
    """The recipe header's command, `kormedqa loop --config recipes/medgemma-4b-seed.yaml`, with tiny overrides."""
    args = ["-m", "kormedqa", "loop", "--config", REPO / "recipes" / "medgemma-4b-seed.yaml",
            "--base_model", base, "--dictionary", data["dictionary"], "--train_data", data["mcq"],
            "--eval_data", data["mcq"], "--output", out, "--max_loops", loops, "--patience", 5,
            "--dict_max_steps", 1, "--mcq_max_steps", 1, "--dict_batch_size", batch, "--mcq_batch_size", batch,
            "--dict_grad_accum", 1, "--mcq_grad_accum", 1, "--dict_learning_rate", 0.01, "--mcq_learning_rate", 0.01,
            "--lora_r", 4, "--lora_alpha", 8, "--lora_dropout", 0, "--max_new_tokens", 4, "--eval_batch_size", 2,
            "--dict_eval_limit", 3, "--device", "cpu", "--precision", "fp32", *(["--resume"] if resume else [])]
    run = subprocess.run([*launcher, *map(str, args)], capture_output=True, text=True, env=ENV, timeout=900)
    assert run.returncode == 0, _failure(run.stderr)
    return json.loads((out / "history.json").read_text())


def _same(a, b, path=""):
    """Equal, floats to 1e-4 relative (two processes sum gradients in another order: weights differ ~1e-7)."""
    assert_same_results(a, b, path, rel=1e-4, abs_=1e-4)


@pytest.mark.slow
def test_two_process_loop_with_resume_equals_one_process(tmp_path, medgemma_standin):
    """accelerate launch -m kormedqa loop on MedGemma's multimodal layout: two loops in one process =
    one loop in two processes + --resume for the second, in metrics and per-question predictions."""
    from helpers import write_sample

    data = write_sample(tmp_path / "data")
    one = _loop([sys.executable], data, medgemma_standin, tmp_path / "one", batch=2, loops=2)
    _loop(ACCELERATE, data, medgemma_standin, tmp_path / "two", batch=1, loops=1)
    two = _loop(ACCELERATE, data, medgemma_standin, tmp_path / "two", batch=1, loops=2, resume=True)

    assert [l["loop"] for l in two["loops"]] == [1, 2]
    for a, b in zip(one["loops"], two["loops"], strict=True):
        _same(a["metrics"], b["metrics"], f"loop {a['loop']}")
        assert a["training"]["mcq"]["train_loss"] == pytest.approx(b["training"]["mcq"]["train_loss"], rel=1e-4)
    for loop in (1, 2):
        for folder in ("eval", "eval_dict"):
            rows = [[json.loads(line) for line in (tmp_path / run / f"loop_{loop}" / folder / "predictions.jsonl")
                     .read_text().splitlines()] for run in ("one", "two")]
            assert len(rows[0]) == len(rows[1]) > 0
            _same(rows[0], rows[1], f"loop {loop} {folder}")  # each question once, same order, same answers
    assert not list((tmp_path / "two").rglob("*.tmp-*"))
    adapter = tmp_path / "two" / "final" / "adapter_model.safetensors"
    from safetensors.torch import load_file

    assert all(".language_model." in k for k in load_file(adapter))


def test_each_process_scores_whole_batches_each_item_once(monkeypatch):
    from kormedqa.launch import shard_batches

    order = [7, 3, 9, 0, 4, 1, 8, 2, 6, 5, 10]
    for world in (1, 2, 3, 5):
        monkeypatch.setenv("WORLD_SIZE", str(world))
        shares = []
        for rank in range(world):
            monkeypatch.setenv("RANK", str(rank))
            shares.append(shard_batches(order, 3))
        assert sorted(i for s in shares for i in s) == sorted(order)
        batches = [order[k:k + 3] for k in range(0, len(order), 3)]
        for rank, share in enumerate(shares):  # the one-process batches, dealt round-robin
            assert share == sorted(i for b in batches[rank::world] for i in b)


def _failure(stderr: str) -> str:
    """Each rank's one-line kormedqa error first (a rank that exits 2 says why in one line, which the
    other rank's traceback would push out of the tail), then the tail."""
    return "\n".join([line for line in stderr.splitlines() if "error: " in line][:4] + [stderr[-3000:]])
