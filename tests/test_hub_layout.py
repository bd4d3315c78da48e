"""A local copy of the hub repository sean0042/KorMedMCQA loads (issue 13, item 1).

The fixture is laid out as the hub publishes it (see `write_hub_snapshot`): a README.md dataset
card whose YAML `configs:` map each exam type to per-split globs, parquet shards named
`<exam>/<split>-00000-of-00001[-<hash>].parquet` without an exam_type column, answers as
integers 1-5, and the older `data/<exam>-<split>.csv` files beside them.
"""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kormedqa.data import load_mcq
from kormedqa.records import DataError

EXAMS = ("doctor", "nurse", "pharm", "dentist")
SPLITS = {"train": 3, "dev": 2, "test": 2, "fewshot": 1}
COLUMNS = ["subject", "year", "period", "q_number", "question", "A", "B", "C", "D", "E", "answer", "cot"]
INT_COLUMNS = {"year", "period", "q_number", "answer"}
# doctor's shards carry the hash suffix `push_to_hub` adds on re-upload, as on the hub today.
HASH = {"doctor": "-e92541767961eccb"}


def hub_rows(exam: str, split: str, n: int | None = None) -> list[dict]:
    base = {"train": 0, "dev": 100, "test": 200, "fewshot": 300}[split]
    return [
        {
            "subject": exam,
            "year": 2020 + i % 2,
            "period": 1 if exam == "doctor" else None,  # only the doctor exam has periods
            "q_number": base + i,
            "question": f"{exam} {split} {i}번: 다음 중 고혈압의 1차 치료 약물로 옳은 것은?",
            "A": "이뇨제", "B": "베타차단제", "C": "칼슘통로차단제", "D": "안지오텐신전환효소억제제", "E": "알파차단제",
            "answer": i % 5 + 1,
            "cot": "" if i % 2 else "고혈압의 1차 약물은 ...",
        }
        for i in range(1, (SPLITS[split] if n is None else n) + 1)
    ]


def card_yaml(configs: dict[str, dict[str, str]], sizes: dict[tuple[str, str], int] | None = None) -> str:
    """The README.md front matter in the hub card's shape: configs -> data_files, dataset_info."""
    lines = ["---", "language:", "- ko", "license: cc-by-nc-2.0", "task_categories:", "- question-answering", "configs:"]
    for name, files in configs.items():
        lines += [f"- config_name: {name}", "  data_files:"]
        for split, path in files.items():
            lines += [f"  - split: {split}", f"    path: {path}"]
    lines += ["tags:", "- medical"]
    if sizes:
        lines.append("dataset_info:")
        for name, files in configs.items():
            lines += [f"- config_name: {name}", "  features:"]
            for column in COLUMNS:
                lines += [f"  - name: {column}", f"    dtype: {'int64' if column in INT_COLUMNS else 'string'}"]
            lines.append("  splits:")
            for split in files:
                lines += [f"  - name: {split}", "    num_bytes: 1000", f"    num_examples: {sizes[(name, split)]}"]
    lines += ["---", "", "# KorMedMCQA : Multi-Choice Question Answering Benchmark for Korean Healthcare", ""]
    return "\n".join(lines)


def write_parquet(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([(c, pa.int64() if c in INT_COLUMNS else pa.string()) for c in COLUMNS])
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def write_hub_snapshot(root: Path, splits: dict[str, tuple[str, ...]] | None = None) -> Path:
    """What `huggingface-cli download sean0042/KorMedMCQA --repo-type dataset --local-dir root` leaves."""
    splits = splits or {exam: tuple(SPLITS) for exam in EXAMS}
    configs, sizes = {}, {}
    for exam in EXAMS:
        configs[exam] = {}
        for split in splits[exam]:
            write_parquet(root / exam / f"{split}-00000-of-00001{HASH.get(exam, '')}.parquet", hub_rows(exam, split))
            configs[exam][split] = f"{exam}/{split}-*"
            sizes[(exam, split)] = SPLITS[split]
    (root / "README.md").write_text(card_yaml(configs, sizes), encoding="utf-8")
    for exam in ("doctor", "nurse", "pharm"):  # the older layout has no dentist and no fewshot
        for split in ("train", "dev", "test"):
            write_csv(root / "data" / f"{exam}-{split}.csv", hub_rows(exam, split))
    return root


@pytest.fixture()
def datasets_cache(tmp_path, monkeypatch):
    """`datasets` writes its Arrow cache under tmp, not the user's ~/.cache."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    return tmp_path / "hf-datasets"


def expected(split: str, exams=EXAMS) -> list[tuple]:
    return [
        (f"{exam}-{r['year']}-{'1-' if exam == 'doctor' else ''}{r['q_number']}", exam, "ABCDE"[r["answer"] - 1], r["question"])
        for exam in exams for r in hub_rows(exam, split)
    ]


def summary(records) -> list[tuple]:
    return [(r.id, r.exam_type, r.answer, r.question) for r in records]


def test_snapshot_loads_every_config_through_datasets(tmp_path, datasets_cache, monkeypatch):
    import datasets

    root = write_hub_snapshot(tmp_path / "KorMedMCQA")
    calls = []
    real = datasets.load_dataset

    def spy(path, name=None, **kwargs):
        calls.append((path, name, kwargs.get("split")))
        return real(path, name, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", spy)
    records = load_mcq(root, split="test")
    assert summary(records) == expected("test")
    assert calls == [(str(root), exam, "test") for exam in EXAMS]  # the hub id's code path
    doctor = records[1]
    assert doctor.source == f"{root}/doctor/test-00000-of-00001-e92541767961eccb.parquet:2"
    assert (doctor.year, doctor.q_number, doctor.subject, doctor.cot) == (2020, 202, "doctor", "고혈압의 1차 약물은 ...")
    assert datasets_cache.is_dir()


def test_snapshot_every_split_and_one_exam(tmp_path, datasets_cache):
    root = write_hub_snapshot(tmp_path / "KorMedMCQA")
    for split in SPLITS:
        assert summary(load_mcq(root, split=split)) == expected(split)
    assert summary(load_mcq(root, split="dev", exam_type="dentist")) == expected("dev", ["dentist"])


def test_snapshot_config_without_a_split_is_skipped_unless_asked_for(tmp_path, datasets_cache):
    splits = {exam: tuple(SPLITS) for exam in EXAMS} | {"dentist": ("train", "dev", "test")}
    root = write_hub_snapshot(tmp_path / "KorMedMCQA", splits)
    assert summary(load_mcq(root, split="fewshot")) == expected("fewshot", EXAMS[:3])
    with pytest.raises(DataError, match=r"README.md: field 'configs' config 'dentist' has no split 'fewshot'"):
        load_mcq(root, split="fewshot", exam_type="dentist")


def test_snapshot_errors_are_one_data_error(tmp_path, datasets_cache):
    root = write_hub_snapshot(tmp_path / "KorMedMCQA")
    with pytest.raises(DataError, match="no config has a 'validation' split"):
        load_mcq(root, split="validation")
    # The card says 2 test rows; a file with 3 disagrees: datasets' own check, reported as data.
    write_parquet(root / "nurse" / "test-00000-of-00001.parquet", hub_rows("nurse", "test", 3))
    with pytest.raises(DataError, match=r"README.md: field 'dataset_info' config 'nurse': the data files do not match"):
        load_mcq(root, split="test")
    write_parquet(root / "nurse" / "test-00000-of-00001.parquet", hub_rows("nurse", "test"))
    # A bad record inside a shard names the shard and its row.
    bad = hub_rows("pharm", "dev")
    bad[1]["answer"] = 7
    write_parquet(root / "pharm" / "dev-00000-of-00001.parquet", bad)
    with pytest.raises(DataError, match=r"pharm/dev-00000-of-00001.parquet:2: field 'answer' out of range: 7"):
        load_mcq(root, split="dev")


def test_older_csv_layout_beside_it(tmp_path):
    root = write_hub_snapshot(tmp_path / "KorMedMCQA")
    records = load_mcq(root / "data", split="test")
    assert summary(records) == expected("test", ("doctor", "nurse", "pharm"))
    assert records[0].source == f"{root}/data/doctor-test.csv:2"  # line 1 is the header
    assert summary(load_mcq(root / "data", split="train", exam_type="nurse")) == expected("train", ["nurse"])
    # One of those files on its own takes its exam type from its name.
    assert summary(load_mcq(root / "data" / "pharm-dev.csv")) == expected("dev", ["pharm"])


def test_card_pointing_at_csv_files(tmp_path, datasets_cache):
    """An older card revision mapped configs to the CSV files; pandas reads empty cells as NaN."""
    root = write_hub_snapshot(tmp_path / "KorMedMCQA")
    configs = {e: {s: f"data/{e}-{s}.csv" for s in ("train", "dev", "test")} for e in ("doctor", "nurse", "pharm")}
    (root / "README.md").write_text(card_yaml(configs), encoding="utf-8")
    assert summary(load_mcq(root, split="dev")) == expected("dev", ("doctor", "nurse", "pharm"))


def test_without_the_card_exam_folders_of_shards_still_load(tmp_path):
    root = write_hub_snapshot(tmp_path / "KorMedMCQA")
    (root / "README.md").unlink()
    assert summary(load_mcq(root, split="test")) == expected("test")
    assert summary(load_mcq(root / "doctor" / "test-00000-of-00001-e92541767961eccb.parquet")) == expected("test", ["doctor"])
    # For a while the hub held both uploads of doctor's train shard: refuse to read it twice.
    write_parquet(root / "doctor" / "train-00000-of-00001.parquet", hub_rows("doctor", "train"))
    with pytest.raises(DataError, match="several files for split 'train': train-00000-of-00001-e92541767961eccb.parquet, "
                                        "train-00000-of-00001.parquet"):
        load_mcq(root, split="train")


def test_shards_are_read_in_order_and_together(tmp_path):
    rows = hub_rows("nurse", "train", 4)
    write_parquet(tmp_path / "nurse" / "train-00001-of-00002.parquet", rows[2:])
    write_parquet(tmp_path / "nurse" / "train-00000-of-00002.parquet", rows[:2])
    assert [r.q_number for r in load_mcq(tmp_path, split="train")] == [1, 2, 3, 4]


@pytest.mark.slow  # `kormedqa prepare` as a subprocess
def test_prepare_mcq_on_the_snapshot(tmp_path):
    """The command from the issue, as a user runs it."""
    root = write_hub_snapshot(tmp_path / "KorMedMCQA")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "hf-datasets"), "KORMEDQA_LOG": "WARNING"}
    out = tmp_path / "test.jsonl"
    run = subprocess.run([sys.executable, "-m", "kormedqa", "prepare", "mcq", "--data", str(root), "--split", "test",
                          "--output", str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr
    assert out.read_text(encoding="utf-8").count("\n") == len(EXAMS) * SPLITS["test"]
