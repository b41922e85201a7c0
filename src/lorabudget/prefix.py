"""Frozen-prefix caching: when nothing below encoder layer k trains, layers 0..k-1 are a fixed function of the
input. Compute their output once per text, store it compactly, and train layers k.. on the stored states.

How it changes training: the cached layers run once in eval mode, so their dropout is off (the same as at
inference); the layers that train keep theirs. With adapters on the top layers only, this removes most of the
forward work of every step and all of the repeated work of every epoch.

How it runs the model: the transformers model itself still does the work above layer k (attention masks, SDPA,
pooler, head), only with a pass-through in place of its embeddings and the top slice of its layer list, swapped in
for the duration of one forward. Parameter names never change, so checkpoints and adapters are unaffected.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .batching import Tokenized, collate, eval_batches
from .errors import TrainingError


class PassThroughEmbeddings(nn.Module):
    """Stands in for the embeddings: the cached hidden states come in as `inputs_embeds` and go on unchanged."""

    def forward(self, input_ids=None, inputs_embeds=None, **kwargs):
        return inputs_embeds


def encoder_model(model: nn.Module) -> nn.Module | None:
    """The BertModel / RobertaModel inside a peft model, if it has the embeddings + encoder.layer shape."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = getattr(base, "base_model", None)
    if inner is None or not hasattr(inner, "embeddings") or not hasattr(getattr(inner, "encoder", None), "layer"):
        return None
    return inner


def frozen_prefix_length(model: nn.Module) -> int:
    """k such that the embeddings and layers 0..k-1 hold no trainable parameter (0: nothing to cache)."""
    inner = encoder_model(model)
    if inner is None:
        return 0
    if any(p.requires_grad for p in inner.embeddings.parameters()):
        return 0
    for k, layer in enumerate(inner.encoder.layer):
        if any(p.requires_grad for p in layer.parameters()):
            return k
    return 0  # no layer trains: head-only training would cache everything; not handled here


@contextmanager
def layers_from(inner: nn.Module, start: int):
    """Run only layers start.. of `inner`, fed with hidden states instead of token ids."""
    embeddings, layers = inner.embeddings, inner.encoder.layer
    inner.embeddings = PassThroughEmbeddings()
    inner.encoder.layer = nn.ModuleList(list(layers)[start:])
    try:
        yield
    finally:
        inner.embeddings, inner.encoder.layer = embeddings, layers


@contextmanager
def layers_below(inner: nn.Module, stop: int):
    """Run only the embeddings and layers ..stop-1 of `inner`."""
    layers = inner.encoder.layer
    inner.encoder.layer = nn.ModuleList(list(layers)[:stop])
    try:
        yield
    finally:
        inner.encoder.layer = layers


@dataclass
class CachedStates:
    """Hidden states after layer k-1 for every text, unpadded, in one flat tensor: text i is rows
    offsets[i]:offsets[i+1]. Stored in fp16 (half the memory of fp32, a relative error ~5e-4)."""

    flat: torch.Tensor
    offsets: np.ndarray
    data: Tokenized

    @property
    def lengths(self) -> np.ndarray:
        return self.data.lengths

    @property
    def labels(self):
        return self.data.labels

    def __len__(self) -> int:
        return len(self.data)

    def nbytes(self) -> int:
        return self.flat.numel() * self.flat.element_size()

    def batch(self, index: np.ndarray) -> dict[str, torch.Tensor]:
        return collate_states(self, index)


@torch.inference_mode()
def compute_states(model: nn.Module, data: Tokenized, stop: int, *, pad_id: int, device: torch.device,
                   autocast=None, batch_size: int = 256, storage: torch.dtype = torch.float16,
                   on_disk: Path | None = None, progress: bool = False) -> CachedStates:
    """The states after layer stop-1 for every text of `data`. With `on_disk` (a folder), they live in a
    memory-mapped file there instead of RAM: the page cache keeps what fits, the disk holds the rest."""
    inner = encoder_model(model)
    lengths = data.lengths
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(lengths)
    shape = (int(offsets[-1]), inner.config.hidden_size)
    flat = disk_tensor(shape, storage, on_disk) if on_disk is not None else torch.empty(shape, dtype=storage)
    was_training = inner.training
    inner.eval()
    try:
        with layers_below(inner, stop):
            for index in tqdm(eval_batches(lengths, batch_size, max_tokens=batch_size * 64), unit="batch",
                              desc=f"cache layers 0-{stop - 1}", disable=not progress, leave=False):
                batch = collate(data, index, pad_id)
                with autocast() if autocast else _nothing():
                    hidden = inner(input_ids=batch["input_ids"].to(device),
                                   attention_mask=batch["attention_mask"].to(device)).last_hidden_state
                hidden = hidden.to("cpu", storage)
                for row, i in enumerate(index):
                    flat[offsets[i]:offsets[i + 1]] = hidden[row, : lengths[i]]
    finally:
        inner.train(was_training)
    return CachedStates(flat, offsets, data)


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
        # Reserve the blocks now: a sparse file on a full disk would fail later, as SIGBUS mid-write.
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as exc:
            raise TrainingError(f"no room for the cached states ({size / 2**20:,.0f} MiB) in {folder}: {exc.strerror}; "
                             "free disk space, set LORABUDGET_CACHE elsewhere, or use "
                             "speed.prefix_cache_storage=memory") from None
        array = np.memmap(name, dtype=np_dtype, mode="r+", shape=shape)
    finally:
        os.close(fd)
        os.unlink(name)
    tensor = torch.from_numpy(array)
    return tensor.view(torch.bfloat16) if dtype == torch.bfloat16 else tensor


@contextmanager
def _nothing():
    yield


def collate_states(states: CachedStates, index: np.ndarray, dtype: torch.dtype = torch.float32,
                   pad_to_multiple_of: int = 8) -> dict[str, torch.Tensor]:
    lengths = states.data.lengths[index]
    width = -(-int(lengths.max()) // pad_to_multiple_of) * pad_to_multiple_of
    hidden = torch.zeros((len(index), width, states.flat.shape[1]), dtype=dtype)
    mask = torch.zeros((len(index), width), dtype=torch.long)
    for row, i in enumerate(index):
        n = int(lengths[row])
        hidden[row, :n] = states.flat[states.offsets[i]:states.offsets[i + 1]]
        mask[row, :n] = 1
    batch = {"inputs_embeds": hidden, "attention_mask": mask}
    if states.data.labels is not None:
        batch["labels"] = torch.from_numpy(states.data.labels[index])
    return batch
