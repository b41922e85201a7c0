"""Classification metrics from labels and predictions.

Written with numpy rather than scikit-learn: these are a confusion matrix and three divisions, and scikit-learn
would be a large dependency for them.
"""

from __future__ import annotations

import numpy as np


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, n_classes: int) -> np.ndarray:
    """cm[i, j]: rows of true class i predicted as class j."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(labels), np.asarray(preds)), 1)
    return cm


def classification_scores(labels, preds, class_names: list[str]) -> dict:
    labels, preds = np.asarray(labels), np.asarray(preds)
    k = len(class_names)
    cm = confusion_matrix(labels, preds, k)
    tp = np.diag(cm).astype(float)
    predicted = cm.sum(axis=0).astype(float)
    support = cm.sum(axis=1).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = support > 0  # macro averages over the classes that occur, as scikit-learn's labels=present would
    return {
        "accuracy": float(tp.sum() / max(len(labels), 1)),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                   "support": int(support[i])}
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": cm.tolist(),
        "rows": int(len(labels)),
    }


def format_report(scores: dict) -> str:
    names = list(scores["per_class"])
    width = max([len(n) for n in names] + [9])
    lines = [f"{'class':<{width}}  precision  recall     f1  support"]
    for name, s in scores["per_class"].items():
        lines.append(f"{name:<{width}}  {s['precision']:>9.4f}  {s['recall']:>6.4f}  {s['f1']:>5.4f}  "
                     f"{s['support']:>7,}")
    lines.append(f"accuracy {scores['accuracy']:.4f}   macro-F1 {scores['macro_f1']:.4f}   rows {scores['rows']:,}")
    return "\n".join(lines)
