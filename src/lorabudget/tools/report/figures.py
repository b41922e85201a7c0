"""The report's pictures: accuracy curves coloured by a varied setting, accuracy against trainable parameters
(names placed by `labels`), Optuna's parameter importances and a parallel-coordinate plot of a study (its axes
laid out by `parallel`)."""

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
from .parallel import Axis


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text).strip("-").lower()


def _numeric(values: list[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _value_order(text: str):
    """Values (a tuple of settings, in comparable form) in order: numbers numerically, then the rest by text."""
    return tuple((0, v, "") if _numeric([v]) else (1, 0, json.dumps(v)) for v in json.loads(text))


def visible_cmap(name: str = "viridis", stop: float = 0.75):
    """A sequential colour map cut before its lightest end, so that every line drawn in it shows on white
    (viridis' last quarter is yellow-green to yellow, which a thin line on white all but loses)."""
    import matplotlib as mpl
    import numpy as np

    return mpl.colors.ListedColormap(mpl.colormaps[name](np.linspace(0, stop, 256)), name=f"{name}-visible")


def plot_curves_by(runs: list[Run], keys: list[str], path: Path) -> Path:
    """Validation accuracy against step, one line per run, coloured by the value of `keys` (settings that split
    the runs alike: one figure serves them all; none: by run). A run evaluated once is a dot."""
    import matplotlib as mpl

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    values = [tuple(r.config.get(k) for k in keys) if keys else (r.name,) for r in runs]
    distinct = sorted({comparable(v) for v in values}, key=_value_order)
    firsts = [json.loads(s)[0] for s in distinct]
    continuous = len(keys) == 1 and _numeric(firsts) and len(distinct) > 6
    if continuous:  # many numbers (a sampled learning rate): a colour scale, log where the range is wide
        nums = [float(v) for v in firsts]
        wide = min(nums) > 0 and max(nums) / min(nums) > 20
        norm = (mpl.colors.LogNorm if wide else mpl.colors.Normalize)(min(nums), max(nums))
        cmap = visible_cmap()
    palette = mpl.colormaps["tab10" if len(distinct) <= 10 else "tab20"]
    labelled = set()
    # runs drawn in value order, so that the legend lists the values in order
    order = sorted(range(len(runs)), key=lambda i: (distinct.index(comparable(values[i])), runs[i].name))
    for run, value in ((runs[i], values[i]) for i in order):
        steps, acc = run.curve
        s = comparable(value)
        color = cmap(norm(float(value[0]))) if continuous else palette(distinct.index(s) % palette.N)
        text = None if continuous or s in labelled else ", ".join(map(fmt_value, value))
        if text and keys and len(distinct) == len(runs):  # one run per entry: name it, as the leaderboard does
            text += f" ({run.name})"
        labelled.add(s)
        ax.plot(steps, acc, "o-", color=color, lw=1.4, ms=3, alpha=0.85, label=text)
    name = ", ".join(keys) if keys else "run"
    if continuous:
        fig.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=name)
    else:  # the legend names the setting(s) once, in its title, and lists their values
        ax.legend(fontsize=8, title=name, title_fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5),
                  ncol=1 + len(distinct) // 16)
    steps = sorted({s for r in runs for s in r.curve[0]})
    if len(steps) <= 12:  # a tick at each step evaluated (every 5: 5, 10, 15), not at 6, 9, 12
        ax.set_xticks(steps)
    else:
        ax.xaxis.set_major_locator(mpl.ticker.MaxNLocator(integer=True))  # steps are whole numbers
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"Validation accuracy by {name}")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_accuracy_vs_params(groups: list[Group], names: list[str], path: Path) -> Path:
    from matplotlib.ticker import FuncFormatter

    fig, ax = plt.subplots(figsize=(9, 4.8))
    x = [g.runs[0].summary.get("trainable_params", 0) for g in groups]
    ax.errorbar(x, [g.mean for g in groups], yerr=[g.std for g in groups], fmt="o", capsize=3,
                color="tab:blue")
    budgets = {r.summary.get("budget") for g in groups for r in g.runs}
    seeds = any(len(g.runs) > 1 for g in groups)
    title = "Accuracy against trainable parameters" + (" (mean ± std over seeds)" if seeds else "")
    if len(budgets) == 1 and None not in budgets:
        budget = budgets.pop()
        if budget <= 2.5 * max(x):  # drawn where it does not squeeze every run into a corner
            ax.axvline(budget, ls="--", color="tab:red", lw=1, label=f"budget {budget:,}")
            ax.legend(fontsize=8, loc="lower right")
        else:
            title += f"\nbudget {budget:,}, off the scale: every run uses at most {max(x) / budget:.1%} of it"
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel("validation accuracy")
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


def plot_importances(study, trials: int, path: Path) -> Path:
    """Optuna's parameter importances (fANOVA over the complete trials), in Optuna's own matplotlib figure."""
    import matplotlib as mpl
    from optuna.visualization import matplotlib as ovm

    # Optuna switches matplotlib to its ggplot style for good; rc_context puts the package's style back after.
    with warnings.catch_warnings(), mpl.rc_context():
        warnings.simplefilter("ignore")  # 'experimental' in Optuna
        ax = ovm.plot_param_importances(study)
        if ax.get_legend() is not None:  # 'Objective Value': one objective, nothing to tell apart
            ax.get_legend().remove()
        ax.set_title(f"Parameter importances (fANOVA over {trials} complete trials)", loc="left")
        fig = ax.figure
        fig.set_size_inches(9, 4.8)
        return save_figure(fig, path)


def plot_parallel(axes: list[Axis], objective: list[float], higher_is_better: bool, path: Path) -> Path:
    """Parallel coordinates of the complete trials, drawn here rather than by Optuna: names and values that fit
    between the axes (the figure widens for them), and lines in a colour map that stays visible on white, the
    best trials darkest and drawn last, on top."""
    import numpy as np
    from matplotlib.collections import LineCollection

    fig, ax = plt.subplots(figsize=(8, 4.4))
    renderer = fig.canvas.get_renderer()
    tick_style = {"fontsize": 9, "va": "center", "textcoords": "offset points", "zorder": 3,
                  "bbox": {"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 0.5}}
    widths = []  # per axis: what its labels need to the right of it and around it, in inches
    for i, a in enumerate(axes):
        ax.axvline(i, color="0.25", lw=1, zorder=2)
        ticks = [ax.annotate(text, (i, y), xytext=(4, 0), ha="left", **tick_style) for y, text in a.ticks]
        name = ax.annotate(a.label, (i, 0), xycoords=("data", "axes fraction"), xytext=(0, -10),
                           textcoords="offset points", ha="center", va="top", fontsize=10)
        right = max((t.get_window_extent(renderer).width for t in ticks), default=0)
        widths.append((right, name.get_window_extent(renderer).width))
    dpi = fig.dpi
    # the gap after axis i holds its values and half of each name either side of it; every gap is the widest one
    gap = max([max(widths[i][0] + 12, (widths[i][1] + widths[i + 1][1]) / 2 + 14) / dpi
               for i in range(len(axes) - 1)] + [0.9])
    left, right = widths[0][1] / 2 / dpi + 0.1, max(widths[-1][0] + 12, widths[-1][1] / 2 + 6) / dpi + 0.1
    width = left + gap * (len(axes) - 1) + right
    fig.set_size_inches(width, 4.4)
    ax.set_position([left / width, 0.12, gap * (len(axes) - 1) / width, 0.8])
    ax.set_xlim(0, len(axes) - 1)
    ax.set_ylim(-0.04, 1.04)
    ax.set_axis_off()
    span = (min(objective), max(objective))
    shade = [(v - span[0]) / (span[1] - span[0]) if span[1] > span[0] else 1.0 for v in objective]
    if higher_is_better:
        shade = [1 - s for s in shade]  # 0: the best, darkest end
    order = sorted(range(len(objective)), key=lambda t: -shade[t])  # the best last, on top
    lines = [np.column_stack([range(len(axes)), [a.positions[t] for a in axes]]) for t in order]
    ax.add_collection(LineCollection(lines, colors=[PARALLEL_CMAP(shade[t]) for t in order], lw=1.6, alpha=0.9,
                                     zorder=1))
    ax.set_title("Parallel coordinates of the complete trials (the best darkest)", fontsize=11)
    return save_figure(fig, path)


PARALLEL_CMAP = visible_cmap()
