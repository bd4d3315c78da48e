"""Provenance: what run.json records about a run, and which run folders a command may resume.

run.json holds the kormedqa command, the command line, the config, package versions, python, git
commit, the SHA-256 of the data and the precision chosen (with why), so any figure can be traced
to what made it; `--resume` compares a run's settings and data with it before anything is written.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Iterable

from .errors import UsageError
from .fsio import claim_output, write_json_atomic
from .hardware import PrecisionChoice, choose, cpu_allocator, pick_device
from .launch import is_main_process

log = logging.getLogger(__name__)


# Settings that name where things are rather than what is computed: a run folder moved or a data
# folder mounted elsewhere resumes (run.json's data_sha256 records what the data was).
LOCATION_FIELDS = frozenset({"output", "base_model", "model", "dictionary", "train_data", "eval_data", "mcq", "corpus",
                             "heldout", "data", "vocab"})
# Settings a resumed run may change without mixing results: the flags themselves, how many loops,
# when to stop, where it computes and where it reports. Not the scoring batch size: in bf16 a generated
# answer may depend on the batch it was generated in (docs/scoring.md), and a loop compares its evaluations.
RESUMABLE_CHANGES = frozenset({"resume", "overwrite", "max_loops", "loops", "patience", "target_accuracy", "device",
                               "report_to"})


def check_resumed_settings(out: str | Path, config, may_change: Iterable[str] = RESUMABLE_CHANGES,
                           data_files: dict[str, str] | None = None) -> None:
    """Raise UsageError when `out`/run.json records other settings than `config` (a dataclass).

    A resumed run keeps every finished stage and evaluation, so continuing it with other epochs,
    learning rates, templates or question subsets would put results of two set-ups in one report.
    Location fields (LOCATION_FIELDS) and `may_change` are not compared; nor is anything when
    run.json is absent (a run killed before writing it has nothing to mix). What a location points
    at is compared instead: each `data_files` entry (name -> path, as `provenance` records them)
    whose content's SHA-256 differs from run.json's `data_sha256[name]` is a difference. The
    message names up to four differing settings as `name: recorded -> now`.
    """
    path = Path(out) / "run.json"
    if not path.exists():
        return
    record = json.loads(path.read_text(encoding="utf-8"))
    recorded = record.get("config") or {}
    current = json.loads(json.dumps(dataclasses.asdict(config), default=str))
    skip = LOCATION_FIELDS | set(may_change)
    differ = [f"{k}: {recorded[k]!r} -> {current[k]!r}" for k in current
              if k in recorded and k not in skip and recorded[k] != current[k]]
    hashes = record.get("data_sha256") or {}
    for name, data in (data_files or {}).items():
        if name in hashes and data and Path(data).exists() and file_sha256(data) != hashes[name]:
            differ.append(f"{name} data ({data}): other content than the run was started on")
    if differ:
        more = f" and {len(differ) - 4} more" if len(differ) > 4 else ""
        raise UsageError(f"{out}: --resume with other settings than the run was started with ({', '.join(differ[:4])}"
                         f"{more}); pass the same settings to continue it, or --overwrite to start again")


# Files that identify a run folder written before run.json recorded its command.
_MARKERS = (("history.json", "loop"), ("REPORT.md", "demo"), ("summary.json", "demo"), ("adapter", "train"),
            ("model", "cpt"), ("predictions.jsonl", "eval"), ("metrics.json", "eval"))


def run_command_of(folder: str | Path) -> str | None:
    """The kormedqa command that wrote the run folder `folder` ("train", "loop", "eval", "cpt", "demo"):
    run.json's "kormedqa_command", or for a folder from before it was recorded the command its files
    identify; None for a folder no kormedqa command wrote (or an empty one)."""
    folder = Path(folder)
    run_json = folder / "run.json"
    if run_json.exists():
        with contextlib.suppress(ValueError, OSError):
            made = json.loads(run_json.read_text(encoding="utf-8")).get("kormedqa_command")
            if made:
                return made
    return next((command for name, command in _MARKERS if (folder / name).exists()), None)


def recorded_config(folder: str | Path) -> dict | None:
    """The config run.json in `folder` records (a dict of field -> value), or None without one."""
    path = Path(folder) / "run.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8")).get("config")
    except (ValueError, OSError):
        return None
    return config if isinstance(config, dict) else None


def run_precision(config, output: str | Path | None = None) -> PrecisionChoice:
    """The precision `config`'s run computes in: `choose(config.device, config.precision)`, except
    that a `--resume` with `--precision auto` takes the choice the run recorded in
    `output`/run.json (default `config.output`) when it was automatic on the same kind of device.

    On a CPU the automatic choice rests on a sub-second matmul probe, so a resume started while the
    machine is busy could otherwise compute in another precision than the stages it continues, and
    one report would mix two (docs/decisions.md, "A resumed run keeps its precision").
    """
    fresh = choose(config.device, config.precision)
    if not getattr(config, "resume", False) or config.precision != "auto":
        return fresh
    path = Path(output if output is not None else config.output) / "run.json"
    try:
        recorded = json.loads(path.read_text(encoding="utf-8")).get("precision") or {}
    except (OSError, ValueError):
        return fresh
    if (recorded.get("requested") != "auto" or not recorded.get("device")
            or pick_device(recorded["device"]).type != fresh.torch_device.type):
        return fresh
    if recorded.get("precision") != fresh.precision:
        log.warning("%s: resuming in %s, as the run recorded (today's automatic choice would be %s: %s)",
                    config.output, recorded["precision"], fresh.precision, fresh.reason)
    return PrecisionChoice.from_dict(recorded)


def check_resume(config, command: str, data_files: dict[str, str] | None = None,
                 may_change: Iterable[str] = RESUMABLE_CHANGES) -> bool:
    """With `config.resume`, check that `config.output` may be continued by `kormedqa <command>`; writes nothing.

    Returns True when there is an earlier run to continue (a non-empty folder), False otherwise.
    Raises UsageError when the folder was written by another command (naming both) or records
    other settings or data than `config` (`check_resumed_settings`).
    """
    out = Path(config.output)
    if not (getattr(config, "resume", False) and out.is_dir() and any(out.iterdir())):
        return False
    made = run_command_of(out)
    if made != command:
        what = f"was written by kormedqa {made}" if made else "is not a kormedqa run folder (no run.json)"
        raise UsageError(f"{out} {what}: kormedqa {command} --resume continues only a folder kormedqa {command} wrote")
    check_resumed_settings(out, config, may_change, data_files)
    return True


def claim_run(config, command: str, data_files: dict[str, str] | None = None,
              may_change: Iterable[str] = RESUMABLE_CHANGES, choice: PrecisionChoice | None = None) -> Path:
    """Claim `config.output` as the run folder of `kormedqa <command>` and write its run.json; returns it.

    `config` is the command's dataclass (with `output`, `overwrite` and, for commands that resume,
    `resume`). With --resume, before anything is written, `check_resume` refuses a folder another
    command wrote and any setting or data file that differs from run.json; an absent or empty
    folder is logged as a new run. run.json (`provenance`, with "kormedqa_command") is written for
    a new run and kept on resume, with `choice`, the precision the run decided on. Raises OutputExistsError for an existing output without
    --resume/--overwrite.
    """
    resume = bool(getattr(config, "resume", False))
    if resume and not check_resume(config, command, data_files, may_change):
        log.info("%s holds no earlier run to resume: starting a new one", config.output)
    out = claim_output(config.output, resume=resume, overwrite=config.overwrite, can_resume=hasattr(config, "resume"))
    if is_main_process() and not (resume and (out / "run.json").exists()):
        write_json_atomic(out / "run.json", provenance(config, data_files, command=command, choice=choice))
    return out


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, or of every file below a folder (in sorted path order, contents only)."""
    digest = hashlib.sha256()
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


PACKAGES = ("kormedqa", "torch", "transformers", "peft", "trl", "datasets", "accelerate", "tokenizers")


def provenance(config, data_files: dict[str, str] | None = None, command: str | None = None,
               choice: PrecisionChoice | None = None) -> dict:
    """run.json's content: the kormedqa `command` that made the run ("kormedqa_command": train, loop,
    eval, cpt, demo), command line, `config` (a dataclass, as a dict), package versions, python,
    git commit, SHA-256 of each existing file or folder of `data_files` (name -> path), seed and
    `choice`, the precision the run decided on (with why; None for a run that computes nothing), and
    on a CPU what the allocator does with freed memory (`hardware.cpu_allocator`).
    """
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "kormedqa_command": command,
        "command": sys.argv,
        "config": dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config,
        "versions": versions,
        "python": sys.version.split()[0],
        "git_commit": _git_commit(),
        "data_sha256": {k: file_sha256(v) for k, v in (data_files or {}).items() if v and Path(v).exists()},
        "seed": getattr(config, "seed", None),
        "precision": choice.as_dict() if choice is not None else None,
        "cpu_allocator": cpu_allocator() if choice is not None and choice.torch_device.type == "cpu" else None,
    }


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
