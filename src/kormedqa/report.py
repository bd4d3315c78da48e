"""Markdown report and plots from metrics.json / history.json: the last step of the pipeline."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

from .hardware import cpu_name
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


# ---------------------------------------------------------------- the demo's report, in words


def parse_test(before_preds: Sequence[dict], after_preds: Sequence[dict]) -> dict:
    """McNemar's exact test on whether each question's answer had a letter at all, before vs after (by id)."""
    by_id = {p["id"]: bool(p.get("prediction")) for p in before_preds}
    pairs = [(by_id[p["id"]], bool(p.get("prediction"))) for p in after_preds if p["id"] in by_id]
    return mcnemar_exact([a for a, _ in pairs], [b for _, b in pairs])


def demo_setup_text(loop_cfg, base: str, n_train: int, n_test: int, n_dict: int, history: dict) -> str:
    """The demo report's set-up section: model, data sizes, the loop's settings (`loop_cfg`, a LoopConfig), machine."""
    c = loop_cfg
    return (
        f"- Model: {base} (Gemma 3 270M, pretrained, dequantized from the embedded Q4_K_M GGUF), LoRA r64/alpha128 on all projections.\n"
        f"- Data: the shipped sample data (not KorMedMCQA): {n_dict} dictionary entries, {n_train} training MCQs, "
        f"{n_test} held-out test MCQs.\n"
        f"- Loop: {len(history['loops'])} loop(s), each {c.dict_epochs:g} dictionary epoch(s) (batch {c.dict_batch_size}) + "
        f"{c.mcq_epochs:g} MCQ epoch(s) (batch {c.mcq_batch_size}), rationale template `{c.rationale_template}`, "
        f"dictionary rehearsal {c.dict_rehearsal:g} x the MCQ rows, {c.option_rotations} option order(s) per question; "
        f"learning rates {c.dict_learning_rate} / {c.mcq_learning_rate} "
        f"(the spec's 2e-5 / 1e-5 change nothing measurable in a few CPU minutes); answer weight {c.answer_weight}; "
        f"stop reason: {history.get('stop_reason')}.\n"
        f"- Machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads.\n"
        "- Evaluation: greedy generation with the spec's prompt, letter read after `</reasoning>` "
        "(lm-evaluation-harness cascade otherwise); letter log-likelihood (A-E as the first answer token); cloze "
        "(log-likelihood of each option's text after a question-only prompt, lm-evaluation-harness's multiple_choice "
        f"formulation); dictionary recall as chrF on the first {c.dict_eval_limit} entries."
    )


def cpt_text(cpt_metrics: dict) -> str:
    """One sentence on the continued pretraining: held-out perplexity before -> after, and the seed's target."""
    return (f"Held-out perplexity {cpt_metrics['perplexity_before']:.2f} -> {cpt_metrics['perplexity_after']:.2f} "
            f"after {cpt_metrics['steps']} steps (seed target < 3.0: "
            f"{'reached' if cpt_metrics['target_reached'] else 'not reached in this short run'}).")


OTHER_SETS = {"rephrased": "Same terms asked another way",
              "reverse": "Same terms asked the other way round (definition -> term)"}


def other_set_line(name: str, summary: dict, source: str) -> str:
    """The what-moved line for another set of the same terms (`name` a key of OTHER_SETS; `summary`:
    n, before, after, before_ci95, after_ci95, test)."""
    r = summary
    interval = "[{:.1%}, {:.1%}]".format
    return (f"- {OTHER_SETS[name]} ({r['n']} questions of {source}, best checkpoint): generation accuracy "
            f"{r['before']:.1%} {interval(*r['before_ci95'])} -> {r['after']:.1%} {interval(*r['after_ci95'])}; "
            f"McNemar exact p = {r['test']['p_value']:.3g} "
            f"({'significant' if r['test']['significant_at_0.05'] else 'not significant'} at 0.05)")


def reading(before: dict, after: dict, tests: dict) -> str:
    """Which views moved, in plain sentences: format, generation, cloze (knowledge), letter log-likelihood."""
    def sig(key):
        return key in tests and tests[key]["significant_at_0.05"]

    text = []
    fmt_before = before.get("format_parse_rate", {}).get("value", 0.0)
    fmt_after = after.get("format_parse_rate", {}).get("value", 0.0)
    if fmt_after > 0.5 and fmt_after > fmt_before:
        text.append(f"The model learned the spec's answer format ({fmt_after:.0%} of answers right after `</reasoning>`).")
    if "accuracy" in after:
        chance = after["accuracy_among_parsed"]["ci95"][0] <= 0.2
        if sig("accuracy") and not chance:
            text.append("Generation accuracy rose significantly and is above chance (20%) among parsed answers.")
        elif sig("accuracy"):
            text.append("Generation accuracy rose significantly, but among parsed answers it is still within reach of "
                        "chance: much of the gain is answers becoming readable.")
        else:
            text.append("The change in generation accuracy is not significant.")
    if "cloze_accuracy" in after:
        text.append("Cloze accuracy (the option texts themselves) " + (
            "rose significantly: the knowledge the dictionary track teaches reached held-out questions."
            if sig("cloze_accuracy") and after["cloze_accuracy"]["value"] > before["cloze_accuracy"]["value"]
            else "did not rise significantly."))
    if "loglik_accuracy" in after:
        text.append("Letter log-likelihood accuracy " + ("changed significantly." if sig("loglik_accuracy") else
                    "did not change significantly (a small model's first-token letter guess, without its rationale)."))
    return " ".join(text)
