"""The benchmark scripts that no CI machine runs for real still run: gpu_check --smoke, precision_agreement."""
import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _script(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # every part of bench/gpu_check.py end to end
def test_gpu_check_smoke_runs_every_part_on_cpu(tokenizer_dir, tmp_path, monkeypatch, capsys):
    """The same code the H200 runs (training both arms, letter/cloze scoring, generation), tiny and on CPU,
    as a fresh checkout runs it: no --tokenizer and no bench/gpu_assets (the docstring's command)."""
    out = tmp_path / "gpu.json"
    gpu_check = _script("gpu_check")
    monkeypatch.setattr(gpu_check, "ASSETS", tmp_path / "no_assets")
    monkeypatch.setenv("KORMEDQA_TEST_CACHE", str(tokenizer_dir.parent))  # the tokenizer the tests built
    assert gpu_check.main(["--out", str(tmp_path / "unused.json")]) == 2  # the full check says what to run first
    assert "--prepare" in capsys.readouterr().err
    assert gpu_check.main(["--smoke", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["smoke"] and result["device"] == "cpu" and result["precision"]["reason"]
    training = result["sizes"]["tiny"]["training"]
    k = training["kormedqa"]
    assert k["tokens_per_s"] > 0 and 0 < k["mfu"] and k["tokens_per_step"][0] > 0 and k["losses"]
    assert training["params"]["lm_head"] == training["params"]["total"] - training["params"]["body"]  # tied
    if "skipped" not in training["trl"]:
        # Same weights, same example, same loss (fp32 here; the GPU run reports its bf16 delta).
        assert training["loss_delta_step1"] < 1e-3 and training["speedup_vs_trl"] > 0
    scoring = result["sizes"]["tiny"]["scoring"]
    assert scoring["letter_loglik"]["questions_per_s"] > 0 and scoring["generation"]["tokens_per_s"] > 0
    assert "questions_per_s" in scoring["cloze"] or "skipped" in scoring["cloze"]
    assert "/" in scoring["generation"]["same_as_hf_generate"]
    assert result["summary"].startswith("gpu_check (")


def test_gpu_check_sizes_are_gemma3_270m_and_4b():
    from transformers import Gemma3TextConfig

    sizes = _script("gpu_check").SIZES
    assert sizes["4b"]["hidden_size"] == 2560 and sizes["4b"]["num_hidden_layers"] == 34
    assert sizes["4b"]["intermediate_size"] == 10240 and sizes["4b"]["vocab_size"] == 262208
    assert (sizes["4b"]["num_attention_heads"], sizes["4b"]["num_key_value_heads"], sizes["4b"]["head_dim"]) == (8, 4, 256)
    assert sizes["4b"]["sliding_window"] == 1024
    for shape in sizes.values():
        Gemma3TextConfig(**shape)  # every field is one transformers knows
    fetched = BENCH.parent / "models" / "gemma3-270m" / "config.json"  # where `make demo` put the real model
    if fetched.exists():
        real = json.loads(fetched.read_text())
        assert all(real[k] == v for k, v in sizes["270m"].items())


@pytest.fixture()
def plain_cpu(monkeypatch):
    from kormedqa import hardware as P

    choice = P.decide_cpu(set(), lambda: pytest.fail("no probe without a flag"), machine="x86_64", cpu="simulated")
    monkeypatch.setattr(P, "_this_cpu", lambda: choice)


def test_precision_agreement_skips_where_bf16_is_emulated(plain_cpu, tmp_path):
    out = tmp_path / "pa.json"
    assert _script("precision_agreement").main(["--device", "cpu", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert "avx512_bf16" in result["skipped"] and "scorers" not in result and result["summary"].startswith(
        "precision agreement: skipped")


@pytest.mark.slow  # scores the sample in fp32 and bf16
def test_precision_agreement_compares_picks_when_forced(tiny_model_dir, tmp_path):
    out = tmp_path / "pa.json"
    args = ["--model", str(tiny_model_dir), "--limit", "3", "--gen-limit", "1", "--max-new-tokens", "2",
            "--device", "cpu", "--force", "--out", str(out)]
    assert _script("precision_agreement").main(args) == 0
    scorers = json.loads(out.read_text())["scorers"]
    letter = scorers["letter_loglik"]
    assert letter["questions"] == 3 and 0 <= letter["agreement"] <= 1
    assert letter["same_picks"] == round(letter["agreement"] * 3)
    assert {"accuracy_fp32", "accuracy_bf16", "mcnemar_bf16_vs_fp32"} <= set(letter)
    assert scorers["generation"]["questions"] == 1 and "identical_outputs" in scorers["generation"]


def test_bench_results_hold_no_absolute_paths(tmp_path):
    """Result files name paths inside the checkout relative to it, not where it was on the machine that ran."""
    common = _script("common")
    payload = {"model": str(common.REPO / "models" / "m"), "runs": [{"work": str(common.REPO / "bench" / "work")}],
               "elsewhere": "/opt/x", "n": 3}
    assert common.repo_relative(payload) == {"model": "models/m", "runs": [{"work": "bench/work"}], "elsewhere": "/opt/x", "n": 3}

    def strings(value):
        if isinstance(value, dict):
            return [s for v in value.values() for s in strings(v)]
        if isinstance(value, list):
            return [s for v in value for s in strings(v)]
        return [value] if isinstance(value, str) else []

    for path in sorted((BENCH / "results").glob("*.json")):
        absolute = [s for s in strings(json.loads(path.read_text())) if s.startswith("/")]
        assert not absolute, f"{path.name}: {absolute[:3]}"
