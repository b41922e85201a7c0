"""Token noise on training batches (data.token_drop, data.token_swap): texts that read like a garbled copy of
themselves, as the machine-generated half of a shifted target does.

Word dropout and local word-order noise are old regularisers for text classifiers (Iyyer et al. 2015, "Deep
Unordered Composition"; Wei and Zou 2019, EDA's random deletion and swap). Here they act on token ids, after
tokenization and its cache, so they cost nothing but a copy of each row: each token between the first and the
last (the tokenizer's [CLS]/<s> and [SEP]/</s>) is dropped with probability `drop`, then each remaining adjacent
pair is swapped with probability `swap`. Only training batches are noised; validation, prediction and the
frozen-prefix cache see the texts as they are. The noise is a pure function of (seed, the batch's rows), so a
resumed run draws exactly what an uninterrupted one drew.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TokenNoise:
    drop: float
    swap: float
    seed: int

    def rows(self, rows: list[np.ndarray], index: np.ndarray) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, *np.asarray(index, dtype=np.int64).tolist()[:64], len(index)])
        return [self._row(row, rng) for row in rows]

    def _row(self, row: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        row = np.asarray(row)
        if len(row) <= 3:
            return row
        inner = row[1:-1]
        keep = rng.random(len(inner)) >= self.drop
        if not keep.any():  # a text is never emptied: keep one token of it
            keep[rng.integers(len(inner))] = True
        inner = inner[keep].copy()
        if self.swap > 0 and len(inner) > 1:
            i = 0
            flips = rng.random(len(inner) - 1) < self.swap
            while i < len(inner) - 1:  # left to right, a swapped pair is not swapped again
                if flips[i]:
                    inner[i], inner[i + 1] = inner[i + 1], inner[i]
                    i += 2
                else:
                    i += 1
        return np.concatenate([row[:1], inner, row[-1:]])


def token_noise(data_cfg, seed: int) -> TokenNoise | None:
    """The config's token noise, or None when it is off."""
    if not (data_cfg.token_drop or data_cfg.token_swap):
        return None
    return TokenNoise(data_cfg.token_drop, data_cfg.token_swap, seed)
