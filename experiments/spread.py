"""The learning experiment over seeds: each arm's figures per seed, their mean and spread.

    python experiments/spread.py NAME NAME ... [--out NAME_spread]

Each NAME is experiments/results/NAME.json, written by `experiments/learning.py --seed S --results
NAME` (for instance `--arms base,dictline_rehearse_long,dictline_mcq_only --precision bf16 --rephrase 1
--reverse`
with `--seed 42`, `1`, `2`). The runs must differ in nothing but the seed (the model, precision,
scoring batch, generation budget and rephrased set): otherwise one line names the file and the
setting, exit 2, nothing written. For every arm in every run: generation accuracy, generation on
the same terms asked another way, cloze, and McNemar's p against the arm's control, per seed; the
mean, the sample standard deviation and the range over seeds; and in how many seeds the arm beat
its control at p < 0.01. Writes experiments/results/<--out>.json and prints its Markdown table,
which is what the docs quote (the spread, not the best seed).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from learning import control_of  # noqa: E402  (each arm's control, as the runs compared them)

RESULTS = HERE / "results"
# What may not differ between the runs compared (experiments/learning.py's settings).
SAME = ("model", "max_new_tokens", "eval_batch_size", "precision", "rephrase", "reverse")
ALPHA = 0.01


def figures(run: dict, arm: str) -> dict:
    """One run's figures for `arm`: accuracies as fractions (None where not scored), McNemar's p vs
    its control (None without one) and whether the arm beat it (higher accuracy at p < ALPHA)."""
    metrics = run["results"][arm]["metrics"]
    rephrased = [v["value"] for k, v in metrics.items() if k.startswith("accuracy_rephrased_")]
    test = run.get("mcnemar_vs_control", {}).get(arm, {}).get("accuracy")
    control = run["results"].get(control_of(arm))
    beat = None if test is None or control is None else (
        test["p_value"] < ALPHA and metrics["accuracy"]["value"] > control["metrics"]["accuracy"]["value"])
    return {"accuracy": metrics["accuracy"]["value"], "rephrased": rephrased[0] if rephrased else None,
            "reverse": metrics["accuracy_reverse"]["value"] if "accuracy_reverse" in metrics else None,
            "cloze": metrics["cloze_accuracy"]["value"] if "cloze_accuracy" in metrics else None,
            "p_vs_control": None if test is None else test["p_value"], "beats_control": beat}


def spread(values: list[float]) -> dict | None:
    """Mean, sample standard deviation (0 for one value) and range of `values`; None if empty."""
    if not values:
        return None
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return {"mean": mean, "sd": sd, "min": min(values), "max": max(values), "n": len(values)}


def summarise(runs: dict[str, dict]) -> dict:
    """`runs`: result-file name -> its content. Returns {"seeds", "machines", "arms": {arm: {"per_seed",
    figure: spread, "beats_control"}}}. Raises ValueError naming the file and setting that differs."""
    first_name, first = next(iter(runs.items()))
    for name, run in runs.items():
        for key in SAME:
            if run["settings"].get(key) != first["settings"].get(key):
                raise ValueError(f"experiments/results/{name}.json: setting {key} is {run['settings'].get(key)!r}, "
                                 f"{first_name}.json has {first['settings'].get(key)!r}; only the seed may differ")
    seen: dict = {}
    for name, run in runs.items():
        seed = run["settings"]["seed"]
        if seed in seen:
            raise ValueError(f"experiments/results/{name}.json: setting seed is {seed}, as in {seen[seed]}.json; "
                             "each run must have its own seed")
        seen[seed] = name
    seeds = list(seen)
    arms = {}
    for arm in dict.fromkeys(a for run in runs.values() for a in run["results"]):
        per_seed = {run["settings"]["seed"]: figures(run, arm) for run in runs.values() if arm in run["results"]}
        out = {"per_seed": per_seed}
        for key in ("accuracy", "rephrased", "reverse", "cloze"):
            out[key] = spread([f[key] for f in per_seed.values() if f[key] is not None])
        tested = [f["beats_control"] for f in per_seed.values() if f["beats_control"] is not None]
        out["beats_control"] = {"seeds": len(tested), "significant": sum(tested)} if tested else None
        arms[arm] = out
    machines = sorted({f"{r['machine']['cpu']} ({', '.join(f for f in r['machine'].get('cpu_flags', []) if 'bf16' in f) or 'no native bf16'})"
                       for r in runs.values()})
    return {"seeds": seeds, "machines": machines, "settings": {k: first["settings"].get(k) for k in SAME},
            "arms": arms}


def _cell(s: dict | None) -> str:
    if s is None:
        return "-"
    return f"{s['mean']:.1%} ± {s['sd']:.1%} ({s['min']:.1%}-{s['max']:.1%})"


def markdown(summary: dict) -> str:
    lines = [f"Seeds {', '.join(map(str, summary['seeds']))}; {'; '.join(summary['machines'])}; mean ± sample sd (range).", "",
             "| arm | seeds | generation accuracy | same terms asked another way | reverse (term from its definition) | cloze "
             "| p vs control per seed | beats control at p < 0.01 |",
             "|---|---|---|---|---|---|---|---|"]
    for arm, s in summary["arms"].items():
        ps = ", ".join("-" if f["p_vs_control"] is None else f"{f['p_vs_control']:.2g}" for f in s["per_seed"].values())
        beats = "-" if s["beats_control"] is None else f"{s['beats_control']['significant']} of {s['beats_control']['seeds']}"
        lines.append(f"| {arm} | {len(s['per_seed'])} | {_cell(s['accuracy'])} | {_cell(s['rephrased'])} | "
                     f"{_cell(s['reverse'])} | {_cell(s['cloze'])} | {ps} | {beats} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="+", help="result files under experiments/results/, without .json")
    p.add_argument("--out", help="name of the summary (default: the first name + _spread)")
    args = p.parse_args(argv)
    runs = {}
    for name in args.names:
        path = RESULTS / f"{name}.json"
        if not path.exists():
            print(f"error: {path}: no such result file (run experiments/learning.py --results {name})", file=sys.stderr)
            return 2
        runs[name] = json.loads(path.read_text(encoding="utf-8"))
    try:
        summary = summarise(runs)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from kormedqa.fsio import write_json_atomic

    summary["table"] = markdown(summary)
    write_json_atomic(RESULTS / f"{args.out or args.names[0] + '_spread'}.json", {"runs": args.names, **summary})
    print(summary["table"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
