"""Run folders: atomic writes, refusing to clobber, and provenance (run.json).

Every artefact a user may rely on (checkpoints, metrics, history) is written beside its target
and renamed into place after an fsync, so a crash leaves either the old file or the new one,
never half of one. Resume markers are simply the finished artefacts themselves.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Iterable, Iterator

from .errors import OutputExistsError


_FAULT_COUNTS: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Crash-test hook: `KORMEDQA_KILL_AT=name:N` SIGKILLs this process the N-th time `name` is reached;
    `name:N:SIGINT` sends it SIGINT instead (a Ctrl-C at an exact place).

    The reliability tests use it to kill a real run at exact places (mid-training, mid-evaluation,
    mid-checkpoint) and check that `--resume` loses nothing. Unset, it costs a dict lookup.
    """
    spec = os.environ.get("KORMEDQA_KILL_AT")
    if not spec:
        return
    target, _, rest = spec.partition(":")
    if target != name:
        return
    nth, _, signame = rest.partition(":")
    _FAULT_COUNTS[name] = _FAULT_COUNTS.get(name, 0) + 1
    if _FAULT_COUNTS[name] == int(nth or 1):
        import signal

        os.kill(os.getpid(), getattr(signal, signame or "SIGKILL"))


def fsync_tree(path: Path) -> None:
    """fsync every file below `path`, then `path` itself, so a rename after it publishes durable data."""
    for root, _dirs, files in os.walk(path):
        for name in files:
            with open(Path(root) / name, "rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a scratch folder (a Path beside `target`) that becomes `target` only if the block finishes.

    An existing `target` is replaced (moved aside first, removed after the rename). If the block
    raises, the scratch folder is removed and `target` is untouched; the exception propagates.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    os.chmod(scratch, 0o777 & ~_umask())  # mkdtemp makes it 0700; a published folder gets the usual mode
    try:
        yield scratch
        fault_point("checkpoint_written")
        fsync_tree(scratch)
        if target.exists():
            # Move the old copy aside first: a crash between the two renames leaves it recoverable.
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(scratch, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(scratch, target)
        _fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | Path, chunks: Iterable[str]) -> None:
    """Write the strings `chunks` to `path` (UTF-8, LF) via a scratch file + fsync + rename.

    Readers never see a half-written file; an existing file keeps its permission bits, a new one
    is 0644. On any error the scratch file is removed, `path` is untouched and the error propagates.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    try:
        # mkstemp makes the file 0600; keep the old file's mode, or a normal 0644 for a new one.
        os.fchmod(fd, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            for chunk in chunks:
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_jsonl_atomic(path: str | Path, rows: Iterable[dict]) -> None:
    """Write `rows` (dicts) as JSONL, one per line, UTF-8, atomically (`write_text_atomic`).

    Dataclasses, Paths and numpy/torch scalars are converted; TypeError for anything else.
    """
    write_text_atomic(path, (json.dumps(row, ensure_ascii=False, default=_json_default) + "\n" for row in rows))


def write_json_atomic(path: str | Path, obj) -> None:
    """Write `obj` as indented UTF-8 JSON atomically (`write_text_atomic`); conversions as `write_jsonl_atomic`."""
    write_text_atomic(path, [json.dumps(obj, ensure_ascii=False, indent=2, default=_json_default) + "\n"])


def _json_default(obj):
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def clean_stale_scratch(folder: Path) -> None:
    """Remove scratch folders a killed run left anywhere below `folder`; they are never finished work."""
    if not folder.is_dir():
        return
    stale = [p for p in folder.rglob(".*") if ".tmp-" in p.name or ".old-" in p.name]
    for path in sorted(stale, key=lambda p: len(p.parts)):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink(missing_ok=True)


def claim_output(path: str | Path, resume: bool = False, overwrite: bool = False, is_dir: bool = True,
                 can_resume: bool = False) -> Path:
    """Refuse to write into an existing output unless the user asked to resume or overwrite; returns it as a Path.

    An existing output is a file, or a folder with anything in it. With `overwrite` (and not
    `resume`) it is deleted first. With `is_dir` the folder is created and scratch folders of a
    killed run are removed from it. Raises OutputExistsError when it exists and neither was given;
    its message offers --resume only when `can_resume` (the command has the flag).
    Under several processes only the main one claims (and, with --overwrite, clears) the output;
    the others would race it, and they write nothing there themselves.
    """
    from .launch import is_main_process

    path = Path(path)
    if not is_main_process():
        return path
    exists = path.exists() and (not path.is_dir() or any(path.iterdir()))
    if exists and not (resume or overwrite):
        how = "--resume to continue it or --overwrite to replace it" if can_resume else "--overwrite to replace it"
        raise OutputExistsError(f"{path} already exists: pass {how}")
    if exists and overwrite and not resume:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    if is_dir:
        path.mkdir(parents=True, exist_ok=True)
        clean_stale_scratch(path)
    return path


# Settings that name where things are rather than what is computed: a run folder moved or a data
# folder mounted elsewhere resumes (run.json's data_sha256 records what the data was).
LOCATION_FIELDS = frozenset({"output", "base_model", "model", "dictionary", "train_data", "eval_data", "mcq", "corpus",
                             "heldout", "data", "vocab"})
# Settings a resumed run may change without mixing results: the flags themselves, how many loops,
# when to stop, batch size of scoring and where it computes.
RESUMABLE_CHANGES = frozenset({"resume", "overwrite", "max_loops", "loops", "patience", "target_accuracy",
                               "eval_batch_size", "device", "report_to"})


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
    from .errors import UsageError

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


def check_resume(config, command: str, data_files: dict[str, str] | None = None,
                 may_change: Iterable[str] = RESUMABLE_CHANGES) -> bool:
    """With `config.resume`, check that `config.output` may be continued by `kormedqa <command>`; writes nothing.

    Returns True when there is an earlier run to continue (a non-empty folder), False otherwise.
    Raises UsageError when the folder was written by another command (naming both) or records
    other settings or data than `config` (`check_resumed_settings`).
    """
    from .errors import UsageError

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
              may_change: Iterable[str] = RESUMABLE_CHANGES) -> Path:
    """Claim `config.output` as the run folder of `kormedqa <command>` and write its run.json; returns it.

    `config` is the command's dataclass (with `output`, `overwrite` and, for commands that resume,
    `resume`). With --resume, before anything is written, `check_resume` refuses a folder another
    command wrote and any setting or data file that differs from run.json; an absent or empty
    folder is logged as a new run. run.json (`provenance`, with "kormedqa_command") is written for
    a new run and kept on resume. Raises OutputExistsError for an existing output without
    --resume/--overwrite.
    """
    import logging

    from .launch import is_main_process

    resume = bool(getattr(config, "resume", False))
    if resume and not check_resume(config, command, data_files, may_change):
        logging.getLogger(__name__).info("%s holds no earlier run to resume: starting a new one", config.output)
    out = claim_output(config.output, resume=resume, overwrite=config.overwrite, can_resume=hasattr(config, "resume"))
    if is_main_process() and not (resume and (out / "run.json").exists()):
        write_json_atomic(out / "run.json", provenance(config, data_files, command=command))
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


def cpu_name() -> str:
    """The processor's model name, for reports that quote measured speeds."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


PACKAGES = ("kormedqa", "torch", "transformers", "peft", "trl", "datasets", "accelerate", "tokenizers")


def provenance(config, data_files: dict[str, str] | None = None, command: str | None = None) -> dict:
    """run.json's content: the kormedqa `command` that made the run ("kormedqa_command": train, loop,
    eval, cpt, demo), command line, `config` (a dataclass, as a dict), package versions, python,
    git commit, SHA-256 of each existing file or folder of `data_files` (name -> path), seed and the
    precision chosen (with why). Never raises for an undecidable precision; records why instead.
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
        "precision": _precision_record(config),
    }


def _precision_record(config) -> dict | None:
    """The precision the run computes in and why (CPU flags, probe), for configs that choose one."""
    precision = getattr(config, "precision", None)
    if precision is None:
        return None
    from .modeling import pick_device
    from .precision import PrecisionError, choose

    try:
        return choose(pick_device(getattr(config, "device", "auto")), precision).as_dict()
    except (PrecisionError, RuntimeError) as err:  # an unknown name or an absent device: say so, do not crash
        return {"precision": None, "requested": precision, "reason": f"not decided: {err}"}


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
