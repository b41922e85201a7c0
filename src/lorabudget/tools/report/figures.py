"""The report's pictures: accuracy curves coloured by a varied setting, accuracy against trainable parameters
(names placed by `labels`), and Optuna's importance and parallel-coordinate plots for a study."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

from ...plots import plt, save_figure
from .collect import Run
from .groups import Group, comparable, fmt_value
from .labels import place_labels


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text).strip("-").lower()


def _numeric(values: list[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _value_order(text: str):
    """Numbers in numeric order, then everything else by its text."""
    value = json.loads(text)
    return (0, value, "") if _numeric([value]) else (1, 0, text)


def plot_curves_by(runs: list[Run], key: str | None, label: str, path: Path) -> Path:
    """Validation accuracy against step, one line per run, coloured by the value of `key` (None: by run)."""
    import matplotlib as mpl

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    values = [r.config.get(key) if key else r.name for r in runs]
    distinct = sorted({comparable(v) for v in values}, key=_value_order)
    continuous = _numeric([json.loads(s) for s in distinct]) and len(distinct) > 6
    if continuous:  # many numbers (a sampled learning rate): a colour scale, log where the range is wide
        nums = [float(json.loads(s)) for s in distinct]
        wide = min(nums) > 0 and max(nums) / min(nums) > 20
        norm = (mpl.colors.LogNorm if wide else mpl.colors.Normalize)(min(nums), max(nums))
        cmap = mpl.colormaps["viridis"]
    palette = mpl.colormaps["tab10"]
    labelled = set()
    # runs drawn in value order, so that the legend lists the values in order
    order = sorted(range(len(runs)), key=lambda i: (distinct.index(comparable(values[i])), runs[i].name))
    for run, value in ((runs[i], values[i]) for i in order):
        steps, acc = run.curve
        s = comparable(value)
        color = cmap(norm(float(value))) if continuous else palette(distinct.index(s) % 10)
        text = None if continuous or s in labelled else f"{label}={fmt_value(value)}" if key else run.name
        labelled.add(s)
        ax.plot(steps, acc, "o-", color=color, lw=1.4, ms=3, alpha=0.85, label=text)
    if continuous:
        fig.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=label)
    else:
        ax.legend(fontsize=8, loc="lower right", ncol=1 + len(distinct) // 8)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"Validation accuracy by {label}" if key else "Validation accuracy")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_accuracy_vs_params(groups: list[Group], names: list[str], path: Path) -> Path:
    from matplotlib.ticker import FuncFormatter

    fig, ax = plt.subplots(figsize=(9, 4.8))
    x = [g.runs[0].summary.get("trainable_params", 0) for g in groups]
    ax.errorbar(x, [g.mean for g in groups], yerr=[g.std for g in groups], fmt="o", capsize=3,
                color="tab:blue")
    budgets = {r.summary.get("budget") for g in groups for r in g.runs}
    title = "Accuracy against trainable parameters (mean ± std over seeds)"
    if len(budgets) == 1 and None not in budgets:
        budget = budgets.pop()
        if budget <= 2.5 * max(x):  # drawn where it does not squeeze every run into a corner
            ax.axvline(budget, ls="--", color="tab:red", lw=1, label=f"budget {budget:,}")
            ax.legend(fontsize=8, loc="lower right")
        else:
            title += f"\nbudget {budget:,}, off the scale: every run uses at most {max(x) / budget:.1%} of it"
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel("best validation accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    # room for the names: the x range widened by a fifth each side (not below 0 parameters), the y range by a tenth
    x0, x1 = ax.get_xlim()
    y0, y1 = ax.get_ylim()
    left = x0 - 0.2 * (x1 - x0)
    ax.set_xlim(max(left, 0) if x0 >= 0 else left, x1 + 0.2 * (x1 - x0))
    ax.set_ylim(y0 - 0.1 * (y1 - y0), y1 + 0.1 * (y1 - y0))
    # every point named up to 15 groups; beyond that only the 10 best, so the leaders stay readable. The best are
    # placed first, so they get the positions next to their points. A group without a score is drawn nowhere.
    scored = [i for i, g in enumerate(groups) if math.isfinite(g.mean)]
    order = sorted(scored, key=lambda i: -groups[i].mean)[: len(scored) if len(scored) <= 15 else 10]
    place_labels(ax, [(x[i], groups[i].mean, names[i]) for i in order],
                  [(x[i], groups[i].mean, groups[i].std if math.isfinite(groups[i].std) else 0) for i in scored])
    return save_figure(fig, path)


def plot_study(study, kind: str, path: Path) -> Path:
    """Optuna's own matplotlib figures: parameter importances or the parallel-coordinate plot."""
    import matplotlib as mpl
    from optuna.visualization import matplotlib as ovm

    # Optuna switches matplotlib to its ggplot style for good; rc_context puts the package's style back after.
    with warnings.catch_warnings(), mpl.rc_context():
        warnings.simplefilter("ignore")  # both are 'experimental' in Optuna
        plot = ovm.plot_param_importances if kind == "importances" else ovm.plot_parallel_coordinate
        ax = plot(study)
        fig = ax.figure
        fig.set_size_inches(*((9, 4.8) if kind == "importances" else (12, 5.2)))  # room for the axis labels
        return save_figure(fig, path)
