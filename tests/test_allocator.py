"""The CPU allocator setting (`hardware.cpu_allocator`): freed memory kept for reuse unless the user chose otherwise.

The setting is process-wide and cannot be undone, so each case runs in a fresh interpreter; it
checks what glibc does (`mallinfo2().hblkhd`, the bytes held in mmapped blocks, around a 256 MiB
allocation) rather than what the function says.
"""
import ctypes
import os
import platform
import subprocess
import sys

import pytest

from kormedqa import hardware
from kormedqa.hardware import PrecisionChoice
from kormedqa.provenance import provenance

GLIBC = platform.libc_ver()
pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or GLIBC[0] != "glibc" or not hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2"),
    reason="glibc >= 2.33 (mallinfo2) only",
)

# Prints the allocator line, then the growth in mmapped bytes while 256 MiB are held.
PROBE = """
import ctypes
from kormedqa.hardware import choose, cpu_allocator
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
choose("cpu", "fp32")
before = libc.mallinfo2().hblkhd
block = bytearray(256 << 20)
print(cpu_allocator())
print(libc.mallinfo2().hblkhd - before)
"""
USER_SETTINGS = ("KORMEDQA_ALLOCATOR", "GLIBC_TUNABLES", "LD_PRELOAD", *hardware.GLIBC_MALLOC_ENV)


def probe(**exported) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if k not in USER_SETTINGS} | exported
    proc = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-500:]
    line, grown = proc.stdout.strip().splitlines()[-2:]
    return line, int(grown)


def test_a_cpu_run_keeps_large_blocks_off_mmap():
    """choose('cpu') applies it: 256 MiB come from the heap, not a fresh mapping page-faulted in again."""
    line, grown = probe()
    assert "without mmap" in line
    assert grown < 1 << 20


@pytest.mark.parametrize("exported", [{"KORMEDQA_ALLOCATOR": "system"},
                                      {"GLIBC_TUNABLES": "glibc.malloc.mmap_max=65536"},
                                      {"MALLOC_TRIM_THRESHOLD_": "131072"}])
def test_the_users_own_allocator_settings_win(exported):
    """Opting out (or configuring glibc oneself) leaves glibc's behaviour: a 256 MiB block is its own mapping."""
    line, grown = probe(**exported)
    assert "without mmap" not in line
    assert grown >= 256 << 20


# Resident MiB after 256 MiB were freed, then after release_freed_memory.
RELEASE = """
import os
from kormedqa.hardware import choose, release_freed_memory
def rss_mib():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // (1 << 20)
choose("cpu", "fp32")
block = bytearray(256 << 20)
block[::4096] = b"x" * len(block[::4096])
del block
print(rss_mib())
release_freed_memory()
print(rss_mib())
"""


@pytest.mark.parametrize("exported", [{}, {"KORMEDQA_ALLOCATOR": "system"}])
def test_freed_memory_is_kept_within_a_stage_and_handed_back_between(exported):
    """Kept: a freed block stays resident for the next step until release_freed_memory (between stages)
    hands it back. Under glibc's defaults it was never kept, and the release does nothing."""
    env = {k: v for k, v in os.environ.items() if k not in USER_SETTINGS} | exported
    proc = subprocess.run([sys.executable, "-c", RELEASE], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-500:]
    after_free, after_release = map(int, proc.stdout.split()[-2:])
    if exported:
        assert abs(after_free - after_release) < 64
    else:
        assert after_free - after_release >= 200


def test_another_preloaded_allocator_is_left_alone(monkeypatch):
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
    monkeypatch.delenv("KORMEDQA_ALLOCATOR", raising=False)
    assert hardware.cpu_allocator.__wrapped__() == "allocator from LD_PRELOAD (/usr/lib/x86_64-linux-gnu/libjemalloc.so.2), as exported"


def test_run_json_records_the_allocator_of_cpu_runs_only():
    cpu = PrecisionChoice("fp32", "fp32", "cpu", "fp32: requested")
    gpu = PrecisionChoice("bf16", "auto", "cuda", "bf16: a GPU")
    assert provenance({}, choice=cpu)["cpu_allocator"] == hardware.cpu_allocator()
    assert provenance({}, choice=gpu)["cpu_allocator"] is None
