"""Batched inference over tokenized texts: logits in the original row order.

Used for validation during training and by `evaluate` / `predict`. Batches are sorted by length (little padding)
and capped by tokens, so long texts do not blow up memory; the rows are put back in order at the end.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from .batching import eval_batches
from .forward import forward_logits
from .precision import autocast


@torch.inference_mode()
def predict_logits(model: torch.nn.Module, source, *, batch_size: int, device: torch.device,
                   dtype: torch.dtype | None = None, progress: bool = False, desc: str = "evaluate",
                   shard: tuple[int, int] = (0, 1), forward=forward_logits) -> tuple[np.ndarray, np.ndarray]:
    """(row indices, fp32 logits) for this process's shard of the batches; with one process, every row.
    `source` has `.lengths` and `.batch(index)` (batching.TokenBatches, prefix.CachedStates); `forward(model,
    batch, device)` gives the logits."""
    was_training = model.training
    model.eval()
    batches = eval_batches(source.lengths, batch_size, max_tokens=batch_size * 128)
    rank, world = shard
    mine = batches[rank::world]
    rows, outs = [], []
    try:
        for index in tqdm(mine, desc=desc, unit="batch", disable=not progress, leave=False):
            batch = source.batch(index)
            with autocast(device, dtype):
                logits = forward(model, batch, device)
            rows.append(index)
            outs.append(logits.float().cpu().numpy())
    finally:
        model.train(was_training)
    if not outs:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(rows), np.concatenate(outs)


def ordered(rows: np.ndarray, logits: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((n, logits.shape[1]), dtype=np.float32)
    out[rows] = logits
    return out
