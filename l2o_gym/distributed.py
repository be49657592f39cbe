"""``torch.distributed`` under ``torchrun``: the process group of a training run and this process's place in it.

One process per rank (``torchrun --nproc_per_node K``), gloo on CPU, nccl on CUDA. On CUDA each rank uses the
GPU of its ``LOCAL_RANK`` (``torch.cuda.set_device``), so ``device="cuda"`` means a different GPU on every rank
of a node, as nccl requires.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised ``torch.distributed`` group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def launched() -> bool:
    """Whether this process is one of several started by ``torchrun`` (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_group(device: str | torch.device) -> tuple[int, int]:
    """Initialise the process group from ``torchrun``'s environment if it is not yet: nccl when ``device`` is CUDA
    (first selecting the GPU of ``LOCAL_RANK`` when ``device`` names none), gloo otherwise. Returns
    :func:`world`; ``(0, 1)`` outside ``torchrun``."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return world()
    dev = torch.device(device)
    if not dist.is_initialized():
        if dev.type == "cuda" and dev.index is None and "LOCAL_RANK" in os.environ:
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return world()
