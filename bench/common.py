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
    from kormedqa.precision import cpu_flags

    flags = cpu_flags()
    return [f for f in SPEED_FLAGS if f in flags]


def machine() -> dict:
    """Date, CPU (model, speed-relevant flags, what `--precision auto` picks there and why), threads, versions."""
    import torch

    from kormedqa.precision import choose
    from kormedqa.runs import cpu_name

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
    ratios stay comparable across runs; `bench/learning.py` compares the templates themselves."""
    from kormedqa.data import load_dictionary, load_mcq
    from kormedqa.formats import Glossary
    from kormedqa.prepare import mcq_rows

    glossary = Glossary(load_dictionary(SAMPLE / "dictionary.json", SAMPLE / "characters.json"))
    return mcq_rows(load_mcq(SAMPLE / "mcq", split="train"), seed, glossary, template=template)


def write_result(name: str, payload: dict) -> Path:
    from kormedqa.runs import write_json_atomic

    path = RESULTS / f"{name}.json"
    write_json_atomic(path, payload)
    return path
