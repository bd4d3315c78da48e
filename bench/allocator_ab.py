"""The CPU allocator as a training lever: glibc's defaults against freed memory kept for reuse.

`hardware.keep_freed_memory` (applied by every CPU run's `choose`) stops glibc from unmapping large
blocks on free within a stage, a process-wide setting that cannot be undone inside a process, so the
two arms run as separate processes, with every user setting that would decide the allocator instead
(`hardware.ALLOCATOR_ENV`) left out of their environment: `bench/train_levers.py --variants dropout0_nocast --repeats 1` (the demo's settings on
both demo stages) once with KORMEDQA_ALLOCATOR=system (glibc's defaults: every allocation over
32 MiB a fresh mmap, page-faulted in again) and once without (the default), `--rounds` times in
alternating order (system first, then kept first, ...) so neither the machine's load nor being
first falls on one arm alone. Per arm: each track's steady step time (median over rounds), the
losses of every step of every round against the first system round's (the allocator changes no
numerics, so they must be equal) and the peak RSS of the process (`ru_maxrss`, MiB). Exits 1 when
the kept arm did not run kept (another allocator preloaded, a C library other than glibc).

Writes bench/results/allocator_ab.json.

    python bench/allocator_ab.py [--rounds 2] [--steps 12]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import machine, write_result  # noqa: E402

ARMS = {"system": {"KORMEDQA_ALLOCATOR": "system"}, "kept": {}}


def one_process(arm: str, steps: int, tracks: str, work: Path) -> dict:
    """One train_levers run in a fresh process under `arm`'s environment: its JSON plus the process's peak RSS."""
    from kormedqa.hardware import ALLOCATOR_ENV

    out = work / f"{arm}.json"
    env = {k: v for k, v in os.environ.items() if k not in ALLOCATOR_ENV} | ARMS[arm]
    cmd = [sys.executable, str(HERE / "train_levers.py"), "--variants", "dropout0_nocast", "--repeats", "1",
           "--steps", str(steps), "--tracks", tracks, "--out", str(out.with_suffix(""))]
    proc = subprocess.Popen(cmd, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"allocator_ab: {arm} arm failed (exit {proc.returncode}): {' '.join(cmd)}")
    result = json.loads(out.read_text())
    line = result["machine"]["cpu_allocator"]
    if (arm == "kept") != ("without mmap" in line):
        raise SystemExit(f"allocator_ab: the {arm} arm ran with {line!r}: nothing to compare on this machine")
    return {"allocator": line, "peak_rss_mib": usage.ru_maxrss / 1024,
            "tracks": {t: r["dropout0_nocast"]["runs"][0] for t, r in result["tracks"].items()}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--tracks", default="dict,mcq")
    args = p.parse_args()
    if args.rounds < 1:
        p.error("--rounds must be at least 1")

    runs: dict[str, list] = {arm: [] for arm in ARMS}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for arm in (list(ARMS) if round_ % 2 == 0 else list(ARMS)[::-1]):
                runs[arm].append(one_process(arm, args.steps, args.tracks, Path(tmp)))
                print(arm, {t: f"{r['step_s']:.3f} s/step" for t, r in runs[arm][-1]["tracks"].items()},
                      f"peak RSS {runs[arm][-1]['peak_rss_mib']:.0f} MiB", flush=True)
    tracks = {}
    for track in args.tracks.split(","):
        step = {arm: statistics.median(r["tracks"][track]["step_s"] for r in rs) for arm, rs in runs.items()}
        base = runs["system"][0]["tracks"][track]["losses"]
        delta = max(abs(a - b) for rs in runs.values() for r in rs
                    for a, b in zip(base, r["tracks"][track]["losses"], strict=True))
        tracks[track] = {"median_step_s": step, "speedup": step["system"] / step["kept"], "max_loss_delta": delta}
    rss = {arm: max(r["peak_rss_mib"] for r in rs) for arm, rs in runs.items()}
    summary = "allocator (kept vs glibc defaults): " + ", ".join(
        f"{t} {r['speedup']:.2f}x (loss delta {r['max_loss_delta']:.1e})" for t, r in tracks.items()
    ) + f"; peak RSS {rss['kept']:.0f} vs {rss['system']:.0f} MiB"
    write_result("allocator_ab", {"machine": machine(), "settings": vars(args), "tracks": tracks,
                                  "peak_rss_mib": rss, "allocators": {a: rs[0]["allocator"] for a, rs in runs.items()},
                                  "runs": runs, "summary": summary})
    print(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
