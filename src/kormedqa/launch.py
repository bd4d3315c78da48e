"""How many processes this run is, and which one this is: read from the launcher's environment.

`accelerate launch` (multi-GPU, FSDP) and `torchrun` set WORLD_SIZE and RANK before Python starts,
so these answers are known before torch.distributed is initialised, which is when an output folder
is claimed. Only `kormedqa train` runs on several processes: it is the stage whose every write
goes through the main process; the other commands would each write the same files N times.
"""
from __future__ import annotations

import os

from .errors import UsageError

MULTI_PROCESS_COMMANDS = ("train",)


def world_size() -> int:
    """How many processes the launcher started (WORLD_SIZE; 1 when not launched)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def is_main_process() -> bool:
    """True on the process that claims outputs and writes logs (RANK 0, or not launched at all)."""
    return int(os.environ.get("RANK", "0") or 0) == 0


def check_launch(command: str) -> None:
    """Refuse launches that would not train what the user asked for (UsageError, one line).

    `accelerate launch --cpu --num_processes N` starts ONE process (accelerate runs several CPU
    processes only through mpirun): with `--batch-size 1` it silently trains on a global batch of 1
    instead of N. It leaves MASTER_ADDR set (asked for N > 1) and no WORLD_SIZE, which is detected.
    """
    asked_many = os.environ.get("MASTER_ADDR") and os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true"
    launched = any(os.environ.get(k) for k in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"))
    if asked_many and not launched:
        raise UsageError(
            "`accelerate launch --cpu --num_processes N` starts one process, not N; for several CPU processes use "
            "`accelerate launch --multi_gpu --num_processes N -m kormedqa train ... --device cpu` (gloo)"
        )
    if world_size() > 1 and command not in MULTI_PROCESS_COMMANDS:
        raise UsageError(f"kormedqa {command} runs in one process; only {', '.join(MULTI_PROCESS_COMMANDS)} "
                         "takes `accelerate launch` with several processes")
