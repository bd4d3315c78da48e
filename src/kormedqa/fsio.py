"""Run-folder I/O: atomic writes, refusing to clobber an output, and the crash-test hook.

Every artefact a user may rely on (checkpoints, metrics, history) is written beside its target
and renamed into place after an fsync, so a crash leaves either the old file or the new one,
never half of one. Resume markers are simply the finished artefacts themselves.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from .errors import OutputExistsError
from .launch import is_main_process


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
