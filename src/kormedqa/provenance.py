"""Provenance: what run.json records about a run, and refusing a resume with other settings.

run.json holds the command line, the config, package versions, python, git commit, the SHA-256
of the data and the precision chosen (with why), so any figure can be traced to what made it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Iterable

from .errors import UsageError
from .hardware import PrecisionChoice


# Settings that name where things are rather than what is computed: a run folder moved or a data
# folder mounted elsewhere resumes (run.json's data_sha256 records what the data was).
LOCATION_FIELDS = frozenset({"output", "base_model", "model", "dictionary", "train_data", "eval_data", "mcq", "corpus",
                             "heldout", "data", "vocab"})
# Settings a resumed run may change without mixing results: the flags themselves, how many loops,
# when to stop, batch size of scoring and where it computes.
RESUMABLE_CHANGES = frozenset({"resume", "overwrite", "max_loops", "loops", "patience", "target_accuracy",
                               "eval_batch_size", "device"})


def check_resumed_settings(out: str | Path, config, may_change: Iterable[str] = RESUMABLE_CHANGES) -> None:
    """Raise UsageError when `out`/run.json records other settings than `config` (a dataclass).

    A resumed run keeps every finished stage and evaluation, so continuing it with other epochs,
    learning rates, templates or question subsets would put results of two set-ups in one report.
    Location fields (LOCATION_FIELDS) and `may_change` are not compared; nor is anything when
    run.json is absent (a run killed before writing it has nothing to mix). The message names up to
    four differing settings as `name: recorded -> now`.
    """
    path = Path(out) / "run.json"
    if not path.exists():
        return
    recorded = json.loads(path.read_text(encoding="utf-8")).get("config") or {}
    current = json.loads(json.dumps(dataclasses.asdict(config), default=str))
    skip = LOCATION_FIELDS | set(may_change)
    differ = [k for k in current if k in recorded and k not in skip and recorded[k] != current[k]]
    if differ:
        shown = ", ".join(f"{k}: {recorded[k]!r} -> {current[k]!r}" for k in differ[:4])
        more = f" and {len(differ) - 4} more" if len(differ) > 4 else ""
        raise UsageError(f"{out}: --resume with other settings than the run was started with ({shown}{more}); "
                         "pass the same settings to continue it, or --overwrite to start again")


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


def provenance(config, data_files: dict[str, str] | None = None, choice: PrecisionChoice | None = None) -> dict:
    """run.json's content: command line, `config` (a dataclass, as a dict), package versions, python,
    git commit, SHA-256 of each existing file or folder of `data_files` (name -> path), seed and
    `choice`, the precision the run decided on (with why; None for a run that computes nothing).
    """
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "command": sys.argv,
        "config": dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config,
        "versions": versions,
        "python": sys.version.split()[0],
        "git_commit": _git_commit(),
        "data_sha256": {k: file_sha256(v) for k, v in (data_files or {}).items() if v and Path(v).exists()},
        "seed": getattr(config, "seed", None),
        "precision": choice.as_dict() if choice is not None else None,
    }


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
