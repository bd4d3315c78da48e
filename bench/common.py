"""Shared bits of the benchmarks: machine description, the prepared sample data, result files,
loading a model, and the peer runs kormedqa is measured against (TRL's SFTTrainer, lm-evaluation-harness).

Each benchmark script imports from here and keeps only what it measures; a peer tool is set up in
one place, so every script compares against the same configuration of it.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
SAMPLE = REPO / "data" / "sample"


# The CPU features that decide matmul speed per precision; the rest of /proc/cpuinfo's flags is noise here.
SPEED_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
               "amx_fp16", "avx_vnni", "avx_ne_convert", "asimd", "sve", "sve2", "bf16", "i8mm")


def cpu_speed_flags() -> list[str]:
    from kormedqa.hardware import cpu_flags

    flags = cpu_flags()
    return [f for f in SPEED_FLAGS if f in flags]


def machine() -> dict:
    """Date, CPU (model, speed-relevant flags, what `--precision auto` picks there and why), threads, versions."""
    import torch

    from kormedqa.hardware import cpu_allocator, cpu_auto_choice, cpu_name

    auto = cpu_auto_choice()  # not choose("cpu"): recording the machine settles nothing of a GPU script's process
    return {
        "date": datetime.date.today().isoformat(),
        "cpu": cpu_name(),
        "cpu_flags": cpu_speed_flags(),
        "cpu_auto_precision": auto.precision,
        "cpu_auto_precision_reason": auto.reason,
        # What keep_freed_memory made of the allocator: a CPU script's choose("cpu") settles it before its
        # first arm, so every arm runs under the same; a GPU script's never does ("not settled").
        "cpu_allocator": cpu_allocator(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
    }


def prepared_mcq_rows(seed: int = 42, template: str = "verdict") -> list[dict]:
    """The sample's training MCQs in the spec's format. The speed benchmarks keep the rationale
    template their earlier figures were measured on (`verdict`, ~200 tokens an example), so
    ratios stay comparable across runs; `experiments/learning.py` compares the templates themselves."""
    from kormedqa.data import load_dictionary, load_mcq
    from kormedqa.formats import Glossary
    from kormedqa.prepare import mcq_rows

    glossary = Glossary(load_dictionary(SAMPLE / "dictionary.json", SAMPLE / "characters.json"))
    return mcq_rows(load_mcq(SAMPLE / "mcq", split="train"), seed, glossary, template=template)


# The demo's two training stages as bench/train_levers.py and bench/profile_train.py run them:
# dictionary rows (~30 tokens) at batch 8, seed-format MCQs with the dictionary_line rationale at batch 5.
TRACKS = {"dict": dict(batch_size=8, learning_rate=5e-4), "mcq": dict(batch_size=5, learning_rate=5e-4)}


def track_rows(track: str) -> list[dict]:
    """The sample's training rows of `track` ("dict" or "mcq"), prepared as the demo prepares them."""
    from kormedqa.data import load_dictionary, load_mcq
    from kormedqa.formats import Glossary
    from kormedqa.prepare import dict_rows, mcq_rows

    entries = load_dictionary(SAMPLE / "dictionary.json", SAMPLE / "characters.json")
    if track == "dict":
        return dict_rows(entries)
    return mcq_rows(load_mcq(SAMPLE / "mcq", split="train"), 42, Glossary(entries), template="dictionary_line")


def repo_relative(value, repo: Path = REPO):
    """`value` with every string that is an absolute path inside `repo` made relative to it (in
    nested dicts and lists too): a result file says `models/gemma3-270m`, not where the checkout
    happened to be on the machine that ran it."""
    if isinstance(value, dict):
        return {k: repo_relative(v, repo) for k, v in value.items()}
    if isinstance(value, list):
        return [repo_relative(v, repo) for v in value]
    if isinstance(value, str) and value.startswith(str(repo) + "/"):
        return value[len(str(repo)) + 1:]
    return value


def write_result(name: str, payload: dict) -> Path:
    """bench/results/NAME.json, atomically, with paths inside the checkout made relative (`repo_relative`)."""
    from kormedqa.fsio import write_json_atomic

    path = RESULTS / f"{name}.json"
    write_json_atomic(path, repo_relative(payload))
    return path


def run_lm_eval_task(model_dir: str, task: str, task_yaml: str, rows: list[dict], batch_size: int,
                     dtype: str = "float32") -> tuple[float, list[dict], dict]:
    """Run lm-evaluation-harness (hf backend, `dtype`, BOS added, CPU; log-softmax in fp32) on a local task over `rows`.

    `task_yaml` is a template with `{data}` where the JSONL of `rows` goes. Returns (seconds in
    `simple_evaluate`, its samples in row order, its aggregate results for the task). The model
    is loaded before the clock starts, as kormedqa's side is timed without its loading.
    """
    import lm_eval
    from lm_eval.api.registry import get_model
    from lm_eval.tasks import TaskManager

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "questions.jsonl"
        data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        task_dir = Path(tmp) / "tasks"
        task_dir.mkdir()
        (task_dir / f"{task}.yaml").write_text(task_yaml.format(data=data))
        # Below fp32 its log-softmax runs in fp32, as kormedqa's normaliser does.
        softmax = "" if dtype == "float32" else ",softmax_dtype=float32"
        lm = get_model("hf").create_from_arg_string(
            f"pretrained={model_dir},dtype={dtype},add_bos_token=True,device=cpu{softmax}", {"batch_size": batch_size})
        started = time.time()
        out = lm_eval.simple_evaluate(model=lm, tasks=[task], task_manager=TaskManager(include_path=str(task_dir)),
                                      log_samples=True)
        seconds = time.time() - started
    return seconds, sorted(out["samples"][task], key=lambda s: s["doc_id"]), out["results"][task]


def load_pretrained(name_or_path: str, choice) -> tuple[str, object, object]:
    """A model as the CPU benchmarks load it: (its folder, from `resolve_model_path`; its tokenizer;
    the model in `choice`'s precision on its device, in eval mode). `choice` is a
    `kormedqa.hardware.PrecisionChoice`; ModelError as `kormedqa.modeling.load_model` raises it."""
    from kormedqa.modeling import load_model, load_tokenizer, resolve_model_path

    model_dir = resolve_model_path(name_or_path)
    return model_dir, load_tokenizer(model_dir), load_model(model_dir, choice).eval()


def param_counts(model) -> dict:
    """Parameters of a causal LM: {"total", "body": all but the input embedding table, "lm_head": the
    output projection's}. Tied embeddings are counted once by `parameters()`, so with them
    total = body + lm_head; the FLOP counts use 2 or 6 x body per token plus the lm_head where it runs."""
    head = model.get_output_embeddings().weight.numel()
    total = sum(p.numel() for p in model.parameters())
    return {"total": total, "body": total - model.get_input_embeddings().weight.numel(), "lm_head": head}


def trl_rows(rows: list[dict]) -> list[dict]:
    """kormedqa's prepared rows as TRL's prompt/completion examples. TRL concatenates prompt and
    completion as they are; the separator kormedqa puts between them goes at the end of the prompt,
    so both trainers see the same tokens."""
    from kormedqa.formats import TURN_SEPARATOR

    return [{"prompt": r["prompt"] + TURN_SEPARATOR, "completion": r["completion"]} for r in rows]


def run_trl_sft(model, tokenizer, rows: list[dict], output_dir: str | Path, choice, *, steps: int, batch_size: int,
                learning_rate: float, max_length: int, seed: int, grad_accum: int = 1, lora_dropout: float = 0.05,
                callbacks: tuple | list = (), wrap_collator=None, disable_tqdm: bool | None = None) -> dict:
    """Train `model` (LoRA r64, alpha 128, all projections) with TRL's SFTTrainer on `rows`.

    The peer of kormedqa's training in the benchmarks, set up as TRL's documentation shows for
    prompt/completion data (`trl_rows`): linear schedule without warm-up or weight decay, the
    loss logged every step, nothing saved, `<end_of_turn>` as the end of a completion, at TRL's
    fastest setting: activation checkpointing off (SFTConfig turns it on by default; it
    recomputes the forward, about a third more compute, to save memory that is not the limit
    here). `choice` (a `kormedqa.hardware.PrecisionChoice`) sets bf16 mixed precision and the
    device, as kormedqa's arm gets them. `wrap_collator`, if given, wraps TRL's data collator
    (e.g. to count tokens); `callbacks` and `disable_tqdm` go to the trainer.

    Returns {"seconds": wall seconds in `trainer.train()` (loading and tokenising stay out),
    "losses": the logged loss of every step, "data_collator": the collator train() used,
    "model": the trained PeftModel}.
    """
    # defers datasets and trl: optional on a GPU machine, where bench/gpu_assets.py installs them at run time
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from kormedqa.chat import END_OF_TURN
    from kormedqa.modeling import lora_config

    config = SFTConfig(
        output_dir=str(output_dir), max_steps=steps, per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=grad_accum, learning_rate=learning_rate, max_length=max_length,
        lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0, logging_steps=1, save_strategy="no",
        report_to="none", seed=seed, data_seed=seed, bf16=choice.precision == "bf16",
        use_cpu=choice.torch_device.type == "cpu", eos_token=END_OF_TURN, activation_checkpointing=False,
        disable_tqdm=disable_tqdm,
    )
    assert not config.gradient_checkpointing  # the deprecated alias follows the new name
    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(trl_rows(rows)),
                         processing_class=tokenizer, peft_config=lora_config(64, 128, lora_dropout),
                         callbacks=list(callbacks))
    if wrap_collator is not None:
        trainer.data_collator = wrap_collator(trainer.data_collator)  # read when train() builds the loader
    started = time.time()
    trainer.train()
    seconds = time.time() - started
    return {"seconds": seconds, "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h],
            "data_collator": trainer.data_collator, "model": trainer.model}
