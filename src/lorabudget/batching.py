"""Texts -> token ids (once, cached on disk) -> length-bucketed, dynamically padded batches.

AG News averages about 50 tokens; padding every text to 128 (or batching random lengths together) spends most of
the compute on padding. Batches here are drawn from windows of similar-length texts and padded only to their own
longest text. The order is a pure function of (seed, epoch), which is what makes resuming a killed run exact.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm


@dataclass
class Tokenized:
    ids: list[np.ndarray]  # one int32 array per text, truncated to max_length, special tokens included
    labels: np.ndarray | None

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.ids), dtype=np.int64, count=len(self.ids))

    def __len__(self) -> int:
        return len(self.ids)


def cache_dir() -> Path:
    return Path(os.environ.get("LORABUDGET_CACHE", Path.home() / ".cache" / "lorabudget"))


def _tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(f"{type(tokenizer).__name__}\n{spec}".encode()).hexdigest()


def _key(tokenizer, texts: Sequence[str], max_length: int) -> str:
    h = hashlib.sha256()
    h.update(_tokenizer_fingerprint(tokenizer).encode())
    h.update(str(max_length).encode())
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


def tokenize(texts: Sequence[str], labels: Sequence[int] | None, tokenizer, max_length: int, *,
             use_cache: bool = True, progress: bool = True, desc: str = "tokenize") -> Tokenized:
    """Token ids for each text; cached under LORABUDGET_CACHE keyed by tokenizer, max_length and the texts."""
    label_arr = None if labels is None else np.asarray(labels, dtype=np.int64)
    path = cache_dir() / "tokens" / f"{_key(tokenizer, texts, max_length)}.npz" if use_cache else None
    if path is not None and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                flat, offsets = z["flat"], z["offsets"]
            if len(offsets) == len(texts) + 1:
                return Tokenized([flat[offsets[i]:offsets[i + 1]] for i in range(len(texts))], label_arr)
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache entry is recomputed and overwritten below
    ids: list[np.ndarray] = []
    chunk = 2048
    for start in tqdm(range(0, len(texts), chunk), desc=desc, unit="chunk", disable=not progress, leave=False):
        enc = tokenizer(list(texts[start:start + chunk]), truncation=True, max_length=max_length,
                        add_special_tokens=True)
        ids.extend(np.asarray(x, dtype=np.int32) for x in enc["input_ids"])
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(x) for x in ids])
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, flat=np.concatenate(ids) if ids else np.zeros(0, np.int32), offsets=offsets)
        os.replace(tmp, path)
    return Tokenized(ids, label_arr)


def train_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int, *, bucket: bool = True,
                  window_batches: int = 64) -> list[np.ndarray]:
    """One epoch's batches of indices: shuffled, then length-sorted within windows of `window_batches` batches,
    then the batches themselves shuffled, so each batch is uniform in length but the epoch stays random."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if not bucket:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    window = batch_size * window_batches
    batches = []
    for start in range(0, len(order), window):
        chunk = order[start:start + window]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def eval_batches(lengths: np.ndarray, batch_size: int, max_tokens: int | None = None) -> list[np.ndarray]:
    """Batches for inference, longest first (a memory problem shows at once); callers restore row order."""
    order = np.argsort(-lengths, kind="stable")
    if max_tokens is None:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    batches, start = [], 0
    while start < len(order):
        longest = max(int(lengths[order[start]]), 1)
        size = max(1, min(batch_size, max_tokens // longest))
        batches.append(order[start:start + size])
        start += size
    return batches


def collate(data: Tokenized, index: np.ndarray, pad_id: int, pad_to_multiple_of: int = 8) -> dict[str, torch.Tensor]:
    seqs = [data.ids[i] for i in index]
    width = max(len(s) for s in seqs)
    width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for row, s in enumerate(seqs):
        input_ids[row, : len(s)] = s
        mask[row, : len(s)] = 1
    batch = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(mask)}
    if data.labels is not None:
        batch["labels"] = torch.from_numpy(data.labels[index])
    return batch


class TokenBatches:
    """Batches of padded token ids for a tokenized split (the model runs from its embeddings)."""

    def __init__(self, data: Tokenized, pad_id: int):
        self.data, self.pad_id = data, pad_id
        self.lengths = data.lengths
        self.labels = data.labels

    def __len__(self) -> int:
        return len(self.data)

    def batch(self, index: np.ndarray) -> dict[str, torch.Tensor]:
        return collate(self.data, index, self.pad_id)
