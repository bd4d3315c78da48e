"""Two demo runs scored on the same questions: which one answered more, and is it more than chance?

    python scripts/paired_runs.py ARM_DIR CONTROL_DIR [--loop N]

For an arm and its control (e.g. `kormedqa demo --output runs/arm ...` and a run trained on the MCQ
track alone as long), reads the predictions each scored, joined by question id: the test split
after loop N (default: the last loop of the arm; `loop/loop_N/eval/predictions.jsonl`), the other
phrasings and the reverse set (`eval_rephrased/`, `eval_reverse/`). Prints one line per set:
generation accuracy of each with its 95% Wilson interval, and McNemar's exact p (arm vs control)
with the discordant counts; `--json PATH` also writes them. Exits 2 when the two runs did not score
the same question ids on a set (a paired test needs the same questions).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kormedqa.data import read_jsonl
from kormedqa.metrics import mcnemar_exact, proportion

SETS = {"test": None, "rephrased": "eval_rephrased", "reverse": "eval_reverse"}


def last_loop(run: Path) -> int:
    loops = sorted(int(p.name.split("_")[1]) for p in (run / "loop").glob("loop_*") if (p / "eval").is_dir())
    if not loops:
        raise SystemExit(f"{run}: no loop/loop_N/eval folder (not a finished demo run)")
    return loops[-1]


def predictions(run: Path, name: str, loop: int) -> dict[str, bool] | None:
    folder = run / "loop" / f"loop_{loop}" / "eval" if SETS[name] is None else run / SETS[name]
    path = folder / "predictions.jsonl"
    if not path.exists():
        return None
    return {row["id"]: bool(row["correct"]) for row in read_jsonl(path)}


def paired(arm: dict[str, bool], control: dict[str, bool]) -> dict:
    """Accuracy of each (`metrics.proportion`) and McNemar's exact test over the shared ids.
    ValueError when the id sets differ."""
    if arm.keys() != control.keys():
        raise ValueError(f"the runs scored different questions ({len(arm.keys() ^ control.keys())} ids in one only)")
    ids = sorted(arm)
    a, c = [arm[i] for i in ids], [control[i] for i in ids]
    return {"n": len(ids), "arm": proportion(sum(a), len(a)), "control": proportion(sum(c), len(c)),
            "mcnemar": mcnemar_exact(a, c)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("arm", type=Path)
    p.add_argument("control", type=Path)
    p.add_argument("--loop", type=int, help="the loop whose test-split predictions to compare (default: each run's last)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    out = {}
    for name in SETS:
        arm = predictions(args.arm, name, args.loop or last_loop(args.arm))
        control = predictions(args.control, name, args.loop or last_loop(args.control))
        if arm is None or control is None:
            print(f"{name}: not scored in both runs")
            continue
        try:
            result = paired(arm, control)
        except ValueError as err:
            print(f"{name}: {err}", file=sys.stderr)
            return 2
        out[name] = result
        m = result["mcnemar"]
        fmt = lambda r: f"{100 * r['value']:.1f}% [{100 * r['ci95'][0]:.1f}, {100 * r['ci95'][1]:.1f}]"  # noqa: E731
        print(f"{name} ({result['n']} questions): arm {fmt(result['arm'])}, control {fmt(result['control'])}, "
              f"McNemar p = {m['p_value']:.2g} (arm only {m['only_a']}, control only {m['only_b']})")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
