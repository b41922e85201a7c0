"""Pictures of a run: training curves and the confusion matrix (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def save_figure(fig, path: Path) -> Path:
    """Write a figure atomically (a kill leaves the old picture or the new one) and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path


def _label_axes(ax, ylabel: str, title: str) -> None:
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()


def _further_sets(val: list[dict]) -> list[str]:
    """Names of the further evaluation sets (data.validation_source) in the validation records."""
    keys = {k for r in val for k in r if k.startswith("val_") and k.endswith("_accuracy") and k != "val_accuracy"}
    return sorted(k[len("val_"):-len("_accuracy")] for k in keys)


def plot_training_curves(records: list[dict], folder: Path) -> list[Path]:
    train = [r for r in records if "train_loss" in r]
    val = [r for r in records if "val_accuracy" in r]
    written = []
    fig, ax = plt.subplots(figsize=(6.4, 4))
    if train:
        ax.plot([r["step"] for r in train], [r["train_loss"] for r in train], label="train loss", lw=1)
    if val:
        ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="validation loss", lw=1.5)
    _label_axes(ax, "cross-entropy", "Loss")
    written.append(save_figure(fig, folder / "loss.png"))

    fig, ax = plt.subplots(figsize=(6.4, 4))
    if val:
        steps = [r["step"] for r in val]
        ax.plot(steps, [r["val_accuracy"] for r in val], "o-", label="accuracy")
        ax.plot(steps, [r["val_macro_f1"] for r in val], "s--", label="macro-F1", alpha=0.7)
        for name in _further_sets(val):
            ax.plot(steps, [r.get(f"val_{name}_accuracy") for r in val], "^-", label=f"{name} accuracy", lw=1.2)
        best = max(val, key=lambda r: r["val_accuracy"])
        ax.annotate(f"{best['val_accuracy']:.4f}", (best["step"], best["val_accuracy"]),
                    textcoords="offset points", xytext=(0, 8), ha="center")
        ax.margins(y=0.12)  # room for the label above the best point, clear of the title
    _label_axes(ax, "validation score", "Validation accuracy")
    written.append(save_figure(fig, folder / "accuracy.png"))
    return written


def plot_confusion_matrix(cm, class_names: list[str], path: Path, title: str = "Confusion matrix") -> Path:
    cm = np.asarray(cm)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(1.2 * k + 2.5, 1.0 * k + 2))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{cm[i, j]:,}\n{share[i, j]:.1%}", ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(k), class_names, rotation=30, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the true class")
    return save_figure(fig, path)
