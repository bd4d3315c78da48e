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


def _arm(hits):
    preds = [{"id": f"q{i}", "gold": "A", "prediction": "A" if h else "B", "correct": h, "cloze_correct": h}
             for i, h in enumerate(hits)]
    acc = sum(hits) / len(hits)
    return {"metrics": {"accuracy": {"value": acc}}, "preds": preds}


def test_learning_compares_each_arm_with_its_own_control():
    learning = _script("learning")
    results = {"dictline_rehearse_long": _arm([True] * 10 + [False] * 2),
               "dictline_mcq_only": _arm([False] * 12),
               "rotate3_mcq_only": _arm([True] * 5 + [False] * 7)}
    assert learning.control_of("dictline_rehearse_long") == "dictline_mcq_only"
    assert learning.control_of("rotate3_rehearse_long") == learning.CONTROL == "rotate3_mcq_only"
    tests = learning.paired_tests(results["dictline_mcq_only"], results["dictline_rehearse_long"])
    # 10 discordant pairs, all for the arm: exact two-sided p = 2 * 0.5**10.
    assert tests["accuracy"]["p_value"] == pytest.approx(2 * 0.5 ** 10)
    summary = learning.best_arm(results, {"dictline_rehearse_long": tests})
    assert "dictline_rehearse_long (83.3%, McNemar p = 0.002 vs dictline_mcq_only); it meets the goal" in summary


def test_learning_reuses_stored_arms_only_from_the_same_settings(tmp_path, monkeypatch):
    learning = _script("learning")
    monkeypatch.setattr(learning, "HERE", tmp_path)
    (tmp_path / "results").mkdir()
    settings = {"max_new_tokens": 192, "eval_batch_size": 32, "precision": "bf16", "seed": 42}
    stored = {"settings": settings, "arms": {"base": None, "recall": learning.ARMS["recall"], "gone": {"x": 1}},
              "results": {"base": _arm([True]), "recall": _arm([False]), "gone": _arm([True]),
                          "no_preds": {"metrics": {}}}}
    (tmp_path / "results" / "learning_bf16.json").write_text(json.dumps(stored))
    args = type("Args", (), {"results": "learning_bf16", **settings})
    assert set(learning.stored_arms(args)) == {"base", "recall"}  # "gone" changed its definition
    args.precision = "fp32"
    assert learning.stored_arms(args) == {}


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


def test_learning_star_arm_runs_at_tiny_scale(tmp_path, monkeypatch, tiny_model_dir):
    """The STaR arm end to end on a tiny model: dictionary stage, its checkpoint writes the rationales,
    the MCQ stage continues that adapter on them, the test split is scored."""
    import sys
    from types import SimpleNamespace

    sys.path.insert(0, str(Path(__file__).parent))
    from helpers import write_sample

    learning = _script("learning")
    sample = tmp_path / "sample"
    write_sample(sample, n_train=4, n_test=2)
    (sample / "dictionary.json").write_text((sample / "dict.json").read_text())
    (sample / "characters.json").write_text(json.dumps([{"term": "↑", "definition": "증가", "category": "symbol"}]))
    monkeypatch.setattr(learning, "SAMPLE", sample)
    spec = {**learning.ARMS["star_dictline"], "dict_epochs": 1.0, "mcq_epochs": 1.0,
            "star": {"samples": 1, "temperature": 1.0, "top_p": 0.95, "max_new_tokens": 4, "shots": 1}}
    args = SimpleNamespace(model=str(tiny_model_dir), eval_batch_size=4, max_new_tokens=4, precision="fp32", seed=1)
    work = tmp_path / "work"
    result = learning.run_star("star", spec, args, work)
    made = result["rationales"]
    assert made["n"] == 4 and made["teacher"] + made["rationalised"] + made["template"] == 4
    assert result["rationale_questions"] == 4 and result["train_seconds"] > 0 and len(result["preds"]) == 2
    teacher = str((work / "star" / "dict" / "loop_1" / "after_type1").resolve())
    written = json.loads((work / "star" / "rationales" / "run.json").read_text())
    assert written["teacher"]["model"] == teacher and written["sampling"]["samples"] == 1
    loop = json.loads((work / "star" / "loop" / "run.json").read_text())["config"]
    assert loop["base_model"] == teacher and loop["stages"] == "mcq"
    assert loop["rationales"] == str(work / "star" / "rationales" / "rationales.jsonl")
