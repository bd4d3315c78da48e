"""Markdown report and plots from metrics.json / history.json: the last step of the pipeline."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .metrics import mcnemar_exact
from .scorer_table import REPORT_METRICS

# The report's views of the metrics, from the scorer table (kormedqa.scorer_table).
PLOTTED = tuple((m.name, m.phrase) for m in REPORT_METRICS if m.plot)
PHRASES = tuple((m.name, m.phrase) for m in REPORT_METRICS if m.phrase)
TABLE_COLUMNS = tuple((m.name, m.column) for m in REPORT_METRICS if m.column)


def _pct(p: dict | float | None) -> str:
    if p is None:
        return "-"
    if isinstance(p, dict):
        low, high = p["ci95"]
        return f"{p['value']:.1%} [{low:.1%}, {high:.1%}]"
    return f"{p:.1%}"


def plot_loops(history: dict, before: dict | None, path: str | Path) -> Path:
    """The scorer table's plotted metrics (accuracies, parse rates) per loop (loop 0 = before training), with 95% CIs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loops = history["loops"]
    xs = [0] + [l["loop"] for l in loops] if before else [l["loop"] for l in loops]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in PLOTTED:
        ys, errs = [], [[], []]
        series = ([before[key]] if before and key in before else []) + [l["metrics"][key] for l in loops if key in l["metrics"]]
        if len(series) != len(xs):
            continue
        for p in series:
            ys.append(100 * p["value"])
            errs[0].append(100 * (p["value"] - p["ci95"][0]))
            errs[1].append(100 * (p["ci95"][1] - p["value"]))
        ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=label)
    ax.axhline(20, color="grey", linestyle=":", label="chance (5 options)")
    ax.set_xlabel("loop (0 = before training)")
    ax.set_ylabel("% of held-out questions")
    ax.set_ylim(0, 100)
    ax.set_xticks(xs)
    ax.legend(fontsize=8)
    ax.set_title("Held-out test split")
    for key, label in (("answer_loss", "answer loss: letter + <end_of_turn> (train)"), ("reasoning_loss", "reasoning-token loss (train)")):
        ys = [l["training"].get("mcq", {}).get(key) for l in loops]
        if all(y is not None for y in ys) and ys:
            ax2.plot([l["loop"] for l in loops], ys, marker="o", label=label)
    ax2.set_xlabel("loop")
    ax2.set_ylabel("cross-entropy (last logged step)")
    ax2.set_xticks([l["loop"] for l in loops])
    ax2.legend(fontsize=8)
    ax2.set_title("MCQ training loss parts")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def significance(before_preds: Sequence[dict], after_preds: Sequence[dict], key: str = "correct") -> dict:
    """Exact McNemar test of before vs after on the questions both scored (paired by id).

    `key` is the per-question boolean compared (correct, loglik_correct ...). Returns
    `metrics.mcnemar_exact`'s dict: only_a, only_b, p_value, significant_at_0.05.
    """
    by_id = {p["id"]: p for p in before_preds}
    pairs = [(by_id[p["id"]][key], p[key]) for p in after_preds if p["id"] in by_id and key in p]
    return mcnemar_exact([a for a, _ in pairs], [b for _, b in pairs])


def what_moved(before: dict, after: dict, tests: dict) -> list[str]:
    """Plain sentences on which of the scorer table's named metrics (accuracies, parse rates, recall) moved, and
    whether significantly (`tests`: McNemar per metric name)."""
    lines = []
    for key, label in PHRASES:
        if key not in before or key not in after:
            continue
        b, a = before[key]["value"], after[key]["value"]
        if "ci95" in after[key]:
            line = (f"- {label}: {b:.1%} -> {a:.1%} [{after[key]['ci95'][0]:.1%}, {after[key]['ci95'][1]:.1%}] "
                    f"({(a - b) * 100:+.1f} points)")
        else:
            line = f"- {label}: {b:.1f} -> {a:.1f}"
        test = tests.get(key)
        if test:
            verdict = "significant" if test["significant_at_0.05"] else "not significant"
            line += f"; McNemar exact p = {test['p_value']:.3g} ({verdict} at 0.05)"
        lines.append(line)
    return lines


def markdown_report(title: str, sections: dict[str, str]) -> str:
    """A Markdown document: `# title`, then one `## heading` section per item of `sections`."""
    return f"# {title}\n\n" + "\n\n".join(f"## {k}\n\n{v.strip()}" for k, v in sections.items()) + "\n"


def results_table(before: dict, history: dict) -> str:
    """Markdown table: before training, then every loop of `history` (metrics as in metrics.json)."""
    columns = [(k, label) for k, label in TABLE_COLUMNS
               if k in before or any(k in l["metrics"] for l in history["loops"])]
    rows = ["| stage | " + " | ".join(label for _, label in columns) + " |", "|---" * (len(columns) + 1) + "|"]

    def row(name, m):
        cells = [(f"{m[k]['value']:.3f}" if k == "reasoning_score" and k in m else _pct(m.get(k))) for k, _ in columns]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")

    row("before training", before)
    for l in history["loops"]:
        row(f"loop {l['loop']}", l["metrics"])
    return "\n".join(rows)
