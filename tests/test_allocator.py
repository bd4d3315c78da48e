"""The CPU allocator setting (`hardware.keep_freed_memory`): freed memory kept within a stage, handed
back between stages, unless the user chose otherwise.

The setting is process-wide and cannot be undone, so every case that applies it runs in a fresh
interpreter and checks what glibc does (`mallinfo2().hblkhd`, the bytes held in mmapped blocks,
and the resident set) rather than what the function says; the pytest process itself never applies it here.
"""
import ctypes
import os
import platform
import subprocess
import sys

import pytest

from kormedqa import hardware, modeling
from kormedqa.errors import UsageError
from kormedqa.hardware import PrecisionChoice
from kormedqa.provenance import provenance

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
needs_glibc = pytest.mark.skipif(not GLIBC or not hasattr(ctypes.CDLL("libc.so.6") if GLIBC else None, "mallinfo2"),
                                 reason="glibc >= 2.33 (mallinfo2) only")

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
# Resident MiB before, while 256 MiB are held, after they were freed, and after release_freed_memory.
RELEASE = """
import os
from kormedqa.hardware import choose, release_freed_memory
def rss_mib():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // (1 << 20)
choose("cpu", "fp32")
before = rss_mib()
block = bytearray(256 << 20)
block[::4096] = b"x" * len(block[::4096])
held = rss_mib()
del block
freed = rss_mib()
release_freed_memory()
print(before, held, freed, rss_mib())
"""


def run(code: str, **exported) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in hardware.ALLOCATOR_ENV} | exported
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-500:]
    return proc.stdout.strip().splitlines()


@needs_glibc
def test_a_cpu_run_keeps_large_blocks_off_mmap():
    """choose('cpu') applies it: 256 MiB come from the heap, not a fresh mapping page-faulted in again."""
    line, grown = run(PROBE)[-2:]
    assert line.startswith("glibc malloc without mmap")
    assert int(grown) < 1 << 20


@needs_glibc
@pytest.mark.parametrize("exported", [{"KORMEDQA_ALLOCATOR": "system"},
                                      {"KORMEDQA_ALLOCATOR": " System "},
                                      {"GLIBC_TUNABLES": "glibc.malloc.mmap_max=65536"},
                                      {"MALLOC_TRIM_THRESHOLD_": "131072"}])
def test_the_users_own_allocator_settings_win(exported):
    """Opting out (or configuring glibc's mmap/trimming oneself) leaves glibc's behaviour: a 256 MiB block is its own mapping."""
    line, grown = run(PROBE, **exported)[-2:]
    assert "without mmap" not in line
    assert int(grown) >= 256 << 20


@needs_glibc
def test_a_glibc_tunable_that_decides_nothing_of_this_keeps_the_setting():
    line, grown = run(PROBE, GLIBC_TUNABLES="glibc.malloc.tcache_count=7")[-2:]
    assert line.startswith("glibc malloc without mmap") and int(grown) < 1 << 20


@needs_glibc
@pytest.mark.parametrize("exported", [{}, {"KORMEDQA_ALLOCATOR": "system"}])
def test_freed_memory_is_kept_within_a_stage_and_handed_back_between(exported):
    """Kept: a freed block stays resident for the next step until release_freed_memory (between stages)
    hands it back. Under glibc's defaults it leaves at once, and the release has nothing to do."""
    before, held, freed, released = map(int, run(RELEASE, **exported)[-1].split())
    assert held - before >= 250
    if exported:
        assert held - freed >= 250 and abs(freed - released) < 64
    else:
        assert held - freed < 16 and freed - released >= 250


def test_an_unknown_allocator_choice_is_a_one_line_user_error(monkeypatch):
    monkeypatch.setattr(hardware, "_allocator_line", None)
    monkeypatch.setenv("KORMEDQA_ALLOCATOR", "jemalloc")
    with pytest.raises(UsageError, match="KORMEDQA_ALLOCATOR must be keep or system, not 'jemalloc'"):
        hardware.keep_freed_memory()


def test_other_c_libraries_and_other_mallocs_are_left_alone(monkeypatch):
    monkeypatch.setattr(hardware.platform, "libc_ver", lambda: ("musl", "1.2"))
    assert hardware._keep_freed("keep") == ("the C library's allocator (" + sys.platform + "), unchanged", None)
    if GLIBC:  # a malloc that is not libc's: what an LD_PRELOADed jemalloc looks like to ctypes
        monkeypatch.setattr(hardware.platform, "libc_ver", lambda: ("glibc", "2.36"))
        real = ctypes.CDLL

        class Other:
            malloc = real("libc.so.6").free  # any other address

        monkeypatch.setattr(hardware.ctypes, "CDLL", lambda name: Other() if name is None else real(name))
        line, kept_by = hardware._keep_freed("keep")
        assert line.startswith("another allocator than glibc's provides malloc") and kept_by is None


def test_only_cpu_runs_settle_the_allocator(monkeypatch):
    calls = []
    monkeypatch.setattr(hardware, "keep_freed_memory", lambda: calls.append(1) or "kept")
    hardware.choose("cuda", "bf16")
    assert calls == []
    hardware.choose("cpu", "fp32")
    assert calls == [1]


def test_model_loading_hands_back_what_the_last_stage_freed(tiny_model_dir, monkeypatch):
    calls = []
    monkeypatch.setattr(modeling, "release_freed_memory", lambda: calls.append(1))
    modeling.load_model(str(tiny_model_dir), PrecisionChoice("fp32", "fp32", "cpu", "fp32: requested"))
    assert calls == [1]


def test_run_json_records_what_the_allocator_does_for_cpu_runs_only(monkeypatch):
    monkeypatch.setattr(hardware, "_allocator_line", "glibc malloc without mmap or trimming within a stage: ...")
    cpu = PrecisionChoice("fp32", "fp32", "cpu", "fp32: requested")
    gpu = PrecisionChoice("bf16", "auto", "cuda", "bf16: a GPU")
    assert provenance({}, choice=cpu)["cpu_allocator"].startswith("glibc malloc without mmap")
    assert provenance({}, choice=gpu)["cpu_allocator"] is None
    monkeypatch.setattr(hardware, "_allocator_line", None)
    assert provenance({}, choice=cpu)["cpu_allocator"].startswith("not settled")


def test_the_tests_own_process_is_not_settled_by_them():
    """Reading the setting changes nothing (the probes above apply it in their own interpreters)."""
    before = hardware._allocator_line
    hardware.cpu_allocator()
    assert hardware._allocator_line == before


def test_merge_refuses_fp16_gemma_without_settling_the_allocator(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """`kormedqa merge --dtype fp16` checks the precision only: one line, exit 2, nothing written,
    and the process's allocator left alone (merging is no CPU run of the pipeline)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from kormedqa.cli import main

    adapter = tmp_path / "adapter"
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                   LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(adapter)
    monkeypatch.setattr(hardware, "keep_freed_memory", lambda: pytest.fail("merge settled the allocator"))
    capsys.readouterr()  # the adapter's own loading bars
    assert main(["merge", "--adapter", str(adapter), "--output", str(tmp_path / "out"), "--dtype", "fp16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fp16" in err[0]
    assert not (tmp_path / "out").exists()
