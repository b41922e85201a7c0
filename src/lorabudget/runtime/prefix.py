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

import hashlib
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .batching import TokenBatches, collate, eval_batches
from .cache_storage import decide_storage, disk_tensor
from .precision import autocast
from .tokens import Tokenized, cache_dir


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
    start_layer: int  # the first layer that runs on these states

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
        labels = None if self.labels is None else self.labels[index]
        rows = [self.flat[self.offsets[i]:self.offsets[i + 1]] for i in index]
        batch = collate(rows, labels, key="inputs_embeds", fill=0.0, dtype=torch.float32)
        batch["start_layer"] = self.start_layer
        return batch


@torch.inference_mode()
def compute_states(model: nn.Module, data: Tokenized, stop: int, *, pad_id: int, device: torch.device,
                   dtype: torch.dtype | None = None, batch_size: int = 256, storage: torch.dtype = torch.float16,
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
            tokens = TokenBatches(data, pad_id)
            for index in tqdm(eval_batches(lengths, batch_size, max_tokens=batch_size * 64), unit="batch",
                              desc=f"cache layers 0-{stop - 1}", disable=not progress, leave=False):
                batch = tokens.batch(index)
                with autocast(device, dtype):
                    hidden = inner(input_ids=batch["input_ids"].to(device),
                                   attention_mask=batch["attention_mask"].to(device)).last_hidden_state
                hidden = hidden.to("cpu", storage)
                for row, i in enumerate(index):
                    flat[offsets[i]:offsets[i + 1]] = hidden[row, : lengths[i]]
    finally:
        inner.train(was_training)
    return CachedStates(flat, offsets, data, stop)


# While a sweep runs its trials in one process, trials that cache the same frozen layers of the same model over
# the same texts share one computation: the last such states are kept here for the next trial (one entry, so the
# memory held is what one trial needs anyway). None outside `shared_between_runs`.
_shared: dict[str, tuple[list[CachedStates], str]] | None = None


@contextmanager
def shared_between_runs():
    """Runs inside this block (a sweep's trials) reuse each other's cached states when everything that defines
    them is equal: model, layers, texts (token ids, so max_length too), precision, storage."""
    global _shared
    previous, _shared = _shared, {}
    try:
        yield
    finally:
        _shared = previous


def _fingerprint(inner: nn.Module, datasets: list[Tokenized], stop: int, pad_id: int, dtype, setting: str) -> str:
    h = hashlib.sha256()
    h.update(f"{inner.config._name_or_path}|{inner.config.to_json_string()}|{stop}|{pad_id}|{dtype}|{setting}"
             .encode())
    for data in datasets:
        h.update(data.lengths.tobytes())
        for ids in data.ids:
            h.update(ids.tobytes())
        h.update(b"|")
    return h.hexdigest()


def cache_states(model: nn.Module, datasets: list[Tokenized], stop: int, *, setting: str, pad_id: int,
                 device: torch.device, dtype: torch.dtype | None, progress: bool,
                 say=tqdm.write) -> tuple[list[CachedStates], str]:
    """The states after layer stop-1 for each dataset, in RAM or in a memory-mapped file as `setting`
    (speed.prefix_cache_storage) decides; returns them and where they went ('memory' or 'disk'). Says what it
    cached and how long it took, or that it reused an earlier trial's."""
    inner = encoder_model(model)
    key = None if _shared is None else _fingerprint(inner, datasets, stop, pad_id, dtype, setting)
    if key is not None and key in _shared:
        states, storage = _shared[key]
        say(f"cache     reused the states of frozen layers 0-{stop - 1} computed by an earlier trial")
        return [replace(s, data=d) for s, d in zip(states, datasets)], storage
    storage, need, available = decide_storage(setting, datasets, inner.config.hidden_size)
    if setting == "auto" and storage == "disk":
        say(f"the cached states take {need / 2**30:,.1f} GiB, more than half of the {available / 2**30:,.1f} GiB of "
            f"RAM available: they go to a memory-mapped file under {cache_dir()} "
            "(speed.prefix_cache_storage=memory keeps them in RAM)")
    on_disk = cache_dir() / "prefix" if storage == "disk" else None
    started = time.perf_counter()
    states = [compute_states(model, data, stop, pad_id=pad_id, device=device, dtype=dtype, progress=progress,
                             on_disk=on_disk) for data in datasets]
    mb = sum(s.nbytes() for s in states) / 2**20
    say(f"cache     frozen layers 0-{stop - 1} run once over {sum(len(d) for d in datasets):,} texts: {mb:,.0f} MiB "
        f"of states in {storage}, {time.perf_counter() - started:.1f} s"
        + ("; kept for the next trials" if key is not None else ""))
    if key is not None:
        _shared.clear()
        _shared[key] = (states, storage)
    return states, storage
