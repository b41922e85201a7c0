"""Prior adaptation: when the target's class shares differ from training's, re-weight the model's probabilities
by the target's shares, estimated from the unlabelled target itself by EM (Saerens, Latinne and Decaestecker,
"Adjusting the outputs of a classifier to new a priori probabilities", Neural Computation 2002).

Each EM step reweights every row's posterior by (estimated target prior / training prior), renormalises, and
takes the mean posterior as the new estimate. It needs no labels and adds no parameter. A dozen lines of numpy:
no maintained library ships it for plain probability arrays."""

from __future__ import annotations

import numpy as np


def adapt_priors(probs: np.ndarray, train_priors: np.ndarray, *, max_iter: int = 1000,
                 tol: float = 1e-8) -> tuple[np.ndarray, np.ndarray]:
    """(adapted probabilities, estimated target priors) for `probs` (rows: texts, columns: classes), given the
    class shares the model was trained under."""
    p_train = np.asarray(train_priors, dtype=np.float64)
    p_train = p_train / p_train.sum()
    probs = np.asarray(probs, dtype=np.float64)
    q = p_train.copy()
    adapted = probs
    for _ in range(max_iter):
        adapted = probs * (q / p_train)
        adapted /= adapted.sum(axis=1, keepdims=True)
        new = adapted.mean(axis=0)
        done = np.abs(new - q).max() < tol
        q = new
        if done:
            break
    adapted = probs * (q / p_train)
    return adapted / adapted.sum(axis=1, keepdims=True), q
