"""How many processes this run is, and which one this is: read from the launcher's environment.

`accelerate launch` (multi-GPU, FSDP) and `torchrun` set WORLD_SIZE and RANK before Python starts,
so these answers are known before torch.distributed is initialised, which is when an output folder
is claimed. `kormedqa train`, `loop` and `eval` run on several processes: training is DDP (or FSDP)
through Trainer; evaluation gives each process whole scoring batches (`shard_batches`), so every
question is scored once and in the batch one process would have put it in, and the per-question
records are gathered (`all_gather`) before the main process alone writes. The other commands would
each write the same files N times and refuse.
"""
from __future__ import annotations

import os
from typing import Sequence

from .errors import UsageError

MULTI_PROCESS_COMMANDS = ("train", "loop", "eval")


def world_size() -> int:
    """How many processes the launcher started (WORLD_SIZE; 1 when not launched)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def process_index() -> int:
    """This process's rank (RANK; 0 when not launched)."""
    return int(os.environ.get("RANK", "0") or 0)


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


def start_processes(cpu: bool) -> None:
    """Under several processes, join them in torch.distributed as Trainer does (gloo on CPU, nccl on
    GPUs, each process on its own GPU); nothing in one process. Idempotent (accelerate's PartialState).
    Called before a model is loaded, so "cuda" means this process's GPU."""
    if world_size() > 1:
        from accelerate import PartialState

        PartialState(cpu=cpu)


def wait_for_everyone() -> None:
    """A barrier over all processes (after the main one wrote what the others read next); no-op in one."""
    import torch.distributed as dist

    if world_size() > 1 and dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_gather(obj) -> list:
    """`obj` of every process, in rank order (picklable objects, torch.distributed.all_gather_object); [obj] in one."""
    import torch.distributed as dist

    if world_size() == 1 or not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def shard_batches(order: Sequence[int], batch_size: int) -> list[int]:
    """The items this process scores: whole batches of `order` (item indices in the order a scorer
    batches them), batch k to process k mod N. Each item goes to exactly one process, and each batch
    is the batch one process would form (same items, padding, shapes), so results do not depend on
    the number of processes. Returned in increasing index order (input order): the scorers sort
    what they get by the same key again, which restores the batches. All items in one process.

    >>> shard_batches([4, 3, 2, 1, 0], 2)  # one process
    [0, 1, 2, 3, 4]
    """
    world, rank = world_size(), process_index()
    if world == 1:
        return sorted(order)
    n_batches = -(-len(order) // batch_size)
    return sorted(i for k in range(rank, n_batches, world) for i in order[k * batch_size:(k + 1) * batch_size])
