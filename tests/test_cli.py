"""The CLI as a user runs it: exit codes, messages, files written (or not)."""
import json
import os
import subprocess

import pytest
import sys
from pathlib import Path


from helpers import write_sample

pytestmark = pytest.mark.slow  # every test runs `kormedqa` as a subprocess (make test-fast leaves them out)

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "KORMEDQA_LOG": "WARNING"}


def kq(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "kormedqa", *map(str, args)], capture_output=True, text=True,
                          env=ENV, cwd=cwd, timeout=600)


def test_help_lists_every_command(capsys):
    out = kq("--help")
    assert out.returncode == 0
    for cmd in ("model fetch", "prepare", "train", "merge", "eval", "loop", "cpt", "demo"):
        assert cmd in out.stdout
    assert kq("nonsense").returncode == 2
    # Each command's own --help through the same entry point, in this process: a subprocess each
    # re-imported torch for ~5 s apiece; the entry point itself is what the two runs above exercise.
    from kormedqa.cli import main

    for cmd in ("eval", "loop", "cpt", "demo", "merge"):
        capsys.readouterr()
        try:
            code = main([cmd, "--help"])
        except SystemExit as stop:
            code = stop.code
        assert code in (0, None) and "usage:" in capsys.readouterr().out, cmd


def test_help_and_a_mistyped_command_import_no_torch():
    """The entry point imports a command's modules only when that command runs (docs/architecture.md)."""
    code = ("import sys; from kormedqa.cli import main; "
            "codes = [main(['--help']), main(['nonsense'])]; "
            "print(codes, sorted(m for m in ('torch', 'transformers', 'peft', 'trl', 'datasets') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=600)
    assert out.stdout.strip().splitlines()[-1] == "[0, 2] []", out.stdout + out.stderr


def test_prepare_mcq_is_byte_identical_per_seed(tmp_path):
    data = write_sample(tmp_path / "d", n_train=40)
    outs = []
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        r = kq("prepare", "mcq", "--data", data["mcq"], "--split", "train", "--dictionary", data["dictionary"],
               "--output", tmp_path / f"{name}.jsonl", "--seed", seed)
        assert r.returncode == 0, r.stderr
        outs.append((tmp_path / f"{name}.jsonl").read_bytes())
    assert outs[0] == outs[1]
    assert outs[0] != outs[2]
    rows = [json.loads(l) for l in outs[0].decode().splitlines()]
    assert [r["format"] for r in rows].count("detailed") == 2  # 5% of 40
    assert all(r["prompt"].startswith("<start_of_turn>user\nReasoning 후 정답 알파벳 하나만 답하세요.\n\n") for r in rows)


def test_prepare_dict_matches_spec_row(tmp_path):
    data = write_sample(tmp_path / "d")
    r = kq("prepare", "dict", "--data", data["dictionary"], "--output", tmp_path / "dict.jsonl")
    assert r.returncode == 0, r.stderr
    first = json.loads((tmp_path / "dict.jsonl").read_text().splitlines()[0])
    assert first["prompt"] == "<start_of_turn>user\nMeaning of word 고혈압:<end_of_turn>"
    assert first["completion"] == "<start_of_turn>model\nHypertension. 혈압이 정상 범위보다 높은 상태<end_of_turn>"


def test_malformed_line_names_file_and_line_and_writes_nothing(tmp_path):
    data = write_sample(tmp_path / "d")
    bad = Path(data["mcq"]) / "train.jsonl"
    lines = bad.read_text().splitlines()
    row = json.loads(lines[2])
    row["answer"] = 6
    lines[2] = json.dumps(row, ensure_ascii=False)
    bad.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    r = kq("prepare", "mcq", "--data", bad, "--output", out)
    assert r.returncode == 2
    assert f"{bad}:3" in r.stderr and "answer" in r.stderr
    assert not out.exists()


def test_overlap_with_eval_set_is_refused_unless_allowed(tmp_path):
    data = write_sample(tmp_path / "d")
    test_file = Path(data["mcq"]) / "test.jsonl"
    out = tmp_path / "out.jsonl"
    r = kq("prepare", "mcq", "--data", test_file, "--eval-data", test_file, "--output", out)
    assert r.returncode == 2 and "--allow-overlap" in r.stderr and not out.exists()
    r = kq("prepare", "mcq", "--data", test_file, "--eval-data", test_file, "--output", out, "--allow-overlap")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["overlap"]["count"] == 4


def test_train_merge_eval_end_to_end(tmp_path, tiny_model_dir):
    data = write_sample(tmp_path / "d")
    prepared = tmp_path / "train.jsonl"
    assert kq("prepare", "mcq", "--data", data["mcq"], "--split", "train", "--output", prepared).returncode == 0
    r = kq("train", "mcq", "--data", prepared, "--base-model", tiny_model_dir, "--output", tmp_path / "sft",
           "--max-steps", 2, "--batch-size", 2, "--grad-accum", 1, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    adapter = tmp_path / "sft" / "adapter"
    assert (adapter / "adapter_model.safetensors").exists()
    logged = [json.loads(l) for l in (tmp_path / "sft" / "train_log.jsonl").read_text().splitlines()]
    assert [l["step"] for l in logged if "loss" in l] == [1, 2]
    assert list((tmp_path / "sft" / "tensorboard").rglob("events.out.tfevents*"))
    r = kq("train", "mcq", "--data", prepared, "--base-model", tiny_model_dir, "--output", tmp_path / "sft")
    assert r.returncode == 2 and "--overwrite" in r.stderr
    assert kq("merge", "--adapter", adapter, "--output", tmp_path / "merged").returncode == 0
    assert (tmp_path / "merged" / "model.safetensors").exists()
    r = kq("eval", "--model", tmp_path / "merged", "--data", data["mcq"], "--split", "test", "--mode", "loglik",
           "--output", tmp_path / "eval", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["n"] == 4 and "loglik_accuracy" in metrics
    assert len((tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()) == 4


def test_missing_model_fails_before_work(tmp_path):
    data = write_sample(tmp_path / "d")
    r = kq("eval", "--model", tmp_path / "nope", "--data", data["mcq"], "--output", tmp_path / "e")
    assert r.returncode == 2 and "no such model folder" in r.stderr
    assert not (tmp_path / "e").exists()
