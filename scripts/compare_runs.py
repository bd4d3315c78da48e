"""Do two run folders hold the same results? For checking that a refactor leaves the numbers alone.

    python scripts/compare_runs.py BEFORE_DIR AFTER_DIR [--ignore-key KEY ...] [--rel-tol 1e-4]

Compares every metrics.json, predictions.jsonl, history.json and summary.json under BEFORE_DIR
with the same path under AFTER_DIR, and the logged training losses of train_log.jsonl, ignoring
wall-clock keys (seconds, timings). Prints each file that differs with the keys that differ and
exits 1 if any does, 0 if all agree. `--ignore-key` leaves out a key renamed on purpose (e.g. a
prediction field), and says so in the output. `--rel-tol` lets floats differ by that relative
amount (default 0: exactly equal), for a change that reorders float sums (another kernel, another
shape) but should not move a result; the output says the tolerance used.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

WALL_CLOCK = {"seconds", "timings", "wall_seconds", "train_runtime", "train_samples_per_second",
              "train_steps_per_second"}


def _strip(value, ignore: set[str]):
    if isinstance(value, dict):
        return {k: _strip(v, ignore) for k, v in value.items() if k not in WALL_CLOCK | ignore}
    if isinstance(value, list):
        return [_strip(v, ignore) for v in value]
    return value


def _load(path: Path, ignore: set[str]):
    if path.name == "train_log.jsonl":
        return [(r.get("stage"), r.get("loss")) for r in map(json.loads, path.read_text().splitlines()) if "loss" in r]
    if path.suffix == ".jsonl":
        return [_strip(json.loads(line), ignore) for line in path.read_text().splitlines()]
    return _strip(json.loads(path.read_text()), ignore)


def same(a, b, rel_tol: float = 0.0) -> bool:
    """a == b, except that floats (anywhere inside dicts, lists and tuples) may differ by `rel_tol` relatively."""
    if isinstance(a, float) and isinstance(b, (int, float)) or isinstance(b, float) and isinstance(a, (int, float)):
        return math.isclose(a, b, rel_tol=rel_tol, abs_tol=rel_tol * 1e-3) or a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k], rel_tol) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y, rel_tol) for x, y in zip(a, b))
    return a == b


def compare(before: Path, after: Path, ignore: set[str], rel_tol: float = 0.0) -> list[str]:
    """Relative paths (with what differs) of result files that differ or are missing in `after`."""
    names = ("metrics.json", "predictions.jsonl", "history.json", "summary.json", "train_log.jsonl")
    problems = []
    for path in sorted(p for name in names for p in before.rglob(name)):
        rel = path.relative_to(before)
        other = after / rel
        if not other.exists():
            problems.append(f"{rel}: missing in {after}")
            continue
        a, b = _load(path, ignore), _load(other, ignore)
        if not same(a, b, rel_tol):
            keys = sorted({k for x, y in zip(a, b) if isinstance(x, dict) for k in set(x) | set(y)
                           if not same(x.get(k), y.get(k), rel_tol)}
                          if isinstance(a, list) else {k for k in set(a) | set(b) if not same(a.get(k), b.get(k), rel_tol)}
                          if isinstance(a, dict) else set())
            problems.append(f"{rel}: differs" + (f" in {', '.join(keys)}" if keys else ""))
    return problems


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("before", type=Path)
    p.add_argument("after", type=Path)
    p.add_argument("--ignore-key", action="append", default=[], help="a key renamed on purpose")
    p.add_argument("--rel-tol", type=float, default=0.0, help="relative tolerance for floats (default 0: exact)")
    args = p.parse_args()
    checked = sum(1 for name in ("metrics.json", "predictions.jsonl", "history.json", "summary.json", "train_log.jsonl")
                  for _ in args.before.rglob(name))
    problems = compare(args.before, args.after, set(args.ignore_key), args.rel_tol)
    for line in problems:
        print(line)
    ignored = f" (ignoring {', '.join(args.ignore_key)})" if args.ignore_key else ""
    ignored += f" (floats within {args.rel_tol:g} relative)" if args.rel_tol else ""
    print(f"{checked - len(problems)} of {checked} result files agree{ignored}; wall-clock keys left out")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
