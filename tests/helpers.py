"""Small valid inputs written into a test's tmp folder."""
import json
from pathlib import Path

TERMS = [
    ("고혈압", "Hypertension. 혈압이 정상 범위보다 높은 상태"),
    ("저혈당", "Hypoglycemia. 혈중 포도당 농도가 비정상적으로 낮은 상태"),
    ("빈혈", "Anemia. 혈액의 산소 운반 능력이 감소한 상태"),
    ("폐렴", "Pneumonia. 폐 실질에 생긴 염증"),
    ("치은염", "Gingivitis. 잇몸에 생긴 염증"),
    ("부정맥", "Arrhythmia. 심장 박동의 리듬이 불규칙한 상태"),
]


def write_sample(root: Path, n_train: int = 6, n_test: int = 4, n_dev: int = 2) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    (root / "dict.json").write_text(json.dumps([{"term": t, "definition": d} for t, d in TERMS], ensure_ascii=False))
    defs = [d.split(". ", 1)[1] for _, d in TERMS]
    mcq_dir = root / "mcq"
    mcq_dir.mkdir(exist_ok=True)
    for split, start, n in (("train", 0, n_train), ("test", 100, n_test), ("dev", 200, n_dev)):
        with open(mcq_dir / f"{split}.jsonl", "w", encoding="utf-8") as fh:
            for i in range(n):
                term, _ = TERMS[i % len(TERMS)]
                options = [defs[(i + k) % len(defs)] for k in range(5)]
                row = {"id": f"{split}-{i}", "question": f"{start + i}번: '{term}'에 대한 설명으로 옳은 것은?",
                       "A": options[0], "B": options[1], "C": options[2], "D": options[3], "E": options[4],
                       "answer": 1, "exam_type": ["doctor", "nurse"][i % 2]}
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return {"dictionary": str(root / "dict.json"), "mcq": str(mcq_dir)}


# The one tiny loop the loop tests run (tests/test_loop.py in this process, tests/test_crash_resume.py
# through the CLI, tests/test_pinned.py pins its metrics, tests/test_rationales.py builds its rows):
# one optimizer step per stage on write_sample's data, every scorer, two dictionary entries recalled.
TINY_LOOP = {
    "max_loops": 1, "dict_max_steps": 1, "mcq_max_steps": 1, "dict_batch_size": 2, "mcq_batch_size": 2,
    "dict_grad_accum": 1, "mcq_grad_accum": 1, "eval_mode": "all", "max_new_tokens": 4, "eval_batch_size": 4,
    "dict_eval_limit": 2, "device": "cpu", "seed": 3,
}


def tiny_loop_settings(data: dict, model_dir, output, **overrides) -> dict:
    """`TINY_LOOP` on `write_sample`'s `data` and the model folder `model_dir`, writing `output`; `overrides` win."""
    return {"base_model": str(model_dir), "dictionary": [data["dictionary"]], "train_data": data["mcq"],
            "eval_data": data["mcq"], "output": str(output), **TINY_LOOP, **overrides}


def tiny_loop_config(data: dict, model_dir, output, **overrides):
    """`tiny_loop_settings` as a `LoopConfig`, for `run_loop` / `LoopRecipe` in this process."""
    from kormedqa.loop import LoopConfig

    return LoopConfig(**tiny_loop_settings(data, model_dir, output, **overrides))


def as_flags(settings: dict) -> list[str]:
    """`settings` as `kormedqa loop` flags: `--kebab-name value`, a list as several values, True as the bare flag."""
    flags = []
    for name, value in settings.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is not False and value is not None:
            flags += [flag, *map(str, value if isinstance(value, list) else [value])]
    return flags


def load_script(path: Path):
    """A script outside the package (scripts/NAME.py) imported as a module, for its functions and main()."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_same_results(a, b, path: str = "", rel: float = 1e-4, abs_: float = 1e-4) -> None:
    """`b` equals `a` in structure, keys, counts, text and flags; floats within `rel` relative or `abs_`.

    For numbers computed in two processes: their float sums may be ordered differently (another
    process, another thread schedule), so the callers say which tolerance their figures need and why.
    """
    import pytest

    if isinstance(a, float) or isinstance(b, float):
        assert b == pytest.approx(a, rel=rel, abs=abs_), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_same_results(a[k], b[k], f"{path}.{k}", rel, abs_)
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_results(x, y, f"{path}[{i}]", rel, abs_)
    else:
        assert a == b, path
