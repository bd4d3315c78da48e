"""Shared bits of the benchmarks: machine description, the prepared sample data, result files."""
from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
SAMPLE = REPO / "data" / "sample"


def machine() -> dict:
    import torch

    from kormedqa.runs import cpu_name

    return {
        "date": datetime.date.today().isoformat(),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
    }


def prepared_mcq_rows(seed: int = 42) -> list[dict]:
    from kormedqa.data import load_dictionary, load_mcq
    from kormedqa.formats import Glossary
    from kormedqa.prepare import mcq_rows

    glossary = Glossary(load_dictionary(SAMPLE / "dictionary.json", SAMPLE / "characters.json"))
    return mcq_rows(load_mcq(SAMPLE / "mcq", split="train"), seed, glossary)


def write_result(name: str, payload: dict) -> Path:
    from kormedqa.runs import write_json_atomic

    path = RESULTS / f"{name}.json"
    write_json_atomic(path, payload)
    return path
