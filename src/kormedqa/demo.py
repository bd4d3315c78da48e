"""`kormedqa demo`: the whole pipeline on the embedded default model and the shipped sample data.

fetch -> prepare -> CPT (briefly) -> evaluate before -> loop -> report, and the same terms asked
another way scored before and with the best checkpoint. The loop's settings are a recipe file
(`--recipe`, by default recipes/cpu-demo.yaml, whatever the precision: the one place they are
written, also runnable on its own with `kormedqa loop --config`); the demo owns only what is its own: the CPT, the before/after
comparison and the report. Its time and figures: docs/results.md. Every stage writes atomically
and is skipped on `--resume` when finished, so an interrupted demo continues where it stopped.

The demo's learning rates are far above the spec's (2e-5 / 1e-5): at the spec's rates a few
minutes of CPU training change nothing measurable. The report says so, and says which of parse
rate, accuracy and log-likelihood accuracy moved and whether the change is significant.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import ClassVar

import yaml

from .checks import Range, check_config
from .config import DEFAULT_MODEL_HELP, SAMPLE_DICTIONARIES, DeviceArgs, ResumableRunArgs, arg
from .cpt import CPTConfig, run_cpt
from .data import load_dictionary, load_mcq, read_jsonl
from .errors import UsageError
from .evaluate import summary_line
from .formats import Glossary
from .fsio import write_json_atomic, write_jsonl_atomic
from .hardware import PrecisionChoice
from .loop import LoopConfig, evaluate_checkpoint, run_loop
from .metrics import proportion
from .modeling import DEFAULT_MODEL_NAME, load_tokenizer, resolve_model_path
from .prepare import dict_rows, mcq_rows
from .provenance import claim_run, run_precision
from .report import (cpt_text, demo_setup_text, demo_splits, markdown_report, other_set_line, plot_report, reading,
                     results_table, significance, training_curves, what_moved)
from .scorer_table import paired_keys, parse_eval_mode

log = logging.getLogger(__name__)


# What the demo sets in its loop itself: where the loop starts and writes, its data, and the run
# arguments the demo shares with its other steps. Everything else comes from --recipe.
DEMO_LOOP_FIELDS = ("base_model", "output", "dictionary", "train_data", "eval_data", "device", "precision", "seed",
                    "resume")


# The demo's loop, in every precision: since its LoRA trains without dropout, the fp32 demo on a CPU
# without native bf16 fits its 30 minutes with it (docs/results.md, "The demo without native bf16").
DEMO_RECIPE = "recipes/cpu-demo.yaml"


@dataclass
class DemoConfig(ResumableRunArgs, DeviceArgs):
    """`kormedqa demo`: fetch, prepare, CPT, evaluate, the recipe's loop, report."""

    output: str = arg("runs/demo", "demo folder: prepared/, cpt/, eval_before/, loop/, REPORT.md, summary.json and its "
                      "picture report.png")
    model: str = arg("gemma3-270m", "model to start from: " + DEFAULT_MODEL_HELP)
    dictionary: list[str] = arg(help="dictionary JSON(s): CPT vocabulary, dictionary stage, glossary",
                                factory=lambda: list(SAMPLE_DICTIONARIES))
    mcq: str = arg("data/sample/mcq", "KorMedMCQA folder with train and test splits")
    rephrased: str = arg("data/sample/mcq_rephrased", "a test split of the same terms asked another way, scored by "
                         "generation before training and with the best checkpoint ('' to skip; the sample's is "
                         "scripts/make_sample_mcq.py --rephrase 1)")
    reverse: str = arg("data/sample/mcq_reverse", "a test split of the same terms asked the other way round "
                       "(definition -> term), scored as --rephrased is ('' to skip; the sample's is "
                       "scripts/make_sample_mcq.py --reverse 1)")
    corpus: str = arg("data/sample/corpus/train.txt", "CPT text (a .txt file or folder)")
    heldout: str = arg("data/sample/corpus/heldout.txt", "held-out text for CPT perplexity")
    cpt_steps: int = arg(8, "CPT optimizer steps (a short pass: the demo's point is the SFT loop)")
    cpt_learning_rate: float = arg(2e-4, "CPT learning rate")
    recipe: str = arg("", "the loop's settings: a `kormedqa loop` recipe (YAML); the demo sets its "
                      + ", ".join(DEMO_LOOP_FIELDS[:-1]) + f" itself. Default: {DEMO_RECIPE}")
    loop_set: list[str] = arg(help="loop settings over the recipe's, as name=value (e.g. --loop-set mcq_epochs=0.1 "
                              "eval_limit=8)", factory=list)

    RANGES: ClassVar[dict] = {"cpt_steps": Range(low=1), "cpt_learning_rate": Range(low=0, low_open=True)}

    def __post_init__(self):
        """Ranges, before anything is written (the recipe's settings are checked by `demo_loop_config`)."""
        check_config(self)


def demo_loop_config(cfg: DemoConfig, base_model: str = "", output: str | Path = "") -> LoopConfig:
    """The demo's loop: `cfg.recipe`'s settings (`DEMO_RECIPE` when empty) with `cfg.loop_set` over them, and the demo's own
    `DEMO_LOOP_FIELDS` (`base_model` and `output` as given; data, device, precision, seed from `cfg`;
    resume on, so a resumed demo continues its loop). UsageError for a missing or malformed recipe,
    an unknown setting or a `--loop-set` without `=`; LoopConfig's own checks (ranges, choices,
    select-by) raise UsageError too. Nothing is written.
    """
    recipe = cfg.recipe or DEMO_RECIPE
    path = Path(recipe)
    if not path.is_file():
        raise UsageError(f"--recipe {recipe}: no such file")
    try:
        settings = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise UsageError(f"--recipe {recipe} is not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(settings, dict):
        raise UsageError(f"--recipe {recipe}: a recipe is a mapping of loop settings")
    for item in cfg.loop_set:
        name, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--loop-set {item!r}: give name=value")
        settings[name.strip().replace("-", "_")] = yaml.safe_load(value)
    known = {f.name for f in fields(LoopConfig)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise UsageError(f"{recipe} / --loop-set: not loop settings: {', '.join(unknown)}")
    settings.update(base_model=base_model or cfg.model, output=str(output or Path(cfg.output) / "loop"),
                    dictionary=list(cfg.dictionary), train_data=cfg.mcq, eval_data=cfg.mcq, device=cfg.device,
                    precision=cfg.precision, seed=cfg.seed, resume=True)
    return LoopConfig(**settings)


class DemoRecipe:
    """`kormedqa demo` as named steps, each reading what it needs from disk and skipped when finished:

        demo = DemoRecipe(cfg)
        demo.setup()             # inputs, the recipe's loop, the precision; claim the output (run.json)
        demo.prepare()           # fetch the model; prepared/{dict,mcq_train}.jsonl
        demo.cpt()               # cpt/: a short continued pretraining, merged
        demo.evaluate_before()   # eval_before/ (and eval_before_{rephrased,reverse}/)
        demo.loop()              # loop/: the recipe's loop from the CPT model
        demo.compare()           # last loop vs before (McNemar per metric); the other sets with the best checkpoint
        summary = demo.report()  # REPORT.md, report.png, summary.json

    `run()` does exactly that, timing each step into `timings` (seconds).
    """

    def __init__(self, cfg: DemoConfig):
        self.cfg = cfg
        self.timings: dict[str, float] = {}
        self.recorded: dict[str, float] = {}  # timings of an earlier run of this folder (read once it is claimed)
        self.kept = 0.0  # seconds of steps an earlier run finished, which this run does not measure again

    def setup(self) -> None:
        """Read and check every input (DataError, ModelError, UsageError for the recipe) and decide the
        precision, then claim the output: OutputExistsError without --resume/--overwrite, UsageError for
        a resume of another command's folder or with other settings. Nothing is written before."""
        self.choice: PrecisionChoice = run_precision(self.cfg)  # once for the whole demo; every step gets it
        self.cfg = cfg = replace(self.cfg, recipe=self.cfg.recipe or DEMO_RECIPE)  # run.json records the one read
        self.loop_cfg = demo_loop_config(cfg)  # the recipe checked before anything is written
        self.entries = load_dictionary(*cfg.dictionary)
        self.train = load_mcq(cfg.mcq, split="train")
        every, limit = max(self.loop_cfg.eval_every, 1), self.loop_cfg.eval_limit
        test = load_mcq(cfg.mcq, split="test")[::every]
        self.test = test[:limit] if limit else test
        # The same subset of the same terms, asked another way and the other way round: knowledge of the
        # terms, not of the questions' surface, and whether it is usable in reverse.
        self.other_sets = {name: load_mcq(folder, split="test")[::every][: limit or None]
                           for name, folder in (("rephrased", cfg.rephrased), ("reverse", cfg.reverse)) if folder}
        if cfg.model != DEFAULT_MODEL_NAME:
            resolve_model_path(cfg.model)  # ModelError before the output is claimed (the default is fetched below)
        # Before anything is skipped as finished: another command's folder, changed settings or data are refused.
        self.out = claim_run(cfg, "demo", {"mcq": cfg.mcq}, choice=self.choice)
        earlier = self.out / "timings.json" if (self.out / "timings.json").exists() else self.out / "summary.json"
        if cfg.resume and earlier.exists():
            data = json.loads(earlier.read_text(encoding="utf-8"))
            self.recorded = dict(data.get("timings", data) if earlier.name == "summary.json" else data)

    def prepare(self) -> None:
        """Fetch the model (the embedded default is built once under models/) and write prepared/."""
        self.base = resolve_model_path(self.cfg.model)
        self._mark("fetch")
        self.glossary = Glossary(self.entries)
        prepared = self.out / "prepared"
        prepared.mkdir(exist_ok=True)
        write_jsonl_atomic(prepared / "dict.jsonl", dict_rows(self.entries))
        write_jsonl_atomic(prepared / "mcq_train.jsonl", mcq_rows(self.train, self.cfg.seed, self.glossary,
                                                                  template=self.loop_cfg.rationale_template))

    def cpt(self) -> None:
        """A short continued pretraining of the base on the corpus and the dictionary, merged into cpt/model."""
        cfg, cpt_dir = self.cfg, self.out / "cpt"
        if not (cpt_dir / "metrics.json").exists():
            run_cpt(CPTConfig(
                corpus=cfg.corpus, heldout=cfg.heldout, vocab=cfg.dictionary, base_model=self.base, output=str(cpt_dir),
                max_steps=cfg.cpt_steps, batch_size=4, learning_rate=cfg.cpt_learning_rate,
                max_length=128, device=cfg.device, precision=cfg.precision, seed=cfg.seed, overwrite=True,
            ), self.choice)
        self.cpt_metrics = json.loads((cpt_dir / "metrics.json").read_text())
        self.cpt_model = str((cpt_dir / "model").resolve())

    def evaluate_before(self) -> None:
        """Score the CPT model as the loop will score its checkpoints (eval_before/, eval_dict_before/)."""
        c, before_dir = self.loop_cfg, self.out / "eval_before"
        if not (before_dir / "metrics.json").exists():
            evaluate_checkpoint(
                self.cpt_model, load_tokenizer(self.cpt_model), self.test, before_dir, eval_mode=c.eval_mode,
                eval_batch_size=c.eval_batch_size, max_new_tokens=c.max_new_tokens, glossary=self.glossary,
                rationale_template=c.rationale_template, entries=self.entries, dict_eval_limit=c.dict_eval_limit,
                dict_folder=self.out / "eval_dict_before", choice=self.choice)
        self.before = json.loads((before_dir / "metrics.json").read_text())
        self.before_preds = read_jsonl(before_dir / "predictions.jsonl")
        log.info("before training: %s", summary_line(self.before))

    def evaluate_before_other(self, name: str) -> None:
        """Generation on another set of the same terms (`name`: "rephrased" or "reverse") before
        training, in eval_before_<name>/."""
        self.other_before[name] = self._score_other(name, self.cpt_model, self.out / f"eval_before_{name}")

    def loop(self) -> None:
        """The recipe's loop from the CPT model, in loop/ (resumed when it was started before)."""
        self.history = run_loop(demo_loop_config(self.cfg, self.cpt_model, self.out / "loop"), self.choice)

    def compare(self) -> None:
        """The last loop against before training, by McNemar's exact test per metric ("after" is the last
        loop, not the best one: picking the best of several loops on the test split would report a
        selection effect as learning); the other phrasings with the best checkpoint."""
        self.last_loop = self.history["loops"][-1]["loop"]
        after_dir = self.out / "loop" / f"loop_{self.last_loop}" / "eval"
        self.after = json.loads((after_dir / "metrics.json").read_text())
        after_preds = read_jsonl(after_dir / "predictions.jsonl")
        before_preds = self.before_preds
        # Every rate the scorers declare a per-question field for (parse rate: a letter was found).
        tests = {metric: significance(before_preds, after_preds, key)
                 for metric, key in paired_keys(parse_eval_mode(self.loop_cfg.eval_mode)).items()}
        self.tests = {k: v for k, v in tests.items() if v["only_a"] + v["only_b"] or k in self.before}
        self.other_summary = {}

    def evaluate_other(self, name: str) -> None:
        """Generation on another set of the same terms with the best checkpoint (eval_<name>/), against
        before: {"n", "before", "after" (shares), "before_ci95", "after_ci95" (Wilson), "test" (McNemar)}."""
        after = self._score_other(name, str((self.out / "loop" / "best_checkpoint").resolve()), self.out / f"eval_{name}")
        before = self.other_before[name]
        b, a = (proportion(sum(p["correct"] for p in preds), len(preds)) for preds in (before, after))
        self.other_summary[name] = {"n": len(after), "before": b["value"], "after": a["value"],
                                    "before_ci95": b["ci95"], "after_ci95": a["ci95"],
                                    "test": significance(before, after, "correct")}

    def report(self, started: float) -> dict:
        """REPORT.md (set-up, CPT, the picture, results table, what moved, timings), report.png (the loop's
        training curves; every split before and after), summary.json; returns the summary."""
        out, cfg = self.out, self.cfg
        log_file = out / "loop" / "train_log.jsonl"
        curves, stages = training_curves(read_jsonl(log_file, allow_empty=True) if log_file.exists() else [])
        plot = out / "report.png"
        caption = plot_report(curves, stages, demo_splits(self.before, self.after, self.other_summary), plot,
                              after_label="after (test split: last loop; other sets: best checkpoint)")
        # This run's wall time plus the steps an earlier run finished: a resumed, finished demo reports the
        # time its results took, not the seconds it took to find them on disk.
        self.timings["total"] = round(time.time() - started + self.kept, 1)
        moved = what_moved(self.before, self.after, self.tests)
        for name, summary in self.other_summary.items():
            moved.append(other_set_line(name, summary, getattr(cfg, name)))
        table = results_table(self.before, self.history)
        text = markdown_report("kormedqa demo report", {
            "Set-up": demo_setup_text(self.loop_cfg, self.base, len(self.train), len(self.test), len(self.entries),
                                      self.history, recipe=f"`{cfg.recipe}`"),
            "Continued pretraining": cpt_text(self.cpt_metrics),
            "At a glance": f"![training curves; every split before and after]({plot.name})\n\n"
            + "\n".join(f"- {line}" for line in caption),
            "Results on the held-out test split": table + "\n\nIntervals are 95% Wilson intervals; chance is 20%.",
            "What moved (before training -> last loop)": "\n".join(moved) + "\n\n" + reading(self.before, self.after,
                                                                                                self.tests),
            "Timings (seconds)": "\n".join(f"- {k}: {v}" for k, v in self.timings.items()),
        })
        (out / "REPORT.md").write_text(text, encoding="utf-8")
        summary = {"before": self.before, "after": self.after, "tests": self.tests,
                   "rephrased": self.other_summary.get("rephrased"), "reverse": self.other_summary.get("reverse"),
                   "timings": self.timings, "last_loop": self.last_loop, "best_loop": self.history["best"]["loop"]}
        write_json_atomic(out / "summary.json", summary)
        print("\n" + table + "\n")
        print("\n".join(moved))
        print(f"\nreport: {out / 'REPORT.md'}  plot: {plot}  ({self.timings['total']:.0f} s)")
        return summary

    def run(self) -> dict:
        """Every step in order, each timed; returns the summary (`report`)."""
        started = time.time()
        self.setup()
        self._since = time.time()
        self.prepare()  # marks "fetch" itself, between fetching and preparing
        self._mark("prepare")
        def finished(folder: str) -> bool:
            return (self.out / folder / "metrics.json").exists()

        for name, step in (("cpt", self.cpt), ("eval_before", self.evaluate_before)):
            done = finished(name)
            step()
            self._mark(name, finished_before=done)
        self.other_before: dict[str, list[dict]] = {}
        for name in self.other_sets:
            done = finished(f"eval_before_{name}")
            self.evaluate_before_other(name)
            self._mark(f"eval_before_{name}", finished_before=done)
        continued = (self.out / "loop" / "history.json").exists()
        self.loop()
        self._mark("loop", continued=continued)
        self.compare()
        self._since = time.time()
        for name in self.other_sets:
            done = finished(f"eval_{name}")
            self.evaluate_other(name)
            self._mark(f"eval_{name}", finished_before=done)
        return self.report(started)

    def _mark(self, step: str, finished_before: bool = False, continued: bool = False) -> None:
        """Time `step`: measured; or, for a step an earlier run finished (skipped now), the time it took
        then; or, for one this run `continued`, what the earlier run recorded plus what this run took.
        Written to timings.json at once, so a resume keeps what it does not measure again."""
        now = time.time()
        measured = round(now - self._since, 1)
        if (finished_before or continued) and step in self.recorded:
            self.kept += self.recorded[step]
            self.timings[step] = round(self.recorded[step] + (measured if continued else 0.0), 1)
        else:
            self.timings[step] = measured
        write_json_atomic(self.out / "timings.json", self.timings)
        log.info("demo: %s done in %.0f s", step, self.timings[step])
        self._since = now

    def _score_other(self, name: str, model: str, folder: Path) -> list[dict]:
        c = self.loop_cfg
        if not (folder / "metrics.json").exists():
            evaluate_checkpoint(model, load_tokenizer(model), self.other_sets[name], folder, eval_mode="generate",
                                eval_batch_size=c.eval_batch_size, max_new_tokens=c.max_new_tokens,
                                glossary=self.glossary, rationale_template=c.rationale_template, choice=self.choice)
        return read_jsonl(folder / "predictions.jsonl")


def run_demo(cfg: DemoConfig) -> dict:
    """The whole pipeline on `cfg.output`: fetch, prepare, CPT, evaluate before, loop, evaluate, report.

    Returns the summary also written to summary.json: {"before", "after" (metrics dicts),
    "tests" (McNemar per metric), "rephrased" (generation accuracy before and with the best
    checkpoint on `cfg.rephrased`, with Wilson intervals and McNemar; None when skipped), "reverse"
    (the same for `cfg.reverse`), "timings" (seconds per step),
    "last_loop", "best_loop"}. Raises DataError/ModelError/UsageError before the output is
    claimed, OutputExistsError for an existing output without --resume or --overwrite. The steps:
    `DemoRecipe`.
    """
    return DemoRecipe(cfg).run()
