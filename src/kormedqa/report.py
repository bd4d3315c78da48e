"""Markdown report and its picture from metrics.json, history.json and train_log.jsonl: the last step of the pipeline."""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Sequence

import torch

from .hardware import cpu_name
from .metrics import mcnemar_exact
from .scorer_table import REPORT_METRICS

# The report's views of the metrics, from the scorer table (kormedqa.scorer_table); PLOTTED: the
# test split's rows in the picture's panel of splits.
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


# The picture's left panel: the loss parts the trainer logs per optimizer step (trainer.AnswerWeightedTrainer.log).
CURVES = (("answer_loss", "answer loss"), ("reasoning_loss", "reasoning loss"))
STAGE_LABELS = {"dict": "dictionary stage", "mcq": "MCQ stage", "grpo": "GRPO stage"}
_STAGE_COLOURS = {"dict": "tab:blue", "mcq": "tab:green", "grpo": "tab:olive"}
_CURVE_COLOURS = {"answer_loss": "tab:red", "reasoning_loss": "tab:purple"}
_STAGE_NAME = re.compile(r"loop_(\d+)_(\w+)$")


def training_curves(log_rows: Sequence[dict]) -> tuple[dict[str, list], list[dict]]:
    """The loop run's training curves and stage spans from its train_log.jsonl rows (in file order).

    `log_rows` are the JSONL log's dicts as `trainer.JsonlLogCallback` writes them: "stage"
    ("loop_<N>_<track>", e.g. loop_1_dict), "step" (the stage's own optimizer step, from 1), and the
    Trainer's log ("loss", "answer_loss", "reasoning_loss", ...; the stage's last line holds
    "train_runtime" instead of a loss). Each stage starts a new Trainer, so its steps are shifted by
    the steps of the stages before it: x is the optimizer step of the whole run (stages in the order
    they first appear). Returns (curves, stages): curves {key of CURVES: [[x, y], ...]}, one point
    per logged loss line of every stage, y as logged (None where the line lacks the key, e.g. a
    batch without answer tokens; NaN if logged so); stages [{"name", "loop" (None for a name not
    loop_<N>_<track>), "track", "start", "end"}] with the stage's steps in (start, end].
    A stage's line repeated for one step (a resume) counts once, the last one.
    """
    by_stage: dict[str, dict[int, dict]] = {}
    length: dict[str, int] = {}
    for row in log_rows:
        name, step = row.get("stage"), row.get("step")
        if not isinstance(step, int):
            continue
        by_stage.setdefault(name, {})
        length[name] = max(length.get(name, 0), step)
        if "loss" in row:
            by_stage[name][step] = row
    curves: dict[str, list] = {key: [] for key, _ in CURVES}
    stages, offset = [], 0
    for name, lines in by_stage.items():
        match = _STAGE_NAME.match(str(name))
        stages.append({"name": name, "loop": int(match.group(1)) if match else None,
                       "track": match.group(2) if match else str(name), "start": offset, "end": offset + length[name]})
        for step in sorted(lines):
            for key, _ in CURVES:
                curves[key].append([offset + step, lines[step].get(key)])
        offset += length[name]
    return curves, stages


def demo_splits(before: dict, after: dict, others: dict[str, dict | None]) -> list[dict]:
    """The picture's right panel: every view of every split the demo scores, before and after.

    `before`/`after`: the test split's metrics.json dicts (PLOTTED views present in both, each a
    proportion {value, ci95, total}); `others`: the demo's summary of another set per OTHER_SETS
    name ({n, before, after, before_ci95, after_ci95}, or None when skipped). Returns
    [{"label", "n", "before": {"value", "ci95"}, "after": {"value", "ci95"}}] as given (shares, Wilson
    intervals), forward views first.
    """
    splits = [{"label": f"test split: {phrase[:1].lower()}{phrase[1:]}", "n": after[key].get("total", after.get("n")),
               "before": before[key], "after": after[key]}
              for key, phrase in PLOTTED if key in before and key in after]
    for name, r in others.items():
        if r:
            splits.append({"label": f"{SPLIT_NAMES[name]}: generation accuracy", "n": r["n"],
                           "before": {"value": r["before"], "ci95": r["before_ci95"]},
                           "after": {"value": r["after"], "ci95": r["after_ci95"]}})
    return splits


def _finite(*values) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)


def plot_report(curves: dict[str, list], stages: Sequence[dict], splits: Sequence[dict], path: str | Path,
                after_label: str = "after training") -> list[str]:
    """Write the report's picture (PNG) to `path` and return its caption, one line per panel.

    Left: `curves` ({key of CURVES: [[optimizer step, loss], ...]}, `training_curves`'s) over the
    whole run, on `stages`' spans shaded by track, with a dashed line where each loop after the first
    starts. Right: each of `splits` (`demo_splits`'s: label, n, before/after {value, ci95} shares)
    before and after (`after_label` in the legend), in percent with the 95% intervals as error bars,
    and chance for 5 options. Nothing not finite is drawn: a loss missing or not finite at a logged
    step, or a before/after share or interval that is not a finite number, is left out and the
    caption says how many.
    """
    import matplotlib  # defers matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(14, 5.5), gridspec_kw={"width_ratios": [1.5, 1]})
    left_out, plotted = [], []
    for key, label in CURVES:
        points = curves.get(key, [])
        kept = [(x, y) for x, y in points if _finite(x, y)]
        absent = sum(y is None for _, y in points)
        if absent:
            left_out.append(f"{label} absent from {absent} of {len(points)} logged steps (no such token in the "
                            "step's batch)")
        if len(points) - len(kept) - absent:
            left_out.append(f"{label} not finite at {len(points) - len(kept) - absent} of {len(points)} logged steps")
        if kept:
            ax.plot([x for x, _ in kept], [y for _, y in kept], linewidth=1, marker="." if len(kept) < 50 else None,
                    color=_CURVE_COLOURS.get(key), label=label)
            plotted += [y for _, y in kept]
    tracks = []
    for s in stages:
        ax.axvspan(s["start"], s["end"], color=_STAGE_COLOURS.get(s["track"], "grey"), alpha=0.12, linewidth=0)
        if s["track"] not in tracks:
            tracks.append(s["track"])
    loops = sorted({s["loop"] for s in stages if s["loop"] is not None})
    for n in loops[1:]:
        x = min(s["start"] for s in stages if s["loop"] == n)
        ax.axvline(x, color="black", linestyle="--", linewidth=0.8)
        ax.annotate(f"loop {n}", (x, 1), xycoords=("data", "axes fraction"), xytext=(3, -12),
                    textcoords="offset points", fontsize=8)
    if plotted and min(plotted) > 0 and max(plotted) / min(plotted) > 10:
        ax.set_yscale("log")
    handles, _ = ax.get_legend_handles_labels()
    handles += [Patch(color=_STAGE_COLOURS.get(t, "grey"), alpha=0.25, label=STAGE_LABELS.get(t, t)) for t in tracks]
    if handles:
        ax.legend(handles=handles, fontsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("optimizer step (whole loop run)")
    ax.set_ylabel("training cross-entropy (per logged step)")
    ax.set_title("Training curves")
    total = max((s["end"] for s in stages), default=0)
    stage_words = " and ".join(STAGE_LABELS.get(t, t) + "s" for t in tracks) or "no stages"
    left = (f"Left: answer loss (the answer after `</reasoning>`, with `<end_of_turn>`) and reasoning loss (every "
            f"other trained completion token), per logged optimizer step over the run's {total} steps; shaded: "
            f"{stage_words}" + ("; dashed: where each loop after the first starts" if len(loops) > 1 else ""))
    if not any(curves.get(key) for key, _ in CURVES):
        left += "; no training loss was logged"
    left += "".join(f"; {note}, left out" for note in left_out) + "."

    labels, split_notes = [], []
    for row, split in enumerate(reversed(list(splits))):
        labels.append(f"{split['label'].replace(': ', chr(10), 1)} (n={split.get('n', '?')})")
        for which, colour, shift in (("before", "grey", 0.15), ("after", "tab:red", -0.15)):
            p = split.get(which)
            ci = (p or {}).get("ci95") or [None, None]
            if p is None or not _finite(p.get("value"), *ci):
                split_notes.append(f"{split['label']} {which} (no finite share and interval)")
                ax2.annotate(f"{which}: left out (not finite)", (1, row + shift), fontsize=7, va="center",
                             color=colour)
                continue
            value, low, high = (100 * v for v in (p["value"], *ci))  # an end may miss the share by a rounding
            ax2.errorbar([value], [row + shift], xerr=[[max(value - low, 0.0)], [max(high - value, 0.0)]], fmt="o", color=colour,
                         capsize=3, label=after_label if which == "after" else "before training")
    ax2.axvline(20, color="grey", linestyle=":", label="chance (5 options)")
    ax2.set_yticks(range(len(labels)))
    ax2.set_ylim(-0.6, max(len(labels), 1) - 0.4)
    ax2.set_yticklabels(labels, fontsize=8)
    ax2.set_xlim(0, 100)
    ax2.set_xlabel("% of questions (95% Wilson interval)")
    ax2.set_title("Each split, before and after")
    by_label = dict(zip(*reversed(ax2.get_legend_handles_labels())))
    ax2.legend(by_label.values(), by_label.keys(), fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)
    right = (f"Right: each split before training in grey and {after_label} in red, the share of its questions "
             "with the 95% Wilson interval as error bars: " + (", ".join(s["label"] for s in splits) or "no split")
             + "; dotted: chance (20%)" + "".join(f"; {note}: left out" for note in split_notes) + ".")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [left, right]


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


def demo_setup_text(loop_cfg, base: str, n_train: int, n_test: int, n_dict: int, history: dict,
                    recipe: str = "") -> str:
    """The demo report's set-up section: model, data sizes, the loop's settings (`loop_cfg`, a LoopConfig;
    `recipe`, a sentence naming the file they came from), machine."""
    c = loop_cfg
    return (
        (f"- Recipe: {recipe}.\n" if recipe else "")
        + f"- Model: {base} (Gemma 3 270M, pretrained, dequantized from the embedded Q4_K_M GGUF), LoRA r64/alpha128 on all projections.\n"
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
SPLIT_NAMES = {"rephrased": "other phrasings", "reverse": "reverse (definition -> term)"}  # the picture's labels


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
