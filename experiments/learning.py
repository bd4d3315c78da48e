"""Does training carry dictionary knowledge to the answer? Arms of the product's own loop, one test split.

Every arm is `kormedqa loop` (`run_loop`) from the same base model on the shipped sample, scored
on the whole held-out test split (162 questions whose terms are in the dictionary) with three
scorers: greedy generation (the spec's metric: letter after `</reasoning>`), letter
log-likelihood (A-E after the spec's prompt) and cloze (each option's text after a question-only
prompt), plus dictionary recall (chrF on the first 80 entries). Each arm is compared with the
untrained base and with the control arm by McNemar's exact test on the same questions.

    python experiments/learning.py [--model DIR] [--arms a,b,...] [--precision fp32|bf16] [--results NAME] [--fresh]
        [--seed N] [--rephrase SEED] [--reverse]

--rephrase and --reverse also score each arm's best checkpoint (base: the model) by generation on the test terms
asked another way and asked from their definitions (data/sample/mcq_reverse), each paired with the
arm's control by McNemar; a rerun with them only scores what is missing.

Arms (counted in epochs: the dictionary stage goes over all 484 entries, the MCQ stage over the
224 training questions, or over their rotated copies where an arm rotates options), one loop
each (recipes/experiments/<arm>.yaml); the default list is the one docs/results.md reports:
- base: the untrained model, scored only.
- recall: one dictionary epoch, two MCQ epochs of recall rationales (recall line, then the letter).
- recall_dict3: as recall with three dictionary epochs (the issue-11 measurement: cloze 30 -> 54%).
- rotate3_rehearse: three dictionary epochs, then one MCQ epoch over each question in 3 option
  orders (`--option-rotations 3`) with half as many dictionary rows rehearsed among them
  (`--dict-rehearsal 0.5`).
- rotate3_rehearse_long: as rotate3_rehearse with the control's MCQ length (1.67 epochs), which
  took the control's letter to the copied option's in 98% of answers.
- rotate3_mcq_only: the control of rotate3_rehearse: its MCQ stage alone (no dictionary rows at
  all) for about its training time, so it separates knowledge from format.
- dictline_rehearse_long: as rotate3_rehearse_long with `--rationale-template dictionary_line`
  (the recall line is the dictionary track's own `Meaning of word X: <English>. <Korean>`);
  compared with its own control, dictline_mcq_only (the same MCQ track alone, about as long).
- star_dictline: STaR (issue 22; docs/rationales.md): three dictionary epochs, then the dictionary
  stage's own checkpoint writes rationales for the training questions (`kormedqa rationales`, settings
  in star_dictline.rationales.yaml: 2 sampled tries, a hinted try, the dictionary_line template for
  what fails), then five unrotated MCQ epochs on them with rehearsal 0.5; compared with
  dictline_rehearse_long and their control dictline_mcq_only.
- dictline_both_ways: knowledge both ways (issue 25): recipes/cpu-demo-both-ways.yaml's training on the
  bench (dictionary rows term -> definition and description -> term, the reverse training questions in
  the MCQ stage, 0.3 MCQ epochs over five option orders, rehearsal 1.0); control dictline_mcq_only.
- dictline_both_ways_long: dictline_rehearse_long's MCQ stage (three option orders, as many steps) over the
  forward and reverse training questions, the dictionary both ways; control dictline_mcq_only.
- linked, verdict, mcq_only, recall_mcq_only: earlier arms, selectable with --arms (recipes/experiments/).
Each arm must fit in 60 minutes with its evaluation on 2 cores without native bf16.

Learning rates 5e-4 (the spec's 2e-5 / 1e-5 move nothing in CPU minutes; measured in earlier
runs of this experiment), dictionary batch 8, MCQ batch 4, answer weight 2/3, fp32 or the precision
`--precision` picks. Finished arms are kept (experiments/work/learning/<arm>/result.json) and skipped on the
next run, an unfinished one resumes after its last finished stage; --fresh retrains them. The
result file keeps each arm's per-question picks, so an arm of it stands in a later table (same
settings, same definition) on a machine without the work folder. A run in another precision writes
its own table (`--precision bf16 --results learning_bf16`): arms are compared only within one.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "bench"))
from common import SAMPLE, machine, repo_relative  # noqa: E402  (the benchmarks' sample paths, machine record, paths made relative)
from kormedqa.scorer_table import REPORT_METRICS, paired_keys, parse_eval_mode  # noqa: E402

# Each arm is a recipe file in `kormedqa loop`'s keys (recipes/experiments/<arm>.yaml, with why it
# was tried); the STaR arm's rationale settings are <arm>.rationales.yaml in `kormedqa rationales`' keys.
RECIPES = REPO / "recipes" / "experiments"
ARMS = {p.stem: yaml.safe_load(p.read_text(encoding="utf-8")) for p in sorted(RECIPES.glob("*.yaml"))
        if not p.name.endswith(".rationales.yaml")}
STAR = {p.name.removesuffix(".rationales.yaml"): yaml.safe_load(p.read_text(encoding="utf-8"))
        for p in sorted(RECIPES.glob("*.rationales.yaml"))}
# Arms compared with a matched control of their own; every other arm with CONTROL.
CONTROLS = {"dictline_rehearse_long": "dictline_mcq_only", "star_dictline": "dictline_mcq_only",
            "dictline_both_ways": "dictline_mcq_only", "dictline_both_ways_long": "dictline_mcq_only"}
CONTROL = "rotate3_mcq_only"
EVAL_MODE = "generate,loglik,cloze"
DICT_RECALL_ENTRIES = 80
# McNemar per rate the scorers declare a per-question field for, and the metrics shown: both from
# the scorer table (kormedqa.scorer_table), as the loop's history and the report read them.
KEYS = paired_keys(parse_eval_mode(EVAL_MODE))
SHOWN = tuple(m.name for m in REPORT_METRICS if m.column or m.name == "dict_chrf")


def dictionary_paths() -> list[str]:
    return [str(SAMPLE / "dictionary.json"), str(SAMPLE / "characters.json")]


def run_base(args, work: Path) -> dict:
    """The untrained model through the loop's own evaluation step (no training, so no loop)."""
    from kormedqa.data import load_dictionary, load_mcq, read_jsonl
    from kormedqa.hardware import choose
    from kormedqa.loop import evaluate_checkpoint
    from kormedqa.modeling import load_tokenizer

    started = time.time()
    test = load_mcq(SAMPLE / "mcq", split="test")
    metrics = evaluate_checkpoint(
        args.model, load_tokenizer(args.model), test, work / "base" / "eval", eval_mode=EVAL_MODE,
        eval_batch_size=args.eval_batch_size, max_new_tokens=args.max_new_tokens,
        entries=load_dictionary(*dictionary_paths()), dict_eval_limit=DICT_RECALL_ENTRIES,
        dict_folder=work / "base" / "eval_dict", choice=choose("cpu", args.precision))
    preds = read_jsonl(work / "base" / "eval" / "predictions.jsonl")
    return {"metrics": {k: metrics[k] for k in SHOWN if k in metrics}, "preds": _slim(preds),
            "train_seconds": 0.0, "eval_seconds": time.time() - started, "loops": []}


def loop_config(name: str, settings: dict, args, work: Path, **changes):
    """The arm as `kormedqa loop` settings (LoopConfig): its recipe's `settings`, and what every arm
    shares from this run (model, sample data, output, scoring batch, generation budget, precision,
    seed), resuming whatever an earlier run finished. `changes` replace fields (the STaR arm's
    stages, base model, rationales and output folders)."""
    from dataclasses import replace

    from kormedqa.loop import LoopConfig

    return replace(LoopConfig(
        # The arms are compared by their last loop on the sample's test split, as they always were;
        # nothing is chosen among loops here, so no separate test pass (unless an arm's recipe says).
        **{"eval_split": "test", "test_split": "", **settings},
        base_model=args.model, dictionary=dictionary_paths(), train_data=str(SAMPLE / "mcq"),
        eval_data=str(SAMPLE / "mcq"), output=str(work / name / "loop"), eval_batch_size=args.eval_batch_size,
        max_new_tokens=args.max_new_tokens, device="cpu", precision=args.precision, seed=args.seed, resume=True,
    ), **changes)


def settings_of_old_spec(spec: dict | None) -> dict | None:
    """An arm as result files before 2026-12-03 recorded it (stages, loops, template ...) in the recipe's
    LoopConfig keys, so a stored arm still stands in a table when its recipe is the same."""
    if not spec or "loops" not in spec:
        return spec
    out = {"stages": spec["stages"], "max_loops": spec["loops"], "patience": spec["loops"],
           "epochs_per_stage": spec.get("epochs", 1.0), "dict_epochs": spec.get("dict_epochs"),
           "mcq_epochs": spec.get("mcq_epochs"), "dict_learning_rate": 5e-4, "mcq_learning_rate": spec.get("mcq_lr", 5e-4),
           "dict_batch_size": 8, "mcq_batch_size": 4, "dict_rehearsal": spec.get("dict_rehearsal", 0.0),
           "option_rotations": spec.get("rotations", 1), "dict_grad_accum": 1, "mcq_grad_accum": 1,
           "answer_weight": "2/3", "rationale_template": spec["template"], "group_by_length": True,
           "eval_mode": EVAL_MODE, "dict_eval_limit": DICT_RECALL_ENTRIES}
    return {k: v for k, v in out.items() if v is not None}


def run_star(name: str, settings: dict, args, work: Path, star: dict | None = None) -> dict:
    """The STaR arm: the dictionary stage; its checkpoint writes rationales for the training split
    (`kormedqa rationales`, settings `star`, default STAR[name]); the MCQ stage continues the same adapter on
    them. Each part resumes from what an earlier run finished. The result is `run_arm`'s plus
    "rationales" (kept / rationalised / fallback, the teacher's accuracy) and "rationale_seconds";
    train_seconds counts both training stages, not the generation."""
    from kormedqa.loop import LoopRecipe
    from kormedqa.rationales import RationalesConfig, run_rationales

    dict_recipe = LoopRecipe(loop_config(name, settings, args, work, stages="dict", output=str(work / name / "dict")))
    dict_recipe.setup()
    teacher = dict_recipe.train(1)
    dict_seconds = dict_recipe._summaries.get("dict", {}).get("seconds") or 0.0
    star = star or STAR[name]
    folder = work / name / "rationales"
    if not (folder / "rationales.jsonl").exists():
        run_rationales(RationalesConfig(
            data=[str(SAMPLE / "mcq")], split="train", output=str(folder), resume=True, teacher=teacher, backend="hf",
            samples=star["samples"], temperature=star["temperature"], top_p=star["top_p"],
            max_new_tokens=star["max_new_tokens"], shots=star["shots"], batch_size=args.eval_batch_size,
            dictionary=dictionary_paths(), rationale_template=settings["rationale_template"], device="cpu",
            precision=args.precision, seed=args.seed))
    summary = json.loads((folder / "rationales_summary.json").read_text())
    result = run_arm(name, settings, args, work, config=loop_config(
        name, settings, args, work, stages="mcq", base_model=teacher, rationales=str(folder / "rationales.jsonl")))
    result["train_seconds"] += dict_seconds
    result["rationales"] = summary["all"]
    # The summary's clock covers the run that wrote it: after a resumed generation, its part only.
    result["rationale_seconds"] = summary["seconds_this_run"]
    result["rationale_questions"] = summary["questions_this_run"]
    return result


def run_arm(name: str, settings: dict, args, work: Path, config=None) -> dict:
    """One arm through the loop's own steps (kormedqa.loop.LoopRecipe), with one step the product's
    loop does not take: when a dictionary stage is followed by another stage, the dictionary stage's
    checkpoint is scored by cloze too (loop_N/eval_after_dict), so the table shows how much of the
    knowledge the later stages keep."""
    from kormedqa.data import read_jsonl
    from kormedqa.hardware import choose
    from kormedqa.loop import LoopRecipe, evaluate_checkpoint

    started = time.time()
    recipe = LoopRecipe(config or loop_config(name, settings, args, work))
    recipe.setup()
    stages = recipe.stages
    for loop in recipe.loops():
        checkpoint = recipe.train(loop)
        loop_dir = recipe.out / f"loop_{loop}"
        after_dict = loop_dir / "eval_after_dict"
        if stages[0] == "dict" and len(stages) > 1 and not (after_dict / "metrics.json").exists():
            evaluate_checkpoint(
                str(loop_dir / "after_type1"), recipe.tokenizer, recipe.evaluation, after_dict, eval_mode="cloze",
                eval_batch_size=args.eval_batch_size, max_new_tokens=args.max_new_tokens, choice=choose("cpu", args.precision))
        if recipe.save_checkpoint(loop, recipe.evaluate(loop, checkpoint)):
            break
    history = recipe.cleanup()
    last = history["loops"][-1]
    loop_dir = work / name / "loop" / f"loop_{last['loop']}"
    preds = read_jsonl(loop_dir / "eval" / "predictions.jsonl")
    train_s = sum(part.get("seconds") or 0 for l in history["loops"] for part in l["training"].values())
    # Evaluation time from the metrics files, so a resumed arm still reports its whole cost.
    metric_files = [work / name / "loop" / f"loop_{l['loop']}" / sub / "metrics.json"
                    for l in history["loops"] for sub in ("eval", "eval_dict", "eval_after_dict")]
    eval_s = sum(json.loads(f.read_text())["seconds"] for f in metric_files if f.exists())
    after_dict = loop_dir / "eval_after_dict" / "metrics.json"
    metrics = {k: last["metrics"][k] for k in SHOWN if k in last["metrics"]}
    if after_dict.exists():
        metrics["cloze_accuracy_after_dict"] = json.loads(after_dict.read_text())["cloze_accuracy"]
    return {"metrics": metrics, "preds": _slim(preds),
            "train_seconds": train_s, "eval_seconds": eval_s, "wall_seconds_this_run": time.time() - started,
            "loops": [{"loop": l["loop"], "metrics": {k: l["metrics"][k] for k in SHOWN if k in l["metrics"]},
                       "training": l["training"]} for l in history["loops"]]}


SAME_RUN = ("max_new_tokens", "eval_batch_size", "precision", "seed")


def stored_arms(args) -> dict:
    """Arms of the last result file (experiments/results/<--results>.json) that can stand in this table:
    run with the same settings and arm definition, and stored with their per-question picks
    (which the paired tests need). The work folder does not travel with the repository; these do."""
    path = HERE / "results" / f"{args.results}.json"
    if not path.exists():
        return {}
    last = json.loads(path.read_text())
    if any(last["settings"].get(k) != getattr(args, k) for k in SAME_RUN):
        return {}
    return {n: r for n, r in last["results"].items() if "preds" in r and settings_of_old_spec(last["arms"].get(n)) == ARMS.get(n)}


def rephrased_questions(seed: int, work: Path) -> list:
    """The test split's terms asked another way (scripts/make_sample_mcq.py --rephrase `seed`)."""
    import importlib.util

    from kormedqa.data import load_mcq

    folder = work / f"rephrased_{seed}"
    if not (folder / "test.jsonl").exists():
        spec = importlib.util.spec_from_file_location("make_sample_mcq", REPO / "scripts" / "make_sample_mcq.py")
        script = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(script)
        script.main(["--out-dir", str(folder), "--rephrase", str(seed)])
    return load_mcq(folder, split="test")


def other_splits(args) -> dict[str, str]:
    """The other test splits this run scores, metric key -> eval folder name under each arm's loop/."""
    out = {}
    if args.rephrase is not None:
        out[f"accuracy_rephrased_{args.rephrase}"] = f"eval_rephrased_{args.rephrase}"
    if args.reverse:
        out["accuracy_reverse"] = "eval_reverse"
    return out


def other_split_questions(key: str, work: Path) -> list:
    """The questions behind `key`: other phrasings of the test terms (`accuracy_rephrased_<seed>`) or
    the reverse split, definition -> term (`accuracy_reverse`: data/sample/mcq_reverse)."""
    from kormedqa.data import load_mcq

    if key == "accuracy_reverse":
        return load_mcq(SAMPLE / "mcq_reverse", split="test")
    return rephrased_questions(int(key.rsplit("_", 1)[1]), work)


def score_other_split(name: str, result: dict, key: str, folder: str, args, work: Path) -> None:
    """Generation accuracy of the arm's best checkpoint (base: the model itself) on another split of the same test terms
    (`key` in its metrics, predictions in `loop/<folder>`): other phrasings show knowledge of the
    terms rather than of the questions' surface; the reverse split asks the term from its definition."""
    from kormedqa.hardware import choose
    from kormedqa.loop import evaluate_checkpoint
    from kormedqa.modeling import load_tokenizer

    checkpoint = Path(args.model) if name == "base" else work / name / "loop" / "best_checkpoint"
    if key in result["metrics"] or not checkpoint.exists():
        return
    started = time.time()
    metrics = evaluate_checkpoint(
        str(checkpoint), load_tokenizer(args.model), other_split_questions(key, work),
        work / name / "loop" / folder, eval_mode="generate",
        eval_batch_size=args.eval_batch_size, max_new_tokens=args.max_new_tokens, choice=choose("cpu", args.precision))
    result["metrics"][key] = metrics["accuracy"]
    result["eval_seconds"] += time.time() - started


def other_split_tests(work: Path, arm: str, control: str, splits: dict[str, str]) -> dict:
    """McNemar's exact test of `arm` against `control` on each other split both were scored on,
    pairing questions by id in the two arms' predictions.jsonl ({metric key: test})."""
    from kormedqa.data import read_jsonl
    from kormedqa.metrics import mcnemar_exact

    out = {}
    for key, folder in splits.items():
        files = [work / a / "loop" / folder / "predictions.jsonl" for a in (control, arm)]
        if not all(f.exists() for f in files):
            continue
        a, b = ({p["id"]: p["correct"] for p in read_jsonl(f)} for f in files)
        ids = sorted(a.keys() & b.keys())
        out[key] = mcnemar_exact([a[i] for i in ids], [b[i] for i in ids])
    return out


def _slim(preds: list[dict]) -> list[dict]:
    """What the paired tests and a letter histogram need, keyed by id."""
    keep = ("id", "gold", "prediction", "loglik_prediction", "cloze_prediction", *KEYS.values())
    return [{k: p[k] for k in keep if k in p} for p in preds]


def decision_breakdown(arm_dir: Path) -> dict | None:
    """Where the answer is lost: knowledge (the rationale names the right option) or mapping (the
    letter is the named option's). An option is named when exactly one option's text appears word
    for word in the rationale, as recall rationales do; linked rationales copy all five (None then).
    Read from the last loop's predictions.jsonl, which keeps the raw outputs.
    """
    from kormedqa.data import load_mcq, read_jsonl
    from kormedqa.records import LETTERS

    evals = sorted(arm_dir.glob("loop/loop_*/eval/predictions.jsonl"), key=lambda p: int(p.parts[-3].split("_")[1]))
    if not evals:
        return None
    questions = {q.id: q for q in load_mcq(SAMPLE / "mcq", split="test")}
    named = right = follows = 0
    preds = read_jsonl(evals[-1])
    for pred in preds:
        reasoning = " ".join(pred.get("raw_output", "").split("</reasoning>")[0].split())
        hits = [letter for letter, text in zip(LETTERS, questions[pred["id"]].options) if " ".join(text.split()) in reasoning]
        if len(hits) != 1:
            continue
        named += 1
        right += hits[0] == pred["gold"]
        follows += hits[0] == pred["prediction"]
    if named < len(preds) / 2:
        return None
    return {"questions": len(preds), "names_one_option": named, "names_correct_option": right,
            "letter_is_named_option": follows}


def paired_tests(a: dict, b: dict) -> dict:
    """McNemar's exact test per metric, pairing questions by id."""
    from kormedqa.metrics import mcnemar_exact

    by_id = {p["id"]: p for p in a["preds"]}
    out = {}
    for metric, key in KEYS.items():
        pairs = [(by_id[p["id"]][key], p[key]) for p in b["preds"] if p["id"] in by_id and key in p and key in by_id[p["id"]]]
        if pairs:
            out[metric] = mcnemar_exact([x for x, _ in pairs], [y for _, y in pairs])
    return out


def _pct(m: dict | None) -> str:
    if not m:
        return "-"
    if "ci95" not in m:
        return f"{m['value']:.1f}"
    return f"{m['value']:.1%} [{m['ci95'][0]:.1%}, {m['ci95'][1]:.1%}]"


def table(results: dict, vs_base: dict, vs_control: dict) -> str:
    lines = ["| arm | generation accuracy | generation, the same terms asked another way | generation, reverse (term from its definition) "
             "| parse / format parse | letter loglik | cloze (raw / norm) | recall chrF "
             "| cloze after the dict stage | p vs base: gen / cloze | p vs control: gen / other way / reverse / cloze | minutes (train + eval) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def p(tests, name, metric):
        t = tests.get(name, {}).get(metric)
        return "-" if t is None else f"{t['p_value']:.2g}"

    for name, r in results.items():
        m = r["metrics"]
        rephrased_keys = [k for k in m if k.startswith("accuracy_rephrased_")]
        rephrased = ", ".join(f"{_pct(m[k])} (seed {k.rsplit('_', 1)[1]})" for k in rephrased_keys) or "-"
        other_way = " ".join(p(vs_control, name, k) for k in rephrased_keys) or "-"
        parse = (f"{m['parse_rate']['value']:.0%} / {m['format_parse_rate']['value']:.0%}"
                 if "parse_rate" in m else "-")
        lines.append(
            f"| {name} | {_pct(m.get('accuracy'))} | {rephrased} | {_pct(m.get('accuracy_reverse'))} | {parse} "
            f"| {_pct(m.get('loglik_accuracy'))} "
            f"| {_pct(m.get('cloze_accuracy'))} / {m['cloze_accuracy_norm']['value']:.1%} | {_pct(m.get('dict_chrf'))} "
            f"| {_pct(m.get('cloze_accuracy_after_dict'))} | {p(vs_base, name, 'accuracy')} / {p(vs_base, name, 'cloze_accuracy')} "
            f"| {p(vs_control, name, 'accuracy')} / {other_way} / {p(vs_control, name, 'accuracy_reverse')} "
            f"/ {p(vs_control, name, 'cloze_accuracy')} "
            f"| {r['train_seconds'] / 60:.1f} + {r['eval_seconds'] / 60:.1f} |")
    return "\n".join(lines)


def control_of(name: str) -> str:
    """The arm a trained arm is compared with: its own matched control, else CONTROL."""
    return CONTROLS.get(name, CONTROL)


def best_arm(results: dict, vs_control: dict) -> str:
    trained = {n: r for n, r in results.items() if n != "base"}
    if not trained:
        return "no trained arm yet"
    name = max(trained, key=lambda n: trained[n]["metrics"]["accuracy"]["value"])
    acc = trained[name]["metrics"]["accuracy"]["value"]
    t = vs_control.get(name, {}).get("accuracy")
    versus = "" if t is None else f", McNemar p = {t['p_value']:.2g} vs {control_of(name)}"
    goal = "meets" if acc >= 0.35 and t is not None and t["p_value"] < 0.01 else "does not meet"
    return f"best arm by generation accuracy: {name} ({acc:.1%}{versus}); it {goal} the goal (>= 35%, p < 0.01 vs control)"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gemma3-270m")
    p.add_argument("--arms", default="base,recall,recall_dict3,rotate3_rehearse,rotate3_rehearse_long,rotate3_mcq_only", help=f"comma list of base and {', '.join(ARMS)}")
    p.add_argument("--max-new-tokens", type=int, default=192)
    p.add_argument("--eval-batch-size", type=int, default=32)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--results", default="learning",
                   help="name of the result (experiments/results/NAME.json) and of the work folder (experiments/work/NAME); "
                        "a run in another precision gets its own, e.g. learning_bf16")
    p.add_argument("--fresh", action="store_true", help="retrain arms that already have a result")
    p.add_argument("--rephrase", type=int, metavar="SEED",
                   help="also score each arm's best checkpoint (base: the model) (generation) on the test terms asked another "
                        "way (scripts/make_sample_mcq.py --rephrase SEED)")
    p.add_argument("--reverse", action="store_true",
                   help="also score each arm's best checkpoint (base: the model) (generation) on the reverse split "
                        "(data/sample/mcq_reverse: the test terms asked from their definitions)")
    args = p.parse_args()

    from kormedqa.fsio import write_json_atomic
    from kormedqa.modeling import resolve_model_path

    args.model = str(Path(resolve_model_path(args.model)).resolve())
    work = HERE / "work" / args.results
    started = time.time()
    stored = stored_arms(args)
    results = {}
    for name in args.arms.split(","):
        done = work / name / "result.json"
        if done.exists() and not args.fresh:
            results[name] = json.loads(done.read_text())
            continue
        if name in stored and not args.fresh:
            results[name] = stored[name]
            continue
        if args.fresh:
            shutil.rmtree(work / name, ignore_errors=True)
        # Otherwise an unfinished arm resumes: run_loop continues after its last finished stage.
        run = run_base if name == "base" else run_star if name in STAR else run_arm
        results[name] = run(args, work) if name == "base" else run(name, ARMS[name], args, work)
        results[name]["machine"] = machine()  # arms of one table may come from different runs
        done.parent.mkdir(parents=True, exist_ok=True)
        done.write_text(json.dumps(results[name], ensure_ascii=False))
        print(name, json.dumps({k: round(v["value"], 4) for k, v in results[name]["metrics"].items()}), flush=True)
    splits = other_splits(args)
    for key, folder in splits.items():
        for name in results:
            if (work / name / "result.json").exists():
                score_other_split(name, results[name], key, folder, args, work)
                (work / name / "result.json").write_text(json.dumps(results[name], ensure_ascii=False))
    vs_base = {n: paired_tests(results["base"], r) for n, r in results.items() if n != "base" and "base" in results}
    controls = {CONTROL, *CONTROLS.values()}
    vs_control = {n: {**paired_tests(results[control_of(n)], r), **other_split_tests(work, n, control_of(n), splits)}
                  for n, r in results.items() if n != "base" and n not in controls and control_of(n) in results}
    summary = best_arm(results, vs_control)
    text = table(results, vs_base, vs_control)
    text += "\n\nEach arm's control (\"p vs control\"): " + "; ".join(
        f"{n}: {control_of(n)}" for n in vs_control) + "."
    star = [f"- {n}: kept {r['rationales']['teacher']}, rationalised {r['rationales']['rationalised']}, template "
            f"fallback {r['rationales']['template']} of {r['rationales']['n']}; the teacher's first try "
            f"{_pct(r['rationales']['teacher_accuracy'])} right; generation {r['rationale_seconds'] / 60:.1f} min for "
            f"{r['rationale_questions']} questions" for n, r in results.items() if "rationales" in r]
    if star:
        text += "\n\nRationales the arm's own model wrote (kormedqa rationales):\n" + "\n".join(star)
    breakdown = {n: decision_breakdown(work / n) or results[n].get("breakdown") for n in results if n != "base"}
    for n, b in breakdown.items():
        results[n]["breakdown"] = b
    lines = [f"- {n}: of {b['questions']} rationales, {b['names_one_option']} name one option word for word; "
             f"{b['names_correct_option']} name the correct one (knowledge), and the letter is the named option's "
             f"in {b['letter_is_named_option']} (mapping)" for n, b in breakdown.items() if b]
    if lines:
        text += "\n\nWhere the answer is lost (from each arm's raw outputs):\n" + "\n".join(lines)
    # Paths inside the checkout relative to it: a result file does not name the machine's folders.
    write_json_atomic(HERE / "results" / f"{args.results}.json", repo_relative({
        "machine": machine(), "settings": vars(args), "arms": {n: ARMS.get(n) for n in results},
        "test_questions": len(next(iter(results.values()))["preds"]) if results else 0,
        "wall_seconds": time.time() - started,
        "arm_seconds_total": sum(r["train_seconds"] + r["eval_seconds"] for r in results.values()),
        "results": results,
        "prediction_counts": {n: {x: sum(p.get("prediction") == x for p in r["preds"]) for x in "ABCDE"}
                              for n, r in results.items()},
        "mcnemar_vs_base": vs_base, "mcnemar_vs_control": vs_control, "decision_breakdown": breakdown,
        "table": text, "summary": summary}))
    print(text)
    print(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
