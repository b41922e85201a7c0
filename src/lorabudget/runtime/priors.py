"""Prior adaptation: when the target's class shares differ from training's, re-weight the model's probabilities
by the target's shares, estimated from the unlabelled target itself by EM (Saerens, Latinne and Decaestecker,
"Adjusting the outputs of a classifier to new a priori probabilities", Neural Computation 2002).

Each EM step reweights every row's posterior by (estimated target prior / training prior), renormalises, and
takes the mean posterior as the new estimate. It needs no labels and adds no parameter. A dozen lines of numpy:
no maintained library ships it for plain probability arrays."""

from __future__ import annotations

import numpy as np


def adapt_priors(probs: np.ndarray, train_priors: np.ndarray, *, max_iter: int = 1000, tol: float = 1e-8,
                 max_ratio: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    """(adapted probabilities, estimated target priors) for `probs` (rows: texts, columns: classes), given the
    class shares the model was trained under.

    EM is exact for calibrated probabilities; from an undertrained or overconfident model it can run away and
    put every row in one class. Each step therefore keeps every class's share within `max_ratio` times (and at
    least 1/max_ratio of) its training share: room for a strong label shift (5x: a 25% class between 5% and
    100%), never a collapse."""
    p_train = np.asarray(train_priors, dtype=np.float64)
    p_train = p_train / p_train.sum()
    probs = np.asarray(probs, dtype=np.float64)
    q = p_train.copy()
    adapted = probs
    for _ in range(max_iter):
        adapted = probs * (q / p_train)
        adapted /= adapted.sum(axis=1, keepdims=True)
        new = _within(adapted.mean(axis=0), p_train / max_ratio, np.minimum(p_train * max_ratio, 1.0))
        done = np.abs(new - q).max() < tol
        q = new
        if done:
            break
    adapted = probs * (q / p_train)
    return adapted / adapted.sum(axis=1, keepdims=True), q


def _within(q: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Shares summing to 1 with each between its bounds: clip, then give the mass clipped off (or missing) to the
    classes still inside their bounds, in proportion, until none moves past a bound."""
    q = q.copy()
    for _ in range(len(q) + 1):
        q = np.clip(q, lo, hi)
        free = (q > lo) & (q < hi)
        excess = 1.0 - q.sum()
        if abs(excess) < 1e-12 or not free.any():
            break
        q[free] += excess * q[free] / q[free].sum()
    return q / q.sum()


def match_shares(logits: np.ndarray, shares: np.ndarray, *, max_iter: int = 2000, tol: float = 1e-6) -> np.ndarray:
    """Per-class offsets to add to `logits` so that the rows' mean predicted probability of each class equals
    `shares`: the model's class balance on these rows set to what the user knows it to be.

    Unlike EM above, the shares are given, not estimated, and the correction is fitted on the rows themselves:
    a shift that tilts the model towards one class on every row (on the course's generated texts, towards
    Sci/Tech) is undone, which re-weighting by a ratio of priors cannot do. Each step moves every class's offset
    by the log of (wanted share / current mean probability): a fixed point of that step meets the shares, and it
    is reached in a few dozen steps from zero (Sinkhorn's scaling of one side of the table)."""
    z = np.asarray(logits, dtype=np.float64)
    wanted = np.asarray(shares, dtype=np.float64)
    wanted = wanted / wanted.sum()
    offsets = np.zeros(z.shape[1])
    if not len(z):
        return offsets
    for _ in range(max_iter):
        a = z + offsets
        p = np.exp(a - a.max(axis=1, keepdims=True))
        mean = (p / p.sum(axis=1, keepdims=True)).mean(axis=0)
        step = np.log(wanted / np.maximum(mean, 1e-12))
        offsets += step
        if np.abs(step).max() < tol:
            break
    return offsets - offsets.mean()  # only differences between classes matter
