"""Shared bits of the benchmarks: machine description, the prepared sample data, result files."""
from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
SAMPLE = REPO / "data" / "sample"


# The CPU features that decide matmul speed per precision; the rest of /proc/cpuinfo's flags is noise here.
SPEED_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
               "amx_fp16", "avx_vnni", "avx_ne_convert", "asimd", "sve", "sve2", "bf16", "i8mm")


def cpu_speed_flags() -> list[str]:
    from kormedqa.hardware import cpu_flags

    flags = cpu_flags()
    return [f for f in SPEED_FLAGS if f in flags]


def machine() -> dict:
    """Date, CPU (model, speed-relevant flags, what `--precision auto` picks there and why), threads, versions."""
    import torch

    from kormedqa.hardware import choose
    from kormedqa.hardware import cpu_name

    auto = choose("cpu", "auto")
    return {
        "date": datetime.date.today().isoformat(),
        "cpu": cpu_name(),
        "cpu_flags": cpu_speed_flags(),
        "cpu_auto_precision": auto.precision,
        "cpu_auto_precision_reason": auto.reason,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
    }


def prepared_mcq_rows(seed: int = 42, template: str = "verdict") -> list[dict]:
    """The sample's training MCQs in the spec's format. The speed benchmarks keep the rationale
    template their earlier figures were measured on (`verdict`, ~200 tokens an example), so
    ratios stay comparable across runs; `experiments/learning.py` compares the templates themselves."""
    from kormedqa.data import load_dictionary, load_mcq
    from kormedqa.formats import Glossary
    from kormedqa.prepare import mcq_rows

    glossary = Glossary(load_dictionary(SAMPLE / "dictionary.json", SAMPLE / "characters.json"))
    return mcq_rows(load_mcq(SAMPLE / "mcq", split="train"), seed, glossary, template=template)


def repo_relative(value, repo: Path = REPO):
    """`value` with every string that is an absolute path inside `repo` made relative to it (in
    nested dicts and lists too): a result file says `models/gemma3-270m`, not where the checkout
    happened to be on the machine that ran it."""
    if isinstance(value, dict):
        return {k: repo_relative(v, repo) for k, v in value.items()}
    if isinstance(value, list):
        return [repo_relative(v, repo) for v in value]
    if isinstance(value, str) and value.startswith(str(repo) + "/"):
        return value[len(str(repo)) + 1:]
    return value


def write_result(name: str, payload: dict) -> Path:
    """bench/results/NAME.json, atomically, with paths inside the checkout made relative (`repo_relative`)."""
    from kormedqa.fsio import write_json_atomic

    path = RESULTS / f"{name}.json"
    write_json_atomic(path, repo_relative(payload))
    return path


def run_lm_eval_task(model_dir: str, task: str, task_yaml: str, rows: list[dict], batch_size: int,
                     dtype: str = "float32") -> tuple[float, list[dict], dict]:
    """Run lm-evaluation-harness (hf backend, `dtype`, BOS added, CPU; log-softmax in fp32) on a local task over `rows`.

    `task_yaml` is a template with `{data}` where the JSONL of `rows` goes. Returns (seconds in
    `simple_evaluate`, its samples in row order, its aggregate results for the task). The model
    is loaded before the clock starts, as kormedqa's side is timed without its loading.
    """
    import json
    import tempfile
    import time

    import lm_eval
    from lm_eval.api.registry import get_model
    from lm_eval.tasks import TaskManager

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "questions.jsonl"
        data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        task_dir = Path(tmp) / "tasks"
        task_dir.mkdir()
        (task_dir / f"{task}.yaml").write_text(task_yaml.format(data=data))
        # Below fp32 its log-softmax runs in fp32, as kormedqa's normaliser does.
        softmax = "" if dtype == "float32" else ",softmax_dtype=float32"
        lm = get_model("hf").create_from_arg_string(
            f"pretrained={model_dir},dtype={dtype},add_bos_token=True,device=cpu{softmax}", {"batch_size": batch_size})
        started = time.time()
        out = lm_eval.simple_evaluate(model=lm, tasks=[task], task_manager=TaskManager(include_path=str(task_dir)),
                                      log_samples=True)
        seconds = time.time() - started
    return seconds, sorted(out["samples"][task], key=lambda s: s["doc_id"]), out["results"][task]
