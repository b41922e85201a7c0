"""The shift in one picture: six panels (the domain classifiers share one), training data (or validation)
against the target."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from ...plots import plt, save_figure

TRAIN, TARGET = "#1f77b4", "#d62728"


def _bars(ax, labels: list[str], left: list[float], right: list[float], names: tuple[str, str], title: str) -> None:
    y = np.arange(len(labels))
    ax.barh(y - 0.2, left, height=0.4, color=TRAIN, label=names[0])
    ax.barh(y + 0.2, right, height=0.4, color=TARGET, label=names[1])
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("share of rows")
    ax.set_xlim(0, 1.45 * max([*left, *right, 0.01]))  # room on the right for the legend, clear of the bars
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right")


def plot_shift(s: dict, domains: dict[str, dict], confidences: tuple[np.ndarray, np.ndarray], path: Path) -> Path:
    """`domains`: each domain classifier's separation (serve.shares.separation) by what it reads; they share the
    lower left panel, one above the other."""
    fig, axes = plt.subplots(2, 3, figsize=(16, 8.5))
    L, A, V, M = s["lengths"], s["artefacts"], s["vocabulary"], s["model"]

    ax = axes[0, 0]
    stats = ["p10_chars", "median_chars", "p90_chars"]
    x = np.arange(len(stats))
    ax.bar(x - 0.2, [L["train"][k] for k in stats], 0.4, color=TRAIN, label="train")
    ax.bar(x + 0.2, [L["target"][k] for k in stats], 0.4, color=TARGET, label="target")
    ax.set_xticks(x, ["10th percentile", "median", "90th percentile"])
    ax.set_ylabel("characters")
    ax.set_title("Text length", fontsize=10)
    ax.legend(fontsize=8)

    names = list(A["train"])
    _bars(axes[0, 1], names, [A["train"][n] for n in names], [A["target"][n] for n in names], ("train", "target"),
          "Artefacts of the training source")

    ax = axes[0, 2]
    kinds = ["unseen", "rare"]
    x = np.arange(len(kinds))
    ax.bar(x - 0.2, [V["validation"][k] for k in kinds], 0.4, color=TRAIN, label="validation")
    ax.bar(x + 0.2, [V["target"][k] for k in kinds], 0.4, color=TARGET, label="target")
    ax.set_xticks(x, ["never in train", "at most twice in train"])
    ax.set_ylabel("share of word occurrences")
    ax.set_title("Vocabulary", fontsize=10)
    ax.legend(fontsize=8)

    cell = axes[1, 0].get_subplotspec().subgridspec(len(domains), 1, hspace=0.9)
    axes[1, 0].remove()
    bins = np.linspace(0, 1, 41)
    for k, (reads, domain) in enumerate(domains.items()):
        ax = fig.add_subplot(cell[k])
        ax.hist(domain["train_scores"], bins=bins, color=TRAIN, alpha=0.6, label="train rows")
        ax.hist(domain["target_scores"], bins=bins, color=TARGET, alpha=0.6, label="target rows")
        ax.axvline(domain["threshold"], color="black", lw=1, ls="--", label="99% of train below")
        ax.set_ylabel("rows", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_title(f"Domain classifier on {reads}: AUC {domain['auc']:.2f}, {domain['unlike_share']:.0%} of "
                     "target unlike train", fontsize=9)
        if k == 0:
            ax.legend(fontsize=7)
    ax.set_xlabel("domain classifier's score (out of fold): how target-like", fontsize=8)

    ax = axes[1, 1]
    bins = np.linspace(min(0.25, float(min(c.min() for c in confidences))), 1, 31)
    for conf, colour, name in zip(confidences, (TRAIN, TARGET), ("validation", "target")):
        ax.hist(conf, bins=bins, color=colour, alpha=0.6, density=True, label=f"{name} (mean {conf.mean():.2f})")
    ax.set_xlabel("the model's confidence (top class probability)")
    ax.set_ylabel("density")
    ax.set_title("The model's confidence", fontsize=10)
    ax.legend(fontsize=8)

    _bars(axes[1, 2], M["classes"], M["validation"]["class_shares"], M["target"]["class_shares"],
          ("validation", "target"), "Predicted classes")
    title = f"{Path(s['run']).name} against {Path(s['target']).name}: {s['verdict']}"
    fig.suptitle("\n".join(textwrap.wrap(title, 140)), fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)
