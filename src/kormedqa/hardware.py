"""Hardware facts and the precision a run computes in, decided once per run and passed down.

This module answers four questions, each in one place: which CPU this is (`cpu_name`,
`cpu_flags`), which device a run uses (`pick_device`), which precision it computes in
(`choose`, returning a `PrecisionChoice` that the entry point of a run makes once and passes to
`Stage`, `modeling.load_model`, `provenance.provenance` and the vLLM generator), and, for a run on
the CPU, how the process's allocator treats freed memory (`keep_freed_memory`, applied by `choose`;
`cpu_allocator` says what it did).

`--precision auto` picks what the hardware computes fast:

- CUDA: bf16 where the GPU supports it, else fp32.
- CPU: bf16 only where the CPU has native bf16 arithmetic, else fp32. Measured on two machines of
  the same kind (AMD EPYC, 2 threads, torch 2.13 CPU): with `avx512_bf16` a 2048^2 matmul ran at
  ~400 GFLOP/s in bf16 against ~100 in fp32; without it bf16 ran at 0.2-1 GFLOP/s, ~300x slower
  than fp32, because oneDNN falls back to converting element by element.

How the CPU is judged: the flags first (`avx512_bf16` or `amx_bf16` in /proc/cpuinfo on x86,
`bf16` in the Features line on Arm), then, only when a flag is present, a sub-second matmul probe
confirms that bf16 is really faster here (a hypervisor can pass a flag through that the torch
build does not use; a probe alone would cost seconds where bf16 is emulated, and a flag alone can
lie). bf16 is chosen when the probe runs it at least `PROBE_MIN_SPEEDUP` times fp32's speed:
at equal speed fp32 is the more exact choice.

What stays fp32 whatever the choice (see `keep_trainable_fp32` and the callers): the LoRA
weights and so the optimizer state, the loss (cross-entropy on logits cast to fp32), and the
log-softmax of every score. Only the frozen base weights and activations are bf16.

Gemma models are refused in fp16: their activations exceed fp16's range (65504) and every
score becomes NaN (case fp16_nan).
"""
from __future__ import annotations

import ctypes
import functools
import logging
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from .errors import ModelError, UsageError

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PRECISIONS = ("auto", *DTYPES)
NAMES = {v: k for k, v in DTYPES.items()}
# The same dtypes under torch's own names ("float32", "bfloat16", "float16"), as vLLM takes them.
TORCH_NAMES = {k: str(v).removeprefix("torch.") for k, v in DTYPES.items()}

X86_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
ARM_BF16_FLAGS = ("bf16",)
PROBE_MIN_SPEEDUP = 1.5
PROBE_N = 512
PROBE_ROUNDS = 3

# glibc's mallopt parameters (malloc.h), and the settings through which a user decides the same
# things (mmap, trimming) themselves: exported, they win.
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
GLIBC_MMAP_DEFAULT_MAX = 65536
GLIBC_MALLOC_ENV = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
GLIBC_MALLOC_TUNABLES = ("glibc.malloc.mmap_max", "glibc.malloc.mmap_threshold", "glibc.malloc.trim_threshold",
                         "glibc.malloc.top_pad")
ALLOCATOR_CHOICES = ("keep", "system")
# Every exported setting that decides the allocator in place of `keep_freed_memory`.
ALLOCATOR_ENV = ("KORMEDQA_ALLOCATOR", "GLIBC_TUNABLES", "LD_PRELOAD", *GLIBC_MALLOC_ENV)

# Model families trained in bf16 whose activations overflow fp16 (max 65504). Gemma 3's
# residual stream reaches ~1e5 within a few layers: every logit becomes inf/NaN.
FP16_UNSAFE_MODEL_TYPES = ("gemma", "gemma2", "gemma3", "gemma3_text", "gemma3n", "gemma3n_text")


class PrecisionError(ModelError, ValueError):
    """A precision this model or machine cannot run in; raised before any work starts (a user error)."""


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a run uses and the reason, as recorded in run.json."""

    precision: str  # fp32, bf16 or fp16
    requested: str
    device: str
    reason: str
    cpu: str | None = None
    cpu_bf16_flags: tuple[str, ...] = ()
    probe: dict | None = field(default=None)

    @property
    def dtype(self) -> torch.dtype:
        """The torch dtype of `precision`."""
        return DTYPES[self.precision]

    @property
    def torch_device(self) -> torch.device:
        """`device` as a torch.device."""
        return torch.device(self.device)

    def as_dict(self) -> dict:
        """JSON-ready form for run.json, with what stays fp32 whatever the precision (`kept_fp32`)."""
        out = asdict(self)
        out["cpu_bf16_flags"] = list(self.cpu_bf16_flags)
        out["kept_fp32"] = ["LoRA weights", "optimizer state", "loss", "log-softmax of scores"]
        return out

    @classmethod
    def from_dict(cls, recorded: dict) -> "PrecisionChoice":
        """The choice `as_dict` wrote (run.json's "precision"); keys it does not know are ignored.
        Raises TypeError when a field without a default (precision, requested, device, reason) is missing."""
        names = {f.name for f in fields(cls)}
        kept = {k: v for k, v in recorded.items() if k in names}
        kept["cpu_bf16_flags"] = tuple(kept.get("cpu_bf16_flags") or ())
        return cls(**kept)


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags (x86 `flags`, Arm `Features`), lower-case; empty if unknown."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return set(value.lower().split())
    return set()


def native_bf16_flags(flags: set[str], machine: str | None = None) -> tuple[str, ...]:
    """The flags that mean bf16 arithmetic in hardware on this architecture."""
    machine = (machine or platform.machine()).lower()
    wanted = ARM_BF16_FLAGS if machine in ("aarch64", "arm64") else X86_BF16_FLAGS
    return tuple(f for f in wanted if f in flags)


def matmul_flops(dtype: torch.dtype, device: str | torch.device = "cpu", max_n: int = 2048, budget_s: float = 2.0,
                 min_n: int = 256) -> dict:
    """Dense matmul FLOP/s of `dtype` on `device`: the one peak measurement (the precision probe,
    bench/roofline.py and bench/gpu_check.py all use it).

    The square size grows from `min_n` (doubling, up to `max_n`) until one product takes a
    twentieth of `budget_s`, then the product is repeated for about `budget_s` (1 to 20 times).
    Emulated bf16 (~300x slower than fp32 on CPUs without avx512_bf16/amx_bf16) thus stops at the
    first size instead of stalling. A CUDA device is synchronised around the timing.
    Returns {"flops_per_s", "n", "repeats"}.
    """
    device = torch.device(device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    n = min(min_n, max_n)
    while True:
        a = torch.randn(n, n, dtype=dtype, device=device)
        b = torch.randn(n, n, dtype=dtype, device=device)
        sync()
        started = time.perf_counter()
        torch.matmul(a, b)  # warm-up (oneDNN builds its kernel on the first call), and a first timing
        sync()
        one = time.perf_counter() - started
        if n >= max_n or one > budget_s / 20:
            break
        n *= 2
    if one > budget_s:  # one product already took the whole budget: that timing is the figure
        return {"flops_per_s": 2 * n**3 / one, "n": n, "repeats": 1}
    repeats = max(1, min(20, int(budget_s / max(one, 1e-6))))
    started = time.perf_counter()
    for _ in range(repeats):
        torch.matmul(a, b)
    sync()
    return {"flops_per_s": 2 * n**3 * repeats / (time.perf_counter() - started), "n": n, "repeats": repeats}


def matmul_probe(n: int = PROBE_N, give_up_s: float = 0.05, rounds: int = PROBE_ROUNDS) -> dict:
    """GFLOP/s of an n x n matmul in fp32 and bf16, the best of `rounds` interleaved measurements of
    each (`matmul_flops` at one size, about 20 x `give_up_s` / `rounds` each where bf16 is native;
    one product, then at most a few, where it is emulated). Interleaved and best-of: another job on
    the machine slows some measurements, and a single pair could then put bf16 behind fp32 on a CPU
    where it runs 4-7x faster (docs/decisions.md, "A resumed run keeps its precision")."""
    out = {"n": n, "rounds": rounds}
    for _ in range(rounds):
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            gflops = matmul_flops(dtype, max_n=n, min_n=n, budget_s=20 * give_up_s / rounds)["flops_per_s"] / 1e9
            out[f"{name}_gflops"] = max(out.get(f"{name}_gflops", 0.0), gflops)
    return out


def decide_cpu(flags: set[str], probe=matmul_probe, machine: str | None = None, cpu: str | None = None
               ) -> PrecisionChoice:
    """`auto` on a CPU: bf16 if a native-bf16 flag is present and the probe confirms it, else fp32.

    `flags` and `probe` are parameters so tests can play either kind of CPU.
    """
    native = native_bf16_flags(flags, machine)
    if not native:
        wanted = " or ".join(ARM_BF16_FLAGS if (machine or platform.machine()).lower() in ("aarch64", "arm64")
                             else X86_BF16_FLAGS)
        return PrecisionChoice("fp32", "auto", "cpu", f"fp32: the CPU flags have no {wanted} (bf16 would be emulated, "
                               "~300x slower matmuls)", cpu)
    result = probe()
    speedup = result["bf16_gflops"] / max(result["fp32_gflops"], 1e-9)
    result["bf16_speedup"] = round(speedup, 2)
    if speedup >= PROBE_MIN_SPEEDUP:
        reason = (f"bf16: CPU flags {', '.join(native)} and a {result['n']}^2 matmul probe ran bf16 at {speedup:.1f}x "
                  f"fp32 ({result['bf16_gflops']:.0f} vs {result['fp32_gflops']:.0f} GFLOP/s)")
        return PrecisionChoice("bf16", "auto", "cpu", reason, cpu, native, result)
    reason = (f"fp32: CPU flags {', '.join(native)} present, but a {result['n']}^2 matmul probe ran bf16 at only "
              f"{speedup:.2f}x fp32 (needs {PROBE_MIN_SPEEDUP}x)")
    return PrecisionChoice("fp32", "auto", "cpu", reason, cpu, native, result)


def cpu_name() -> str:
    """The processor's model name, for reports that quote measured speeds."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' -> cuda when available, else cpu; any other string as `torch.device(device)`."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@functools.lru_cache(maxsize=1)
def cpu_auto_choice() -> PrecisionChoice:
    """What `--precision auto` picks on this CPU and why (flags, then the probe), once per process;
    settles nothing else (`choose("cpu")` also settles the allocator)."""
    choice = decide_cpu(cpu_flags(), cpu=cpu_name())
    log.debug("precision auto on CPU: %s", choice.reason)  # run.json records it; stderr stays for errors
    return choice


def choose(device: torch.device | str = "auto", precision: str = "auto") -> PrecisionChoice:
    """The precision a run computes in on `device` ("auto" as `pick_device`, a device string or a torch.device).

    `precision` is auto, fp32, bf16 or fp16; PrecisionError (a ModelError, so a one-line user
    error) on any other name. Called once by each run's entry point; the choice is passed down.
    On a CPU it also settles the process's allocator once (`keep_freed_memory`); UsageError for a
    KORMEDQA_ALLOCATOR other than keep or system.
    """
    if precision not in PRECISIONS:
        raise PrecisionError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    device = pick_device(device)
    if device.type == "cpu":
        keep_freed_memory()
        auto = cpu_auto_choice()
        if precision == "auto":
            return auto
        reason = f"{precision}: requested"
        if precision == "bf16" and auto.precision != "bf16":
            reason += " (this CPU has no fast bf16: " + auto.reason.split(": ", 1)[1] + ")"
            log.warning("--precision bf16 on a CPU without native bf16: expect matmuls ~300x slower than fp32")
        return PrecisionChoice(precision, precision, "cpu", reason, auto.cpu, auto.cpu_bf16_flags, auto.probe)
    if precision != "auto":
        return PrecisionChoice(precision, precision, str(device), f"{precision}: requested")
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return PrecisionChoice("bf16", "auto", str(device), f"bf16: {torch.cuda.get_device_name(device)} supports it")
    return PrecisionChoice("fp32", "auto", str(device), f"fp32: {device.type} device without bf16 support")


_allocator_line: str | None = None  # what keep_freed_memory did in this process; None: not called
_kept_by = None  # the glibc (ctypes.CDLL) whose hand-back keep_freed_memory turned off; None: not turned off


def keep_freed_memory() -> str:
    """Keep the memory a CPU run frees for its next tensors instead of handing it back; once per process.

    Returns (and `cpu_allocator` repeats, for run.json) one line saying what the allocator now does.
    On Linux with glibc's malloc, calls `mallopt(M_MMAP_MAX, 0)` and `mallopt(M_TRIM_THRESHOLD,
    2**31 - 1)`: glibc otherwise serves every block over 32 MiB of the main thread's arena with a fresh
    `mmap` and unmaps it on free, so each training step's 262k-vocabulary logits (50-300 MB in bf16
    and fp32) were page-faulted in again, zeroed by the kernel, every step. (Other threads' arenas
    still map blocks over 64 MiB; kormedqa allocates its tensors on the main thread.) Between stages
    `release_freed_memory` hands the kept memory back. Measured with `bench/allocator_ab.py`
    (docs/decisions.md, "Freed memory kept for reuse"): the demo's dictionary steps 1.20-1.28x, its
    MCQ steps 1.06-1.10x, losses identical; the stages' peak RSS +22-27%.
    Left as it is, and said so, where the user chose otherwise: KORMEDQA_ALLOCATOR=system (memory
    handed back as soon as it is freed), an allocator other than glibc's providing `malloc` (LD_PRELOAD
    of jemalloc, tcmalloc ... or one linked in), glibc's mmap/trim settings exported (GLIBC_TUNABLES
    glibc.malloc.mmap_*/trim_threshold/top_pad, MALLOC_MMAP_*_, MALLOC_TRIM_THRESHOLD_,
    MALLOC_TOP_PAD_); and a C library other than glibc. Raises UsageError for a KORMEDQA_ALLOCATOR
    other than keep (the default) or system; nothing else raises.
    """
    global _allocator_line, _kept_by
    if _allocator_line is None:
        chosen = os.environ.get("KORMEDQA_ALLOCATOR", "keep").strip().lower() or "keep"
        if chosen not in ALLOCATOR_CHOICES:
            raise UsageError(f"KORMEDQA_ALLOCATOR must be {' or '.join(ALLOCATOR_CHOICES)}, not "
                             f"{os.environ['KORMEDQA_ALLOCATOR']!r}")
        _allocator_line, _kept_by = _keep_freed(chosen)
    return _allocator_line


def _keep_freed(chosen: str) -> tuple[str, ctypes.CDLL | None]:
    if chosen == "system":
        return "the C library's allocator as configured (KORMEDQA_ALLOCATOR=system)", None
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return f"the C library's allocator ({sys.platform}), unchanged", None
    try:
        libc = ctypes.CDLL("libc.so.6")
        ours = ctypes.cast(libc.malloc, ctypes.c_void_p).value
        used = ctypes.cast(ctypes.CDLL(None).malloc, ctypes.c_void_p).value
    except (OSError, AttributeError):
        return "glibc malloc, defaults (libc not reachable through ctypes)", None
    if ours != used:
        preload = os.environ.get("LD_PRELOAD", "")
        return f"another allocator than glibc's provides malloc{f' (LD_PRELOAD={preload})' if preload else ''}", None
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if any(t in tunables for t in GLIBC_MALLOC_TUNABLES) or any(k in os.environ for k in GLIBC_MALLOC_ENV):
        return "glibc malloc with the exported GLIBC_TUNABLES/MALLOC_* settings", None
    if libc.mallopt(M_MMAP_MAX, 0) != 1:
        return "glibc malloc, defaults (mallopt refused)", None
    if libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1) != 1:
        libc.mallopt(M_MMAP_MAX, GLIBC_MMAP_DEFAULT_MAX)  # both or neither
        return "glibc malloc, defaults (mallopt refused)", None
    return ("glibc malloc without mmap or trimming within a stage: freed memory reused, handed back "
            "between stages"), libc


def cpu_allocator() -> str:
    """What `keep_freed_memory` made of this process's allocator, as one line for run.json and the
    benchmarks' machine record; changes nothing ("not settled in this process" before it ran)."""
    return _allocator_line or "not settled in this process (keep_freed_memory not called)"


def release_freed_memory() -> None:
    """Hand the memory freed so far back to the system (glibc's `malloc_trim(0)`), where
    `keep_freed_memory` keeps it; nothing otherwise. Called between stages (after a training, before a
    model loads): within a stage the kept blocks save the page faults, across stages they would only
    add up, since blocks of other sizes leave holes the next stage cannot always use (the demo's
    process peak 10.5 GB without it, 8.9 GB with it; docs/decisions.md, "Freed memory kept for reuse")."""
    if _kept_by is not None:
        _kept_by.malloc_trim(0)


def check_model_precision(model_type: str | None, dtype: torch.dtype) -> None:
    """Refuse a precision the model family cannot run in (fp16 for Gemma); raises PrecisionError."""
    if dtype == torch.float16 and (model_type or "") in FP16_UNSAFE_MODEL_TYPES:
        raise PrecisionError(
            f"{model_type} models overflow in fp16 (activations exceed 65504, every score becomes NaN): "
            "use --precision bf16 or fp32 (auto picks the fastest the hardware computes)"
        )


def keep_trainable_fp32(model) -> int:
    """Cast every trainable parameter (the LoRA weights) to fp32; returns how many were cast.

    The optimizer keeps its state in the parameters' dtype, so this keeps Adam's moments fp32 as
    well; bf16 updates of size lr * grad would round away against weights of order 1e-2.
    """
    cast = 0
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
            cast += 1
    return cast
