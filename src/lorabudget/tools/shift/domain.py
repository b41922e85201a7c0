"""A domain classifier: can the frozen encoder's features tell target rows from training rows? Cross-validated
AUC near 0.5 means no; near 1 means the target is another kind of text. Each target row's out-of-fold score
says how unlike the training data it is: a row scoring above what almost every training row scores (the 99th
percentile of their out-of-fold scores) is unlike anything in train.

Logistic regression from scikit-learn on standardised mean-pooled features: the textbook probe, quick on a few
thousand rows, and its scores are calibrated enough to threshold."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ...runtime.batching import TokenBatches, eval_batches
from ...runtime.precision import autocast
from ...runtime.tokens import tokenize
from ...serve.shares import separation


@torch.inference_mode()
def encoder_features(encoder, tokenizer, texts: Sequence[str], *, max_length: int, device, dtype,
                     batch_size: int = 64) -> np.ndarray:
    """Mean of the last hidden states over each text's real tokens (the frozen, pretrained encoder)."""
    data = tokenize(list(texts), None, tokenizer, max_length, progress=False)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    source = TokenBatches(data, pad_id)
    out = np.zeros((len(texts), encoder.config.hidden_size), dtype=np.float32)
    encoder.eval()
    for index in eval_batches(data.lengths, batch_size, max_tokens=batch_size * 64):
        batch = source.batch(index)
        mask = batch["attention_mask"].to(device)
        with autocast(device, dtype):
            hidden = encoder(input_ids=batch["input_ids"].to(device), attention_mask=mask).last_hidden_state
        hidden, mask = hidden.float(), mask.unsqueeze(-1).float()
        out[index] = ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).cpu().numpy()
    return out


def domain_classifier(train: np.ndarray, target: np.ndarray, *, folds: int = 5, seed: int = 0) -> dict:
    """Cross-validated AUC of train-vs-target, the out-of-fold target scores, and the share of target rows
    scoring above the 99th percentile of the training rows' scores."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.concatenate([train, target])
    y = np.concatenate([np.zeros(len(train)), np.ones(len(target))])
    folds = max(2, min(folds, len(train), len(target)))
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    scores = cross_val_predict(probe, x, y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
                               method="predict_proba")[:, 1]
    return separation(scores[: len(train)], scores[len(train):], folds)
