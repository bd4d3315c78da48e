"""scripts/compare_runs.py: the check that a refactor leaves a run's numbers alone."""
import json
from pathlib import Path

from helpers import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compare_runs.py"


def _module():
    return load_script(SCRIPT)


def _run(root: Path, accuracy: float, seconds: float, loss: float, field: str = "kind"):
    (root / "loop_1" / "eval").mkdir(parents=True)
    (root / "loop_1" / "eval" / "metrics.json").write_text(json.dumps({"accuracy": {"value": accuracy}, "seconds": seconds}))
    (root / "loop_1" / "eval" / "predictions.jsonl").write_text(json.dumps({"id": "q1", field: "term"}) + "\n")
    (root / "train_log.jsonl").write_text(json.dumps({"stage": "s", "loss": loss, "train_runtime": seconds}) + "\n")


def test_wall_clock_is_ignored_and_numbers_are_not(tmp_path):
    compare = _module().compare
    _run(tmp_path / "a", 0.5, 10.0, 1.25)
    _run(tmp_path / "b", 0.5, 99.0, 1.25)
    assert compare(tmp_path / "a", tmp_path / "b", set()) == []
    _run(tmp_path / "c", 0.5, 10.0, 1.26)
    assert compare(tmp_path / "a", tmp_path / "c", set()) == ["train_log.jsonl: differs"]
    _run(tmp_path / "d", 0.6, 10.0, 1.25)
    assert compare(tmp_path / "a", tmp_path / "d", set()) == ["loop_1/eval/metrics.json: differs in accuracy"]


def test_a_key_renamed_on_purpose_can_be_left_out(tmp_path):
    compare = _module().compare
    _run(tmp_path / "a", 0.5, 1.0, 1.0, field="kind")
    _run(tmp_path / "b", 0.5, 1.0, 1.0, field="category")
    assert compare(tmp_path / "a", tmp_path / "b", set()) == ["loop_1/eval/predictions.jsonl: differs in category, kind"]
    assert compare(tmp_path / "a", tmp_path / "b", {"kind", "category"}) == []
    (tmp_path / "b" / "loop_1" / "eval" / "metrics.json").unlink()
    assert compare(tmp_path / "a", tmp_path / "b", set())[0].startswith("loop_1/eval/metrics.json: missing")


def test_floats_may_differ_within_a_stated_tolerance(tmp_path):
    compare = _module().compare
    _run(tmp_path / "a", 0.5, 1.0, 1.25)
    _run(tmp_path / "b", 0.5, 1.0, 1.25 * (1 + 5e-6))
    assert compare(tmp_path / "a", tmp_path / "b", set()) == ["train_log.jsonl: differs"]
    assert compare(tmp_path / "a", tmp_path / "b", set(), rel_tol=1e-5) == []
    _run(tmp_path / "c", 0.5001, 1.0, 1.25)  # beyond 1e-5: still a difference
    assert compare(tmp_path / "a", tmp_path / "c", set(), rel_tol=1e-5) == ["loop_1/eval/metrics.json: differs in accuracy"]
