"""Where the frozen prefix's cached states live: in RAM when they fit comfortably, else in a memory-mapped file."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..errors import TrainingError
from .tokens import Tokenized


def states_nbytes(datasets: list[Tokenized], hidden_size: int, storage: torch.dtype = torch.float16) -> int:
    """What compute_states will store for these datasets: one row of `hidden_size` per real token."""
    tokens = sum(int(d.lengths.sum()) for d in datasets)
    return tokens * hidden_size * torch.empty((), dtype=storage).element_size()


def available_memory() -> int:
    """Bytes of RAM the OS could give now without swapping (psutil, which accelerate depends on, reads it
    portably: MemAvailable on Linux, free + inactive on macOS)."""
    import psutil

    return int(psutil.virtual_memory().available)


def choose_storage(setting: str, need: int, available: int, processes: int = 1) -> str:
    """'memory' or 'disk' for `prefix_cache_storage`. 'auto' keeps the states in RAM when the copies of every
    process on this machine take at most half of what is available: the other half is left for the model,
    activations and the rest of the system. The roberta-base default on the Hub's AG News needs about 10 GB,
    more than half of a 16 GB laptop or a notebook VM, where an out-of-memory kill would lose the run."""
    if setting != "auto":
        return setting
    return "memory" if need * max(1, processes) <= available // 2 else "disk"


def decide_storage(setting: str, datasets: list[Tokenized], hidden_size: int) -> tuple[str, int, int]:
    """(storage, bytes the states need, bytes of RAM available) for caching `datasets` in this process. Every
    process on the machine holds its own copy (launchers set LOCAL_WORLD_SIZE)."""
    need, available = states_nbytes(datasets, hidden_size), available_memory()
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return choose_storage(setting, need, available, processes), need, available


def disk_tensor(shape: tuple[int, int], dtype: torch.dtype, folder: Path) -> torch.Tensor:
    """An uninitialised tensor backed by a memory-mapped file in `folder`. The file is unlinked at once: the
    mapping keeps it alive, and the space returns to the disk when the tensor goes, even if the run is killed."""
    folder.mkdir(parents=True, exist_ok=True)
    # numpy has no bfloat16: bf16 states are stored as their raw 16 bits and viewed back as bf16
    np_dtype = {torch.float16: np.float16, torch.float32: np.float32, torch.bfloat16: np.int16}[dtype]
    fd, name = tempfile.mkstemp(prefix="prefix-states-", suffix=".bin", dir=folder)
    try:
        size = max(1, int(np.prod(shape))) * np.dtype(np_dtype).itemsize
        reserve(fd, size, folder)
        array = np.memmap(name, dtype=np_dtype, mode="r+", shape=shape)
    finally:
        os.close(fd)
        os.unlink(name)
    tensor = torch.from_numpy(array)
    return tensor.view(torch.bfloat16) if dtype == torch.bfloat16 else tensor


def reserve(fd: int, size: int, folder: Path) -> None:
    """Reserve `size` bytes for the file now: a sparse file on a full disk would fail later, as SIGBUS mid-write.
    Where the OS has no posix_fallocate (macOS), the free space is checked and the file extended instead."""
    fallocate = getattr(os, "posix_fallocate", None)
    try:
        if fallocate is not None:
            fallocate(fd, 0, size)
            return
        free = shutil.disk_usage(folder).free
        if free < size:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        os.ftruncate(fd, size)
    except OSError as exc:
        raise TrainingError(f"no room for the cached states ({size / 2**20:,.0f} MiB) in {folder}: "
                            f"{exc.strerror}; free disk space, set LORABUDGET_CACHE elsewhere, or use "
                            "speed.prefix_cache_storage=memory") from None
