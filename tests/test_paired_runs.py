"""scripts/paired_runs.py: an arm against its control on the same questions."""
import json
from pathlib import Path

from helpers import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "paired_runs.py"


def _module():
    return load_script(SCRIPT)


def _write(folder: Path, hits: dict[str, bool]):
    folder.mkdir(parents=True)
    (folder / "predictions.jsonl").write_text("".join(json.dumps({"id": k, "correct": v}) + "\n" for k, v in hits.items()))


def test_an_arm_against_its_control(tmp_path, capsys):
    module = _module()
    # Test split: the arm gets 9 of 10 that the control misses, the control 1 the arm misses.
    arm = {f"q{i}": i != 0 for i in range(10)}
    control = {f"q{i}": i == 0 for i in range(10)}
    _write(tmp_path / "arm" / "loop" / "loop_1" / "eval", arm)
    _write(tmp_path / "control" / "loop" / "loop_1" / "eval", control)
    _write(tmp_path / "arm" / "eval_reverse", {"r1": True, "r2": False})
    _write(tmp_path / "control" / "eval_reverse", {"r1": True, "r3": False})  # another question: refused
    out = tmp_path / "paired.json"
    assert module.main([str(tmp_path / "arm"), str(tmp_path / "control"), "--json", str(out)]) == 2
    assert "different questions" in capsys.readouterr().err
    (tmp_path / "control" / "eval_reverse" / "predictions.jsonl").unlink()
    (tmp_path / "control" / "eval_reverse").rmdir()
    assert module.main([str(tmp_path / "arm"), str(tmp_path / "control"), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["test"]["arm"]["value"] == 0.9 and result["test"]["control"]["value"] == 0.1
    m = result["test"]["mcnemar"]
    assert (m["only_a"], m["only_b"]) == (9, 1)
    assert abs(m["p_value"] - 2 * (1 + 10) / 2 ** 10) < 1e-12  # two-sided exact binomial, 1 of 10 discordant
    assert "reverse" not in result and "reverse: not scored in both runs" in capsys.readouterr().out
