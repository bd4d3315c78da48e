"""The spec's MedGemma-4B run on one GPU, sized: `kormedqa loop --config recipes/medgemma-4b-seed.yaml`
on a random-weight stand-in with MedGemma-4B's hub layout and shapes, the shipped sample as data.

The stand-in is `default_model.build_standin(layout="multimodal", size="4b")`: google/medgemma-4b-it's
config (Gemma3ForConditionalGeneration, 4.3B parameters with the SigLIP tower), tensor names, two
bf16 shards and processor files, random weights initialised on the GPU. The loop runs as a user
runs it (`kormedqa.cli.main`, the recipe's hyperparameters: dictionary batch 4 x 4, MCQ 2 x 8, LoRA
r64 on the language model, evaluation in every mode with 256 new tokens), bounded to one loop of
`--dict-max-steps` / `--mcq-max-steps` optimizer steps (20 each) and `--eval-limit` questions (16) of
dev and test. About 4 minutes on an H200, most of it writing and loading the 8.6 GB stand-in.

Writes bench/results/gpu_loop.json (also when the loop fails: its error, and the run folder is kept
for its logs; on success the folder of random-weight checkpoints is removed): whether the run finished, seconds and peak GPU memory of each
stage, the evaluations' seconds per question, and from those the hours one full loop of the spec's
run would take (KorMedMCQA's 3,401 training rows and 1,059 dev questions, ../shared/notes/STACK_NOTES.md; the
dictionary stage at the shipped sample's size, since the user's dictionary sets it). A random
model's accuracy is chance and is recorded only as a check that every scorer ran.

    .venv/bin/python bench/gpu_assets.py        # here, first: tokenizer + the pinned library stack (bench/gpu_assets/)
    python3 bench/gpu_loop.py [--standin DIR]   # on the GPU machine, bench/gpu_assets carried along
    .venv/bin/python bench/gpu_loop.py --smoke  # CPU, the tiny stand-in, a few steps (make test);
                                                # writes bench/work/gpu_loop_smoke.json, removes its run folder
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import traceback
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "src"))  # the GPU machine runs the checkout as it is, no install
import gpu_assets  # noqa: E402
from common import RESULTS, SAMPLE, machine, repo_relative, track_rows  # noqa: E402

RECIPE = REPO / "recipes" / "medgemma-4b-seed.yaml"
# KorMedMCQA's sizes (STACK_NOTES.md, "KorMedMCQA on the hub"): train and dev over the four exams.
KORMEDMCQA_TRAIN_ROWS = 1890 + 582 + 632 + 297
KORMEDMCQA_DEV_ROWS = 164 + 291 + 300 + 304


def stage_estimate(training: dict, rows: int, per_step_rows: int) -> dict:
    """Seconds one epoch of `rows` would take at `training`'s measured seconds per optimizer step."""
    per_step = training["seconds"] / max(training["steps"], 1)
    steps = -(-rows // per_step_rows)
    return {"seconds_per_step": per_step, "steps_per_epoch": steps, "epoch_seconds": per_step * steps}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="CPU, the tiny stand-in, 2 steps a stage, 2 questions")
    p.add_argument("--size", default=None, help="stand-in size: 4b (default) or tiny")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (default: from bench/gpu_assets/)")
    p.add_argument("--dict-max-steps", type=int, default=20)
    p.add_argument("--mcq-max-steps", type=int, default=20)
    p.add_argument("--eval-limit", type=int, default=16, help="dev and test questions scored (one batch of the recipe's 16)")
    p.add_argument("--standin", default=None, help="an existing stand-in folder to use (default: build one in --work)")
    p.add_argument("--work", default=str(HERE / "work" / "gpu_loop"))
    p.add_argument("--out", default=str(RESULTS / "gpu_loop.json"))
    args = p.parse_args(argv)
    extra = []
    if args.smoke:
        args.size = args.size or "tiny"
        args.dict_max_steps, args.mcq_max_steps, args.eval_limit = 2, 2, 2
        extra = ["--max-new-tokens", "8", "--eval-batch-size", "2"]
        if args.out == str(RESULTS / "gpu_loop.json"):
            args.out = str(HERE / "work" / "gpu_loop_smoke.json")
    size = args.size or "4b"

    ready = gpu_assets.setup("gpu_loop", args.tokenizer, args.smoke)
    if ready is None:
        return 2
    tokenizer_dir, stack = ready
    import torch  # after `activate`: the carried transformers must be the one imported
    import transformers

    from kormedqa import cli
    from kormedqa.default_model import build_standin
    from kormedqa.fsio import write_json_atomic

    cuda = torch.cuda.is_available()
    work = Path(args.work)
    standin, run_dir = Path(args.standin or work / f"medgemma-{size}-standin"), work / "run"
    if args.standin:  # what the given folder holds, not what --size says
        config = json.loads((standin / "config.json").read_text())
        text = config.get("text_config", config)
        size = f"given: hidden {text.get('hidden_size')}, {text.get('num_hidden_layers')} layers"
    result = {"machine": {**machine(), "gpu": torch.cuda.get_device_name() if cuda else None,
                          "transformers": transformers.__version__, "library_stack": stack},
              "smoke": args.smoke, "size": size, "recipe": repo_relative(str(RECIPE)), "settings": repo_relative(dict(vars(args)))}
    started = time.time()
    if not (standin / "config.json").exists():
        build_standin(standin, tokenizer_dir, layout="multimodal", size=size, device="cuda" if cuda else "cpu")
    result["standin_seconds"] = time.time() - started
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    loop_argv = ["loop", "--config", str(RECIPE), "--base-model", str(standin),
                 "--train-data", str(SAMPLE / "mcq"), "--eval-data", str(SAMPLE / "mcq"),
                 "--dictionary", str(SAMPLE / "dictionary.json"), str(SAMPLE / "characters.json"),
                 "--max-loops", "1", "--dict-max-steps", str(args.dict_max_steps),
                 "--mcq-max-steps", str(args.mcq_max_steps), "--eval-limit", str(args.eval_limit),
                 "--output", str(run_dir), "--overwrite", *extra]
    result["command"] = "kormedqa " + " ".join(repo_relative(a) for a in loop_argv)
    t0 = time.time()
    try:
        status = cli.main(loop_argv)
    except Exception as err:  # a bug's traceback: recorded, so the machine's one run still leaves a result
        status = 1
        result["error"] = "".join(traceback.format_exception(err)[-3:])[-2000:]
        traceback.print_exc()
    result["loop_seconds"] = time.time() - t0
    result["exit_status"] = status
    if cuda:
        result["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    history_path = run_dir / "history.json"
    if status == 0 and history_path.exists():
        history = json.loads(history_path.read_text())
        loop = history["loops"][0]
        result["training"] = loop["training"]
        result["evaluation"] = {}
        for name, metrics_path in (("dev", run_dir / "loop_1" / "eval" / "metrics.json"),
                                   ("test", run_dir / "test" / "metrics.json")):
            if metrics_path.exists():
                m = json.loads(metrics_path.read_text())
                result["evaluation"][name] = {"questions": m["n"], "seconds": m["seconds"],
                                              "seconds_per_question": m["seconds"] / max(m["n"], 1),
                                              "accuracy": m.get("accuracy", {}).get("value")}
        dict_rows = len(track_rows("dict"))  # the rows the dictionary stage trains on, one per entry
        recipe = yaml.safe_load(RECIPE.read_text(encoding="utf-8"))
        est = {}
        if "dict" in loop["training"]:
            est["dict"] = stage_estimate(loop["training"]["dict"], dict_rows,
                                         recipe["dict_batch_size"] * recipe["dict_grad_accum"])
        if "mcq" in loop["training"]:
            est["mcq"] = stage_estimate(loop["training"]["mcq"], KORMEDMCQA_TRAIN_ROWS,
                                        recipe["mcq_batch_size"] * recipe["mcq_grad_accum"])
        if "dev" in result["evaluation"]:
            est["dev_eval_seconds"] = result["evaluation"]["dev"]["seconds_per_question"] * KORMEDMCQA_DEV_ROWS
        # What the loop spent besides training and scoring (loading, saving and copying checkpoints of an
        # 8.6 GB model, the test split at the end): taken as a fixed cost per loop.
        measured = (sum(t.get("seconds") or 0.0 for t in loop["training"].values())
                    + sum(e["seconds"] for e in result["evaluation"].values()))
        est["other_seconds"] = max(result["loop_seconds"] - measured, 0.0)
        est["loop_hours"] = (sum(v["epoch_seconds"] for v in est.values() if isinstance(v, dict))
                             + est.get("dev_eval_seconds", 0.0) + est["other_seconds"]) / 3600
        est["basis"] = (f"dictionary: the sample's {dict_rows} entries; MCQ: KorMedMCQA's {KORMEDMCQA_TRAIN_ROWS} "
                        f"training rows; dev: its {KORMEDMCQA_DEV_ROWS} questions (eval_mode all); batches as the "
                        "recipe sets them; other_seconds (loading, saving, the test split) once. Leaning high: "
                        "seconds per step include the first step's warm-up, and a random model never stops "
                        "generating, so every answer runs to max_new_tokens (256)")
        result["full_loop_estimate"] = est
    if args.smoke:
        result["note"] = "smoke: the tiny stand-in on a CPU; the estimate only checks its arithmetic"
    result["seconds"] = time.time() - started
    if status != 0:
        result["run_folder_kept"] = repo_relative(str(run_dir))  # its logs are the diagnosis
    write_json_atomic(args.out, result)
    if status == 0:
        shutil.rmtree(run_dir, ignore_errors=True)  # checkpoints of random weights: nothing to keep
    if args.smoke and not args.standin:
        shutil.rmtree(standin, ignore_errors=True)  # a tiny one rebuilds in seconds
    print(json.dumps({k: result.get(k) for k in ("exit_status", "loop_seconds", "peak_gpu_memory_gib",
                                                   "full_loop_estimate")}, indent=1, default=str))
    print(f"written: {repo_relative(str(Path(args.out).resolve()))}")
    return 0 if status == 0 else 1



if __name__ == "__main__":
    raise SystemExit(main())
