"""Length-bucketed batches, padded per batch: one collate for token ids and for cached hidden states.

AG News averages about 50 tokens; padding every text to 128 (or batching random lengths together) spends most of
the compute on padding. Batches here are drawn from windows of similar-length texts and padded only to their own
longest text. The order is a pure function of (seed, epoch), which is what makes resuming a killed run exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .augment import TokenNoise
from .tokens import Tokenized


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


def collate(rows: Sequence, labels: np.ndarray | None, *, key: str, fill: float, dtype: torch.dtype,
            pad_to_multiple_of: int = 8) -> dict[str, torch.Tensor]:
    """A batch of rows of different lengths, padded to one width (a multiple of 8) with `fill`, and their attention
    mask. Rows are token ids (one id per token: `key` 'input_ids') or cached states (one hidden vector per
    token: 'inputs_embeds')."""
    width = -(-max(len(r) for r in rows) // pad_to_multiple_of) * pad_to_multiple_of
    values = torch.full((len(rows), width, *rows[0].shape[1:]), fill, dtype=dtype)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        values[i, : len(row)] = torch.as_tensor(row)
        mask[i, : len(row)] = 1
    batch = {key: values, "attention_mask": mask}
    if labels is not None:
        batch["labels"] = torch.from_numpy(labels)
    return batch


class TokenBatches:
    """Batches of padded token ids for a tokenized split (the model runs from its embeddings); `noise` garbles a
    training split's rows (augment.TokenNoise)."""

    def __init__(self, data: Tokenized, pad_id: int, noise: TokenNoise | None = None):
        self.data, self.pad_id, self.noise = data, pad_id, noise
        self.lengths = data.lengths
        self.labels = data.labels

    def __len__(self) -> int:
        return len(self.data)

    def batch(self, index: np.ndarray) -> dict[str, torch.Tensor]:
        labels = None if self.labels is None else self.labels[index]
        rows = [self.data.ids[i] for i in index]
        if self.noise is not None:
            rows = self.noise.rows(rows, index)
        return collate(rows, labels, key="input_ids", fill=self.pad_id, dtype=torch.long)
