"""The lm-eval protocol: KorMedMCQA scored by lm-evaluation-harness itself, read back as kormedqa records.

The numbers the KorMedMCQA paper (arXiv 2403.01469) and the leaderboards citing it print come
from lm-evaluation-harness's `kormedmcqa` task (v3.0): prompt `{question}\\nA. ...\\nE. ...\\n정답：`,
few-shot examples from the `fewshot` split (`first_n`), greedy `generate_until` stopping at
`Q:`, `</s>`, `<|im_end|>`, `.` and a blank line, the paper's Appendix B regex cascade then
`take_first`, `exact_match` (case and punctuation ignored), the four exam types as a group
aggregated `weight_by_size`. This module runs that task through `lm_eval.simple_evaluate` and
reads what it logged per question; it prompts, generates, filters and scores nothing itself.

Where the questions come from:
- the hub id `sean0042/KorMedMCQA` with split `test`: the installed task as it is (`kormedmcqa`);
- any other hub id, another split, or a local folder in the hub's layout (a README.md card whose
  `configs:` are the exam types; `kormedqa prepare hub` writes one): a task YAML per exam type
  that `include`s the installed task's `_template_yaml` (its filter function resolves beside it)
  and sets only `dataset_path` (and `test_split`), and a group YAML copied from the installed one
  with the task names replaced. They are written to a scratch folder passed as `include_path`.

Models: lm-eval's `hf` model (`pretrained=` a model folder or hub id; an adapter folder as
`pretrained=<its base>,peft=<adapter>`), or lm-eval's `vllm` model where vLLM is installed and a
GPU is present (`lora_local_path=` for an adapter).

Only the questions asked for are scored: each kormedqa question is found in lm-eval's dataset by
id (the dataset read as `kormedqa.hub` reads it) and passed as lm-eval's `samples` (doc indices
per task); records come back keyed by id, each checked against the question's gold letter.
"""
from __future__ import annotations

import importlib.util
import json
import shlex
import tempfile

import yaml
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .errors import UsageError
from .hub import card_configs, load_card, load_hub
from .metrics import accuracy_with_groups, proportion
from .hardware import PrecisionChoice
from .modeling import adapter_base, resolve_model_path
from .records import EXAM_TYPES, MCQ, DataError

HUB_ID = "sean0042/KorMedMCQA"
TASK = "kormedmcqa"  # lm-eval's group; its subtasks are kormedmcqa_<exam>
LOCAL_TASK = "kormedqa_kormedmcqa"  # our YAMLs' group, so they never shadow the installed task
FILTER = "extract_answer"
RECORD_FIELDS = ("lm_eval_context", "lm_eval_raw_output", "lm_eval_prediction", "lm_eval_correct")
FEWSHOTS = (0, 5)  # lm-eval's default (0) and the fewshot split's size (5: all of them)


@dataclass(frozen=True)
class LmEvalSettings:
    """The lm-eval protocol's choices. `num_fewshot`: examples before each question (0 or 5);
    `apply_chat_template`: lm-eval's `--apply_chat_template` (few-shot then as multi-turn, as its
    CLI does); `model`: lm-eval's model type, "hf" or "vllm"; `device`/`dtype` as lm-eval takes
    them ("cpu", "cuda"; "float32", "bfloat16"); `batch_size` of lm-eval's model; `gen_kwargs`:
    lm-eval's `--gen_kwargs` string ("" keeps the task's: greedy, max_gen_toks 1024)."""

    num_fewshot: int = 0
    apply_chat_template: bool = False
    model: str = "hf"
    device: str = "cpu"
    dtype: str = "float32"
    batch_size: int = 8
    gen_kwargs: str = ""


def lm_eval_settings(cfg, choice: PrecisionChoice, batch_size: int, backend: str | None = "hf") -> LmEvalSettings:
    """The settings from a config holding `config.LmEvalArgs`, computing where and in the precision
    the run's `choice` says (decided once per run, as for the spec's protocol). `backend` "vllm"
    runs lm-eval's vllm model, anything else its hf model."""
    return LmEvalSettings(num_fewshot=cfg.num_fewshot, apply_chat_template=cfg.apply_chat_template,
                          model="vllm" if backend == "vllm" else "hf", device=choice.device,
                          dtype=str(choice.dtype).removeprefix("torch."), batch_size=batch_size,
                          gen_kwargs=cfg.lm_eval_gen_kwargs)


def lm_eval_installed() -> bool:
    """Whether lm-evaluation-harness can be imported (without importing it)."""
    return importlib.util.find_spec("lm_eval") is not None


def _installed_task_dir() -> Path:
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        raise UsageError("--protocol lm-eval needs lm-evaluation-harness: pip install 'kormedqa[lm-eval]'")
    folder = Path(list(spec.submodule_search_locations)[0]) / "tasks" / TASK
    if not (folder / "_template_yaml").exists():
        raise UsageError(f"the installed lm-evaluation-harness has no {TASK} task ({folder}); it needs lm-eval >= 0.4.13")
    return folder


def data_configs(data: str) -> list[str]:
    """The exam-type configs lm-eval will read from `data`: the four for a hub id, the card's for a
    local folder. UsageError for data that is not in the hub's layout (the lm-eval task reads only that)."""
    path = Path(data).expanduser()
    if path.is_dir():
        configs = [c for c in card_configs(path) if c in EXAM_TYPES]
        if not configs:
            raise UsageError(f"--protocol lm-eval reads the hub's layout (a README.md card whose configs are exam "
                             f"types); {data} is not one: `kormedqa prepare hub --data {data} --output DIR` writes one")
        return configs
    if path.exists() or data.count("/") != 1:
        raise UsageError(f"--protocol lm-eval reads a hub id or a folder in the hub's layout; got {data}")
    return list(EXAM_TYPES)


def task_names(data: str, split: str) -> tuple[str, dict[str, str], bool]:
    """(group, {exam: task name}, whether the installed task is used as it is) for `data`/`split`."""
    if data == HUB_ID and split == "test":
        return TASK, {e: f"{TASK}_{e}" for e in EXAM_TYPES}, True
    return LOCAL_TASK, {e: f"{LOCAL_TASK}_{e}" for e in EXAM_TYPES}, False


def write_task_yamls(folder: Path, data: str, split: str) -> Path:
    """Task YAMLs pointing the installed kormedmcqa task at `data` (see the module docstring); returns `folder`."""
    installed = _installed_task_dir()
    group, tasks, _ = task_names(data, split)
    dataset = str(Path(data).expanduser().resolve()) if Path(data).expanduser().is_dir() else data
    folder.mkdir(parents=True, exist_ok=True)
    for exam, name in tasks.items():
        task = {"include": str(installed / "_template_yaml"), "task": name, "dataset_name": exam,
                "dataset_path": dataset, "test_split": split}
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(task, allow_unicode=True), encoding="utf-8")
    # The group's aggregation (exact_match, weight_by_size) as the installed group declares it.
    group_cfg = yaml.safe_load((installed / f"_{TASK}.yaml").read_text(encoding="utf-8"))
    group_cfg["group"] = group
    group_cfg["task"] = [tasks[t.removeprefix(f"{TASK}_")] for t in group_cfg["task"]]
    (folder / f"_{group}.yaml").write_text(yaml.safe_dump(group_cfg, allow_unicode=True), encoding="utf-8")
    return folder


def lm_eval_dataset(data: str, split: str, configs: Sequence[str]) -> dict[str, list[MCQ]]:
    """{exam: its `split` questions in lm-eval's doc order}, read as `kormedqa.hub` reads the hub layout
    (the same rows `datasets.load_dataset(data, exam, split=split)` gives lm-eval)."""
    path = Path(data).expanduser()
    out = {}
    for exam in configs:
        out[exam] = load_card(path, list(card_configs(path)), split, exam) if path.is_dir() else load_hub(data, split, exam)
    return out


def model_args(model_path: str, settings: LmEvalSettings) -> dict[str, Any]:
    """lm-eval's model_args for a model folder, hub id or adapter folder (its base + peft/lora_local_path)."""
    path = resolve_model_path(model_path)
    base = adapter_base(path) if Path(path).exists() else None
    args: dict[str, Any] = {"pretrained": base or path, "dtype": settings.dtype}
    if base is not None:
        if settings.model == "vllm":
            rank = json.loads((Path(path) / "adapter_config.json").read_text(encoding="utf-8")).get("r", 64)
            args.update(enable_lora=True, lora_local_path=path, max_lora_rank=max(int(rank), 8))
        else:
            args["peft"] = path
    return args


def command_line(model: str, args: dict, tasks: Sequence[str], include_path: str | None, settings: LmEvalSettings,
                 samples: dict | None = None) -> str:
    """The `lm_eval` command that runs the same evaluation by hand (recorded in metrics.json)."""
    parts = ["lm_eval", "--model", model, "--model_args", ",".join(f"{k}={v}" for k, v in args.items()),
             "--tasks", ",".join(tasks), "--num_fewshot", str(settings.num_fewshot), "--batch_size",
             str(settings.batch_size), "--device", settings.device, "--log_samples", "--output_path", "OUT"]
    if include_path:
        parts += ["--include_path", include_path]
    if settings.apply_chat_template:
        parts += ["--apply_chat_template"]
    if settings.gen_kwargs:
        parts += ["--gen_kwargs", settings.gen_kwargs]
    if samples:
        parts += ["--samples", json.dumps(samples)]
    return shlex.join(parts)


def _first(value):
    while isinstance(value, (list, tuple)):
        value = value[0]
    return value


def _context(sample: dict) -> str:
    args = sample["arguments"]
    first = args[0] if isinstance(args, list) else next(iter(args.values()))
    if isinstance(first, dict):  # newer logs: {"arg_0": context, "arg_1": gen_kwargs}
        return str(first.get("arg_0", ""))
    return str(first[0])


def run_lm_eval(inp) -> dict[str, dict]:
    """The lm-eval protocol as a scorer (kormedqa.scorer_table): `inp` is a `ScoringInputs` with
    `model_path`, `data`, `split` and `lm_eval` (LmEvalSettings) set.

    Returns {question id: {lm_eval_context (the prompt lm-eval built), lm_eval_raw_output (its
    generation), lm_eval_prediction (its filter's answer, "" when none), lm_eval_correct (its
    exact_match)}}; puts lm-eval's own settings, versions, reported numbers and the equivalent
    `lm_eval` command line under `inp.extra["lm_eval"]`. Raises UsageError for data not in the
    hub's layout or lm-eval missing, DataError for a question lm-eval's dataset lacks,
    RuntimeError when lm-eval's logged samples or its own aggregate disagree with the records.
    """
    import lm_eval  # heavy optional dependency (kormedqa[lm-eval]): imported only when this protocol runs
    from lm_eval.tasks import TaskManager

    settings: LmEvalSettings = inp.lm_eval or LmEvalSettings()
    if inp.model_path is None or inp.data is None:
        raise UsageError("the lm-eval protocol needs the model's path and the data's path or hub id")
    if settings.num_fewshot not in FEWSHOTS:
        raise UsageError(f"--num-fewshot is 0 or 5 (the fewshot split has 5 per exam type); got {settings.num_fewshot}")
    configs = data_configs(inp.data)
    group, tasks, installed = task_names(inp.data, inp.split)
    docs = lm_eval_dataset(inp.data, inp.split, configs)
    where = {q.id: (exam, i) for exam, qs in docs.items() for i, q in enumerate(qs)}
    samples: dict[str, list[int]] = {}
    for q in inp.mcqs:
        if q.id not in where:
            raise DataError(str(inp.data), None, "id", f"question {q.id} is not in the {inp.split} split lm-eval reads")
        exam, index = where[q.id]
        samples.setdefault(tasks[exam], []).append(index)
    samples = {t: sorted(ix) for t, ix in samples.items()}
    whole_group = set(samples) == set(tasks.values())
    run_tasks = [group] if whole_group else list(samples)
    margs = model_args(inp.model_path, settings)
    with tempfile.TemporaryDirectory(prefix="kormedqa-lm-eval-") as scratch:
        include = None if installed else str(write_task_yamls(Path(scratch), inp.data, inp.split))
        results = lm_eval.simple_evaluate(
            model=settings.model, model_args=margs, tasks=run_tasks, num_fewshot=settings.num_fewshot,
            batch_size=settings.batch_size, device=settings.device, samples=samples, log_samples=True,
            apply_chat_template=settings.apply_chat_template, fewshot_as_multiturn=settings.apply_chat_template,
            gen_kwargs=settings.gen_kwargs or None, task_manager=TaskManager(include_path=include))
    if results is None:  # lm-eval under several processes returns its results on the main one only
        return {}
    by_id = {q.id: q for q in inp.mcqs}
    records: dict[str, dict] = {}
    for exam, task in tasks.items():
        for sample in results["samples"].get(task, []):
            q = docs[exam][sample["doc_id"]]
            if q.id not in by_id:
                raise RuntimeError(f"lm-eval scored {task} doc {sample['doc_id']} ({q.id}), which was not asked for")
            if str(sample["target"]).strip() != q.answer:
                raise RuntimeError(f"lm-eval's target for {q.id} is {sample['target']!r}, the question's answer {q.answer}")
            records[q.id] = {"lm_eval_context": _context(sample), "lm_eval_raw_output": str(_first(sample["resps"])),
                             "lm_eval_prediction": str(_first(sample["filtered_resps"])),
                             "lm_eval_correct": float(sample["exact_match"]) == 1.0}
    key = f"exact_match,{FILTER}"
    reported = {name: {"exact_match": float(r[key]), "n": int(r.get("sample_len", 0))}
                for name, r in results["results"].items() if key in r}
    _check_reported(reported, records, tasks, docs, group if whole_group else None)
    inp.extra["lm_eval"] = {
        "task": run_tasks, "installed_task": installed, "data": inp.data, "split": inp.split,
        "num_fewshot": settings.num_fewshot, "apply_chat_template": settings.apply_chat_template,
        "fewshot_as_multiturn": settings.apply_chat_template, "model": settings.model, "model_args": margs,
        "gen_kwargs": settings.gen_kwargs or None, "lm_eval_version": lm_eval.__version__,
        "task_version": results.get("versions", {}).get(group if whole_group else run_tasks[0]),
        "reported": reported, "command": command_line(settings.model, margs, run_tasks, None if installed else "TASK_DIR",
                                                      settings, None if whole_group and len(samples) == len(where) else samples),
    }
    return records


def _check_reported(reported: dict, records: dict, tasks: dict, docs: dict, group: str | None) -> None:
    """lm-eval's own per-task and group exact_match must be the mean of the records read back."""
    def mean(ids):
        ids = [i for i in ids if i in records]
        return sum(records[i]["lm_eval_correct"] for i in ids) / len(ids) if ids else None

    for exam, task in tasks.items():
        if task in reported:
            ours = mean(q.id for q in docs[exam])
            if ours is None or abs(ours - reported[task]["exact_match"]) > 1e-9:
                raise RuntimeError(f"lm-eval reports exact_match {reported[task]['exact_match']} for {task}; its logged "
                                   f"samples give {ours}")
    if group is not None and group in reported:
        ours = mean(records)
        if ours is None or abs(ours - reported[group]["exact_match"]) > 1e-9:
            raise RuntimeError(f"lm-eval reports exact_match {reported[group]['exact_match']} for {group}; its logged "
                               f"samples give {ours}")


def lm_eval_metrics(preds: Sequence[dict]) -> dict:
    """`lm_eval_exact_match` (the group's number: weighted by size = all questions pooled) with its
    Wilson interval, the same per exam type, and `lm_eval_parse_rate` (lm-eval's filter found a letter)."""
    m = accuracy_with_groups(preds, "lm_eval_exact_match", "lm_eval_correct")
    m["lm_eval_parse_rate"] = proportion(sum(bool(p["lm_eval_prediction"]) for p in preds), len(preds))
    return m
