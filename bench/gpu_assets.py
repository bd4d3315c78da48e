"""What bench/gpu_check.py needs on a GPU machine that downloads nothing: the folder bench/gpu_assets/.

Here, on a connected machine, before carrying the checkout over:

    python bench/gpu_assets.py      # the real tokenizer + the pinned library stack into bench/gpu_assets/

It holds `tokenizer.tar.xz` (the embedded default's tokenizer, built from the installed PyPI
package; 3.5 MiB packed, 32 MiB unpacked) and `wheels/`: transformers, peft, accelerate, trl and
datasets at the versions installed here (the project's pins), with what they need beyond the GPU
machine's image, for the GPU machine's CPython 3.12 on manylinux x86_64 (whatever Python runs this). The machine's image has torch and older
transformers/peft/accelerate but no trl or datasets. There, `gpu_check.py` calls `activate` before
importing torch: the wheels go into bench/work/gpu_site (`--no-deps`), a subprocess checks that the
stack imports on the machine's torch, and only then the folder goes first on sys.path, so the GPU
figures come from the same library versions as the CPU ones. If the check fails, the run goes on with
the machine's own packages and the JSON says so (`library_stack`). Without the folder the full check
stops with a line saying to run this first; `--smoke` needs nothing from it.
"""
from __future__ import annotations

import importlib
import json
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
# The project's pinned libraries: carried at the versions installed here, with their dependencies.
STACK = ("transformers", "peft", "accelerate", "trl", "datasets")
# What the GPU machine's image already has (/work/.library/device/KINDS.md), large or compiled against
# its CUDA: never carried, so its torch stays the one that sees the GPU.
MACHINE_HAS = ("torch", "triton", "numpy", "pandas", "pyarrow", "sympy", "mpmath", "networkx", "setuptools",
               "jinja2", "markupsafe", "pyyaml", "psutil", "safetensors", "tokenizers", "pydantic", "pydantic_core",
               "pygments", "rich", "markdown_it_py", "mdurl")
TOKENIZER_ARCHIVE = "tokenizer.tar.xz"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def cached_tokenizer() -> Path:
    """The embedded default's tokenizer, built from the installed PyPI package (no network) into the
    tests' cache folder (`KORMEDQA_TEST_CACHE`, default .cache/test) once."""
    from kormedqa.default_model import fetch_tokenizer

    cache = Path(os.environ.get("KORMEDQA_TEST_CACHE", REPO / ".cache" / "test"))
    return fetch_tokenizer(cache / "gemma3-tokenizer")


def default_tokenizer(smoke: bool, assets: Path | None = None, unpack_to: Path | None = None) -> str | None:
    """The tokenizer folder for the check: `assets`/tokenizer.tar.xz (default bench/gpu_assets/, as
    `prepare` writes it) unpacked once into `unpack_to` (default bench/work/gpu_tokenizer), or an
    unpacked `assets`/tokenizer; for `--smoke` without either, the cached tokenizer (a fresh checkout
    runs the smoke check as it is); else None."""
    assets = ASSETS if assets is None else assets
    dest = (HERE / "work" / "gpu_tokenizer") if unpack_to is None else unpack_to
    archive = assets / TOKENIZER_ARCHIVE
    if archive.exists():
        stamp = f"{archive.stat().st_size} {archive.stat().st_mtime_ns}"
        marker = dest / ".from-archive"
        if not (marker.exists() and marker.read_text() == stamp):  # unpacked once per archive
            partial = dest.with_name(dest.name + ".partial")  # a killed unpack leaves no half folder behind
            shutil.rmtree(partial, ignore_errors=True)
            shutil.unpack_archive(archive, partial)
            (partial / ".from-archive").write_text(stamp)
            shutil.rmtree(dest, ignore_errors=True)
            partial.rename(dest)
        return str(dest / "tokenizer")
    if (assets / "tokenizer" / "tokenizer.json").exists():  # an unpacked folder (prepare before 2026-12-04)
        return str(assets / "tokenizer")
    return str(cached_tokenizer()) if smoke else None


def setup(script: str, tokenizer: str | None, smoke: bool) -> tuple[str, dict] | None:
    """What a GPU script needs before it imports torch: (the tokenizer folder, the library stack as
    `activate` left it). `tokenizer` wins over the carried one. None, after one line on stderr naming
    the command to run first, when no tokenizer was given or prepared. `--smoke` keeps the installed
    packages (it runs where the project is installed)."""
    tokenizer_dir = tokenizer or default_tokenizer(smoke)
    if tokenizer_dir is None:
        print(f"{script}: no tokenizer.tar.xz in {ASSETS}: run `python bench/gpu_assets.py` first on a machine "
              "that reaches the package index, and carry bench/gpu_assets along (or pass --tokenizer DIR)",
              file=sys.stderr)
        return None
    stack = activate() if not smoke else {"source": "machine", "why": "--smoke"}
    print(f"library stack: {stack}", flush=True)
    return tokenizer_dir, stack


def _install(assets: Path, site: Path) -> str | None:
    """The carried wheels installed into `site` (once per set of wheels); None when done, else why not."""
    wheels = sorted((assets / "wheels").glob("*.whl"))
    if not wheels:
        return f"no wheels in {assets / 'wheels'} (run bench/gpu_assets.py on a machine that reaches the package index, carry the folder)"
    marker, names = site / ".installed", "\n".join(w.name for w in wheels)
    if marker.exists() and marker.read_text() == names:
        return None
    shutil.rmtree(site, ignore_errors=True)
    # --no-deps, no index: exactly the carried files; the machine's torch stays as it is.
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-compile", "--target", str(site),
           *map(str, wheels)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return f"installing the carried wheels failed: {proc.stderr.strip()[-300:]}"
    marker.write_text(names)
    return None


def activate(assets: Path | None = None, site: Path | None = None) -> dict:
    """Put the carried library stack (`prepare`'s wheels) first on sys.path, if it imports here.

    Call before anything imports torch or transformers. The stack is installed into `site` (default
    bench/work/gpu_site) and tried in a subprocess on this machine's torch first, so a stack that
    does not fit leaves this process untouched. Returns {"source": "carried", "versions": {name:
    version}} when it is active (PYTHONPATH is set too, for subprocesses), else {"source":
    "machine", "why": one line}.
    """
    assets, site = (ASSETS if assets is None else assets), (SITE if site is None else site)
    why = _install(assets, site)
    if why is None:
        path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
        probe = ("import json, importlib.metadata as m, torch, transformers, peft, accelerate, trl, datasets; "
                 "from transformers import Gemma3ForCausalLM, Gemma3ForConditionalGeneration; "
                 f"print(json.dumps({{n: m.version(n) for n in {STACK!r}}}))")
        proc = subprocess.run([sys.executable, "-c", probe], env=dict(os.environ, PYTHONPATH=path),
                              capture_output=True, text=True)
        if proc.returncode == 0:
            if str(site) not in sys.path:  # a second call changes nothing
                sys.path.insert(0, str(site))
                os.environ["PYTHONPATH"] = path
            importlib.invalidate_caches()
            return {"source": "carried", "versions": json.loads(proc.stdout.strip().splitlines()[-1])}
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        why = f"the carried stack does not import on this machine: {last[:300]}"
    return {"source": "machine", "why": why}


def ensure_trl(assets: Path | None = None, site: Path | None = None) -> str | None:
    """Import TRL, installing it from `assets`/wheels into `site` if needed; None if ready, else why not."""
    assets, site = (ASSETS if assets is None else assets), (SITE if site is None else site)
    try:
        importlib.import_module("trl")
        return None
    except ImportError:
        pass
    why = _install(assets, site)
    if why is not None:
        return f"TRL is not installed and {why}"
    sys.path.append(str(site))  # last: a package already imported keeps its own version
    importlib.invalidate_caches()
    try:
        importlib.import_module("trl")
        return None
    except Exception as err:  # an incompatible wheel shows here, not as a crash of the whole check
        return f"TRL from the carried wheels does not import: {type(err).__name__}: {err}"


def carried_requirements(stack=STACK, machine_has=MACHINE_HAS) -> list[str]:
    """`name==version` for `stack` and everything it needs on CPython 3.12/Linux x86_64, at the versions
    installed here, less what the GPU machine's image has (`machine_has`). A requirement not
    installed here is left out (pip would have to choose its version)."""
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    env = dict(default_environment(), python_version="3.12", python_full_version="3.12.3", sys_platform="linux",
               platform_machine="x86_64", platform_system="Linux", implementation_name="cpython")
    skip = {canonicalize_name(n) for n in machine_has}
    seen: dict[str, str] = {}
    done: set[tuple[str, str]] = set()
    todo = [(name, "") for name in stack]  # (distribution, extra asked for: "" for its plain requirements)
    while todo:
        raw, extra = todo.pop()
        name = canonicalize_name(raw)
        if (name, extra) in done or name in skip:
            continue
        done.add((name, extra))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen[name] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate(dict(env, extra=extra)):
                todo += [(req.name, "")] + [(req.name, e) for e in req.extras]  # e.g. fsspec[http]
    return [f"{n}=={v}" for n, v in sorted(seen.items())]


def prepare(assets: Path | None = None) -> int:
    """Here, before carrying: the real tokenizer (packed) and the pinned library stack's wheels into
    `assets` (default bench/gpu_assets/). Returns 0, or 1 when the folder is over the carry limit;
    a failed download is reported and leaves the check to the machine's own packages."""
    assets = ASSETS if assets is None else assets
    assets.mkdir(parents=True, exist_ok=True)
    if not (assets / TOKENIZER_ARCHIVE).exists():  # only the archive travels (32 MiB unpacked, 3.5 packed)
        staging = assets / "tokenizer.partial"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(cached_tokenizer(), staging / "tokenizer")
        packed = shutil.make_archive(str(staging / "tokenizer"), "xztar", root_dir=staging, base_dir="tokenizer")
        os.replace(packed, assets / TOKENIZER_ARCHIVE)
        shutil.rmtree(staging)
    shutil.rmtree(assets / "tokenizer", ignore_errors=True)  # the unpacked copy of an earlier prepare: 32 MiB
    wheels, fresh = assets / "wheels", assets / "wheels.partial"
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir()
    wanted = carried_requirements()
    platforms = [a for p in PLATFORMS for a in ("--platform", p)]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "--implementation", "cp", *platforms, "-d", str(fresh), *wanted]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:  # the wheels already there (if any) stay; no partial set replaces them
        shutil.rmtree(fresh, ignore_errors=True)
        print(f"wheels not downloaded, {wheels} left as it was: {proc.stderr.strip()[-400:]}")
    else:  # the new set whole, no stale versions beside it
        shutil.rmtree(wheels, ignore_errors=True)
        fresh.rename(wheels)
    wheels.mkdir(exist_ok=True)
    size = sum(f.stat().st_size for f in assets.rglob("*") if f.is_file())
    print(f"{assets}: {size / 2**20:.1f} MiB (carry limit {CARRY_LIMIT_BYTES / 2**20:.0f} MiB): {TOKENIZER_ARCHIVE} "
          f"and {len(list(wheels.iterdir()))} wheels {sorted(p.name for p in wheels.iterdir())}")
    return 0 if size < CARRY_LIMIT_BYTES else 1


if __name__ == "__main__":
    raise SystemExit(prepare())
