"""The benchmark scripts that no CI machine runs for real still run: gpu_check --smoke, precision_agreement,
the TRL peer; and the shared pieces in bench/common.py and bench/gpu_assets.py."""
import importlib
import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))  # the scripts import their shared modules (common, gpu_assets) as the scripts run them


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
    monkeypatch.setattr(gpu_check.gpu_assets, "ASSETS", tmp_path / "no_assets")
    monkeypatch.setenv("KORMEDQA_TEST_CACHE", str(tokenizer_dir.parent))  # the tokenizer the tests built
    assert gpu_check.main(["--out", str(tmp_path / "unused.json")]) == 2  # the full check says what to run first
    assert "python bench/gpu_assets.py" in capsys.readouterr().err
    assert gpu_check.main(["--smoke", "--profile", "--out", str(out)]) == 0
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
    # --profile: the top ops of one more training round and of a letter-scoring pass, outside the timings
    assert training["kormedqa_profile"]["by_self_cpu"][0]["self_ms"] > 0
    assert scoring["letter_loglik"]["profile"]["by_self_cpu"] and len(training["kormedqa_rounds_tokens_per_s"]) == 1
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
    monkeypatch.setattr(P, "cpu_auto_choice", lambda: choice)


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


def test_gpu_assets_finds_the_carried_tokenizer_and_says_when_trl_cannot_come(tmp_path, tokenizer_dir, monkeypatch):
    gpu_assets = _script("gpu_assets")
    monkeypatch.setenv("KORMEDQA_TEST_CACHE", str(tokenizer_dir.parent))
    empty = tmp_path / "empty"
    assert gpu_assets.default_tokenizer(False, empty) is None  # the full check: nothing carried, nothing found
    assert gpu_assets.default_tokenizer(True, empty) == str(tokenizer_dir)  # --smoke: the cached one
    carried = tmp_path / "carried"
    (carried / "tokenizer").mkdir(parents=True)
    (carried / "tokenizer" / "tokenizer.json").write_text("{}")
    assert gpu_assets.default_tokenizer(False, carried) == str(carried / "tokenizer")
    # What prepare() writes: the tokenizer packed, unpacked once where the check runs.
    packed = tmp_path / "packed"
    packed.mkdir()
    import shutil

    shutil.make_archive(str(packed / "tokenizer"), "xztar", root_dir=carried, base_dir="tokenizer")
    unpacked = gpu_assets.default_tokenizer(False, packed, unpack_to=tmp_path / "unpacked")
    assert unpacked == str(tmp_path / "unpacked" / "tokenizer") and (tmp_path / "unpacked" / "tokenizer" / "tokenizer.json").read_text() == "{}"
    # Where TRL is missing and no wheels were carried, the arm is skipped with the command to run.
    monkeypatch.setitem(sys.modules, "trl", None)  # None in sys.modules: `import trl` raises ImportError
    why = gpu_assets.ensure_trl(empty, tmp_path / "site")
    assert "no wheels in" in why and "bench/gpu_assets.py" in why and not (tmp_path / "site").exists()
    # ... and the whole stack stays the machine's, saying why, with sys.path untouched.
    before = list(sys.path)
    assert gpu_assets.activate(empty, tmp_path / "site") == {"source": "machine", "why": why.split(" and ", 1)[1]}
    assert sys.path == before


def test_a_carried_stack_that_imports_goes_first_on_sys_path_once(tmp_path, monkeypatch):
    """activate()'s success path: the carried wheels installed into the site folder, which goes first on
    sys.path and on PYTHONPATH (for subprocesses) once, however often it is called. The carried set here is
    one hand-made wheel; the stack the probe imports is this venv's own."""
    import zipfile

    gpu_assets = _script("gpu_assets")
    wheels = tmp_path / "assets" / "wheels"
    wheels.mkdir(parents=True)
    files = {"kormedqa_probe_pkg/__init__.py": "VALUE = 7\n",
             "kormedqa_probe_pkg-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: kormedqa-probe-pkg\nVersion: 0.1\n",
             "kormedqa_probe_pkg-0.1.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files["kormedqa_probe_pkg-0.1.dist-info/RECORD"] = "".join(f"{name},,\n" for name in files) + "kormedqa_probe_pkg-0.1.dist-info/RECORD,,\n"
    with zipfile.ZipFile(wheels / "kormedqa_probe_pkg-0.1-py3-none-any.whl", "w") as whl:
        for name, text in files.items():
            whl.writestr(name, text)
    site = tmp_path / "site"
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delenv("PYTHONPATH", raising=False)
    first = gpu_assets.activate(tmp_path / "assets", site)
    assert first["source"] == "carried", first
    assert first["versions"]["transformers"] == __import__("transformers").__version__
    assert sys.path[0] == str(site) and os.environ["PYTHONPATH"] == str(site)
    assert importlib.import_module("kormedqa_probe_pkg").VALUE == 7
    assert gpu_assets.activate(tmp_path / "assets", site)["source"] == "carried"
    assert sys.path.count(str(site)) == 1 and os.environ["PYTHONPATH"] == str(site)
    sys.modules.pop("kormedqa_probe_pkg", None)


def test_the_carried_stack_is_the_pinned_libraries_and_what_they_need_beyond_the_gpu_image():
    """bench/gpu_assets.py carries transformers, peft, accelerate, trl and datasets at the versions installed
    here, with their dependencies on CPython 3.12/Linux, never torch or what the GPU machine's image has."""
    from importlib import metadata

    wanted = dict(r.split("==") for r in _script("gpu_assets").carried_requirements())
    for name in ("transformers", "peft", "accelerate", "trl", "datasets", "huggingface-hub"):
        assert wanted[name] == metadata.version(name)
    assert not {"torch", "numpy", "pyarrow", "triton", "tokenizers"} & set(wanted)
    assert not any(n.startswith("nvidia") for n in wanted)


@pytest.mark.slow  # one loop of the seed's recipe on the tiny multimodal stand-in
def test_gpu_loop_smoke_runs_the_seed_recipe_on_a_multimodal_standin(tokenizer_dir, medgemma_standin, tmp_path):
    """bench/gpu_loop.py --smoke: `kormedqa loop --config recipes/medgemma-4b-seed.yaml` on the tiny
    stand-in of MedGemma-4B's layout, two steps a stage; the JSON has each stage, both evaluations and
    the full-loop estimate built from them."""
    out = tmp_path / "gpu_loop.json"
    gpu_loop = _script("gpu_loop")
    assert gpu_loop.main(["--smoke", "--tokenizer", str(tokenizer_dir), "--standin", str(medgemma_standin),
                          "--work", str(tmp_path / "work"), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["exit_status"] == 0 and result["recipe"] == "recipes/medgemma-4b-seed.yaml"
    assert {s: result["training"][s]["steps"] for s in ("dict", "mcq")} == {"dict": 2, "mcq": 2}
    assert {k: v["questions"] for k, v in result["evaluation"].items()} == {"dev": 2, "test": 2}
    est = result["full_loop_estimate"]
    assert est["mcq"]["steps_per_epoch"] == -(-3401 // 16) and est["dict"]["steps_per_epoch"] == -(-484 // 16)
    assert est["loop_hours"] * 3600 == pytest.approx(est["dict"]["epoch_seconds"] + est["mcq"]["epoch_seconds"]
                                                     + est["dev_eval_seconds"] + est["other_seconds"])
    assert 0 < est["other_seconds"] < result["loop_seconds"] and result["size"] == "given: hidden 64, 2 layers"
    assert not (tmp_path / "work" / "run").exists()  # a finished run's random checkpoints are not kept


@pytest.mark.slow  # one TRL training step on the tiny model
def test_trl_peer_trains_on_the_tokens_kormedqa_trains_on(tiny_model_dir, tmp_path):
    """The TRL arm both training benchmarks run (common.run_trl_sft, the model from common.load_pretrained)
    feeds the same tokens and supervises the same positions as kormedqa's own tokenisation: the
    comparison is like for like."""
    from kormedqa.batching import tokenize_rows
    from kormedqa.hardware import choose

    common = _script("common")
    rows = sorted(common.prepared_mcq_rows(42), key=lambda r: len(r["prompt"]) + len(r["completion"]))[:1]
    choice = choose("cpu", "fp32")
    model_dir, tokenizer, model = common.load_pretrained(str(tiny_model_dir), choice)
    assert model_dir == str(tiny_model_dir) and not model.training
    batches = []

    def keep(collate):
        return lambda features: batches.append(collate(features)) or batches[-1]

    run = common.run_trl_sft(model, tokenizer, rows, tmp_path / "trl", choice, steps=1, batch_size=1, learning_rate=1e-5,
                             max_length=512, seed=42, wrap_collator=keep, disable_tqdm=True)
    ours = tokenize_rows(tokenizer, rows, 512)[0]
    assert batches and run["data_collator"] is not None and len(run["losses"]) == 1 and run["seconds"] > 0
    assert batches[0]["input_ids"][0].tolist() == ours["input_ids"]
    assert batches[0]["labels"][0].tolist() == ours["labels"]


def test_every_script_runs_on_a_fresh_checkout_by_default():
    """A fresh checkout has no models/ folder: a script's default --model is the embedded default's short
    name, which `resolve_model_path` fetches, never a path inside the checkout (make bench stopped there)."""
    import re

    from kormedqa.modeling import DEFAULT_MODEL_NAME

    scripts = sorted(BENCH.glob("*.py")) + sorted((BENCH.parent / "experiments").glob("*.py"))
    defaults = {p.name: re.findall(r'add_argument\(\s*"--model",\s*default=([^,)]+)', p.read_text()) for p in scripts}
    assert defaults["train_throughput.py"], "the pattern no longer finds the scripts' --model"
    wrong = {name: d for name, found in defaults.items() for d in found if d != repr(DEFAULT_MODEL_NAME).replace("'", '"')}
    assert not wrong, wrong


def test_gpu_loop_records_a_crash_and_keeps_the_run_folder(tokenizer_dir, medgemma_standin, tmp_path, monkeypatch):
    """A GPU machine gives one run: a loop that dies of a bug (as the H200's first attempt did) still
    leaves the JSON with its error, exit status 1, and the run folder with its logs."""
    from kormedqa import cli

    def crash(argv):
        (tmp_path / "work" / "run").mkdir(parents=True)
        raise RuntimeError("Version 2 of 'kernels-community/rotary' is not available in the local cache")

    monkeypatch.setattr(cli, "main", crash)
    out = tmp_path / "gpu_loop.json"
    assert _script("gpu_loop").main(["--smoke", "--tokenizer", str(tokenizer_dir), "--standin", str(medgemma_standin),
                                     "--work", str(tmp_path / "work"), "--out", str(out)]) == 1
    result = json.loads(out.read_text())
    assert result["exit_status"] == 1 and "kernels-community/rotary" in result["error"]
    assert "training" not in result and (tmp_path / "work" / "run").is_dir() and result["run_folder_kept"]


@pytest.mark.slow  # gpu_check --smoke once more, its TRL arm out of memory
def test_gpu_check_keeps_the_rounds_it_measured_when_one_runs_out_of_memory(tmp_path, monkeypatch):
    import torch

    gpu_check = _script("gpu_check")

    def oom(*a, **kw):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(gpu_check, "train_trl", oom)
    out = tmp_path / "gpu.json"
    assert gpu_check.main(["--smoke", "--sizes", "tiny", "--out", str(out)]) == 0
    training = json.loads(out.read_text())["sizes"]["tiny"]["training"]
    assert training["kormedqa"]["tokens_per_s"] > 0 and "speedup_vs_trl" not in training
    assert training["failed_rounds"] == ["trl round 1: out of memory: CUDA out of memory. Tried to allocate 2.00 GiB"]
