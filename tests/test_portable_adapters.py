"""Adapters load from anywhere on the machine (issue 13, item 4; case relative_base_path/).

Members of the class: a base typed as a relative path; the default's short name; a run folder moved
together with its base; an adapter written before bases were recorded (relative, no record); a hub
id (stays a hub id; offline it must be cached); an adapter trained on from another adapter; a base
that is gone (one line, exit 2, before the output is claimed: see test_user_errors).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kormedqa.errors import ModelError
from kormedqa.modeling import BASE_RECORD, adapter_base, record_base, resolve_model_path

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "KORMEDQA_LOG": "WARNING",
       "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}


def kq(*args, cwd):
    return subprocess.run([sys.executable, "-m", "kormedqa", *map(str, args)], capture_output=True, text=True,
                          env=ENV, cwd=cwd, timeout=600)


def _adapter(folder: Path, recorded: str, record: dict | None = None) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": recorded, "r": 8}))
    if record is not None:
        (folder / BASE_RECORD).write_text(json.dumps(record))
    return folder


def _model(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    return folder


@pytest.mark.slow
def test_relative_base_path_case(tmp_path, tiny_model_dir):
    """The repro: train with a relative --base-model, evaluate offline from another folder."""
    shutil.copytree(tiny_model_dir, tmp_path / "tiny-gemma3")
    rows = [{"prompt": "<start_of_turn>user\nMeaning of word 고혈압:<end_of_turn>",
             "completion": "<start_of_turn>model\n혈압이 높은 상태<end_of_turn>"}] * 2
    (tmp_path / "d2.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    r = kq("train", "dict", "--data", "d2.jsonl", "--base-model", "tiny-gemma3", "--output", "runrel", "--max-steps", 1,
           "--batch-size", 2, "--grad-accum", 1, "--device", "cpu", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    adapter = tmp_path / "runrel" / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((tmp_path / "tiny-gemma3").resolve())
    assert json.loads((adapter / BASE_RECORD).read_text())["relative"] == os.path.join("..", "..", "tiny-gemma3")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "q.jsonl").write_text(json.dumps({"id": "t1", "question": "고혈압의 정의는?", "A": "가", "B": "나",
                                                   "C": "다", "D": "라", "E": "마", "answer": 1}, ensure_ascii=False) + "\n")
    r = kq("eval", "--model", adapter, "--data", "q.jsonl", "--output", "ev", "--mode", "loglik", "--device", "cpu",
           cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    assert json.loads((elsewhere / "ev" / "metrics.json").read_text())["n"] == 1


def test_local_paths_resolve_absolute_from_any_working_directory(tmp_path, monkeypatch):
    base = _model(tmp_path / "models" / "base")
    monkeypatch.chdir(tmp_path)
    assert resolve_model_path("models/base") == str(base.resolve())
    assert resolve_model_path("./models/base/") == str(base.resolve())


def test_run_folder_moved_together_with_its_base(tmp_path):
    base = _model(tmp_path / "old" / "cpt" / "model")
    adapter = tmp_path / "old" / "loop" / "final"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "x", "r": 8}))
    record_base(adapter, adapter, str(base))
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base.resolve())
    assert adapter_base(adapter) == str(base.resolve())
    shutil.move(tmp_path / "old", tmp_path / "new")  # the absolute path is gone, the layout is not
    assert adapter_base(tmp_path / "new" / "loop" / "final") == str((tmp_path / "new" / "cpt" / "model").resolve())


def test_base_neither_where_recorded_nor_beside_the_run_names_what_was_tried(tmp_path):
    base = _model(tmp_path / "base")
    _adapter(tmp_path / "run" / "adapter", str(base), {"path": str(base), "relative": "../../base"})
    shutil.move(tmp_path / "run", tmp_path / "moved" / "run")  # moved without its base
    shutil.move(base, tmp_path / "renamed")
    with pytest.raises(ModelError, match=r"base model '.*base' not found \(looked at .*base, .*base\)"):
        adapter_base(tmp_path / "moved" / "run" / "adapter")


def test_adapter_written_before_bases_were_recorded(tmp_path, monkeypatch, caplog):
    """Relative to the training run's working directory (unknown): looked for above the adapter, with a warning."""
    base = _model(tmp_path / "tiny-gemma3")
    adapter = _adapter(tmp_path / "runrel" / "adapter", "tiny-gemma3")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert adapter_base(adapter) == str(base.resolve())
    assert "recorded relative" in caplog.text
    shutil.rmtree(base)
    with pytest.raises(ModelError, match="base model 'tiny-gemma3' not found"):
        adapter_base(adapter)


def test_hub_ids_stay_hub_ids(tmp_path, monkeypatch):
    from huggingface_hub import constants

    adapter = _adapter(tmp_path / "a", "google/medgemma-4b-it", {"hub_id": "google/medgemma-4b-it"})
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert adapter_base(adapter) == "google/medgemma-4b-it"
    assert resolve_model_path("google/medgemma-4b-it") == "google/medgemma-4b-it"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelError, match="HF_HUB_OFFLINE"):
        adapter_base(adapter)

    fresh = tmp_path / "b"
    fresh.mkdir()
    (fresh / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "google/medgemma-4b-it"}))
    record_base(fresh, fresh, "google/medgemma-4b-it")
    assert json.loads((fresh / BASE_RECORD).read_text()) == {"hub_id": "google/medgemma-4b-it"}
    assert json.loads((fresh / "adapter_config.json").read_text())["base_model_name_or_path"] == "google/medgemma-4b-it"


def test_adapter_trained_on_from_an_adapter_records_the_resolved_base(tmp_path, tiny_model_dir, monkeypatch):
    """load_model puts the resolved base into the PeftModel, so the next stage's adapter records it absolutely."""
    from peft import get_peft_model

    from kormedqa.hardware import choose
    from kormedqa.modeling import load_model, lora_config

    monkeypatch.chdir(tiny_model_dir.parent)
    model = load_model(tiny_model_dir.name, choose("cpu", "fp32"))
    assert model.config._name_or_path == str(tiny_model_dir.resolve())
    get_peft_model(model, lora_config(r=2, alpha=4)).save_pretrained(tmp_path / "first")
    cfg_path = tmp_path / "first" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    assert cfg["base_model_name_or_path"] == str(tiny_model_dir.resolve())
    cfg["base_model_name_or_path"] = tiny_model_dir.name  # as an older version wrote it
    cfg_path.write_text(json.dumps(cfg))
    again = load_model(str(tmp_path / "first"), choose("cpu", "fp32"), trainable_adapter=True)
    assert again.peft_config["default"].base_model_name_or_path == str(tiny_model_dir.resolve())
