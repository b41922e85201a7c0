"""The planner's verbs and what they print: one config's exact breakdown, the table of the best allocations, a
written candidate config, and the picture of how each spends its budget."""

from __future__ import annotations

import textwrap
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import ConfigError
from ...model.families import ROLES
from .arithmetic import VARIANTS, Counts
from .ranking import HEURISTIC
from .search import SHORT, Candidate, Plan, SearchSpace, _heads_for, default_num_labels, search, verify

if TYPE_CHECKING:
    from ...config import Config


def check_config(cfg: Config, num_labels: int | None = None) -> str:
    """The exact breakdown of one config, built on the meta device; BudgetError (exit 2) when over budget."""
    from ...model.budget import check_budget, format_breakdown
    from ...model.build import planned_breakdown

    n = default_num_labels(cfg, num_labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        b = planned_breakdown(cfg, n)
    check_budget(b, cfg.budget)
    lines = [f"plan      {cfg.model.name}, head {cfg.head.type}, {n} labels (meta device: no weights loaded)"]
    if cfg.adapter.init in ("pissa", "olora"):
        lines.append(f"note      counted with the default init in place of {cfg.adapter.init}, which needs real "
                     "weights; the count does not depend on the init")
    lines.append(format_breakdown(b, cfg.budget))
    return "\n".join(lines)


_COLUMNS = (f"{'#':>3}  {'total':>9}  {'used':>6}  {'adapters':>9}  {'head':>9}  {'biases':>7}  "
            f"{'head type':<14}  {'bias':<9}  {'method':<6}  {'layers':<15}  ranks per module type")
def _module_legend(roles: dict[str, str]) -> str:
    """What each column's role is called on this family ('q = attention.self.query, ...')."""
    return "; ".join(f"{SHORT[role]} = {module}" for role, module in roles.items())


def _row(k: int, cand: Candidate, counts: Counts, budget: int) -> str:
    head = sum(n for g, n in counts.groups.items() if g.startswith("head"))
    biases = counts.groups.get("biases", 0)
    method = next(v for v, (m, options) in VARIANTS.items()
                  if m == cand.method and options.get("use_dora", False) == cand.dora)
    return (f"{k:>3}  {counts.total:>9,}  {counts.total / budget:>6.1%}  {counts.total - head - biases:>9,}  "
            f"{head:>9,}  {biases:>7,}  {cand.describe_head():<14}  {cand.bias:<9}  {method:<6}  "
            f"{cand.layer_label:<15}  {cand.describe_ranks()}")


def format_plan(plan: Plan) -> str:
    s = plan.space
    layers = ", ".join([f"all, top 1..{plan.shape.n_layers - 1}"] + [",".join(map(str, c)) for c in s.custom_layers])
    space = (f"heads {', '.join(_heads_for(plan.shape, s.heads))} (k={plan.head_rank}) | bias {', '.join(s.biases)}"
             f" | {', '.join(s.methods)} | ranks {', '.join(map(str, s.ranks))} per module type | modules "
             f"{', '.join(SHORT[m] for m in s.modules if m in plan.shape.roles)} | layers {layers}")
    checked = (f"{len(plan.rows) + plan.sampled} allocations (the {len(plan.rows)} rows and {plan.sampled} random "
               "others) built on the meta device: arithmetic == count_trainable, per group and per layer")
    lines = [f"plan      {plan.shape.describe()}, budget {plan.budget:,}",
             f"space     {space}",
             f"found     {plan.allocations:,} allocations that fit, in {plan.designs:,} designs",
             "",
             _COLUMNS]
    lines += [_row(k, cand, counts, plan.budget) for k, (cand, counts, _) in enumerate(plan.rows, 1)]
    lines += ["", f"verified  {checked}", f"modules   {_module_legend(plan.shape.roles)}"]
    lines += textwrap.wrap(HEURISTIC, width=116, initial_indent="ranking   ", subsequent_indent=" " * 10)
    return "\n".join(lines)


def write_candidate(plan: Plan, pick: int, path: str | Path, num_labels: int) -> str:
    """Write row `pick` (1-based) as a YAML config for `lorabudget train`, with its exact count in a comment."""
    import yaml

    from ...config import load_config
    from ...model.budget import format_breakdown
    from ...rundir import atomic_write_text

    if not 1 <= pick <= len(plan.rows):
        raise ConfigError(f"--pick {pick}: choose a row from 1 to {len(plan.rows)}")
    _, counts, cfg = plan.rows[pick - 1]
    raw = cfg.model_dump(mode="json", exclude_defaults=True)
    # the allocation is written out in full, whatever the defaults; the rest only where it differs from them
    raw["model"] = {"name": cfg.model.name, **raw.get("model", {})}
    raw["adapter"] = cfg.adapter.model_dump(mode="json")
    raw["head"] = cfg.head.model_dump(mode="json")
    raw["budget"] = cfg.budget
    order = ["model", "data", "adapter", "head", "budget"]
    raw = {k: raw[k] for k in order + [k for k in raw if k not in order] if k in raw}
    groups = ", ".join(f"{g} {n:,}" for g, n in counts.groups.items())
    text = (f"# Planned by `lorabudget plan`: row {pick} for {plan.shape.name} under a budget of {plan.budget:,} "
            f"({plan.shape.num_labels} labels).\n"
            f"# trainable: {counts.total:,} ({groups})\n"
            "# Set data.source (or pass --data) before training.\n" + yaml.safe_dump(raw, sort_keys=False))
    out = Path(path)
    atomic_write_text(out, text)  # never a half-written config that `train` would read
    # The file, not the object, is what users train: read it back and count it once more.
    built = verify(load_config(out), counts, num_labels)
    return f"wrote     {out} (row {pick})\n{format_breakdown(built, plan.budget)}"


def plot_groups(roles: dict[str, str]) -> list[tuple[str, str]]:
    """(budget group prefix, legend label) for the bars: the head, LoRA per role, DoRA magnitudes, biases."""
    return ([("head", "head")] + [(f"lora {roles[t]}", f"LoRA {SHORT[t]}") for t in ROLES if t in roles]
            + [("dora magnitude", "DoRA magnitudes"), ("biases", "biases")])


def plot_plan(plan: Plan, path: str | Path) -> str:
    """A stacked bar per row: how its budget splits into head, LoRA per module type, DoRA magnitudes, biases."""
    import numpy as np

    from ...plots import plt, save_figure

    x = np.arange(len(plan.rows))
    fig, ax = plt.subplots(figsize=(max(6.4, 0.6 * len(x) + 3), 4.5))
    bottom = np.zeros(len(x))
    colors = plt.get_cmap("tab10").colors
    for k, (prefix, label) in enumerate(plot_groups(plan.shape.roles)):
        values = np.array([sum(n for g, n in counts.groups.items() if g.startswith(prefix))
                           for _, counts, _ in plan.rows], dtype=float)
        if values.any():
            ax.bar(x, values, bottom=bottom, label=label, color=colors[k % len(colors)], width=0.7)
            bottom += values
    ax.axhline(plan.budget, color="black", ls="--", lw=1, label=f"budget {plan.budget:,}")
    ax.set_xticks(x, [f"#{k}" for k in range(1, len(x) + 1)])
    ax.set_xlabel("candidate (table row)")
    ax.set_ylabel("trainable parameters")
    ax.set_title(f"Budget split of the top candidates: {plan.shape.name}")
    ax.yaxis.set_major_formatter(lambda v, _: f"{v:,.0f}")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    save_figure(fig, Path(path))
    return f"wrote     {path} (budget split of the {len(x)} rows)"


def plan(base: Config, model: str, space: SearchSpace, *, num_labels: int | None = None, top: int = 10,
         sample: int = 5, seed: int = 0, write: str | None = None, pick: int = 1,
         plot: str | None = None) -> str:
    """`lorabudget plan --model ...`: search, verify, and the report; optionally write a row and draw the plot."""
    result = search(base, model, space, num_labels=num_labels, top=top, sample=sample, seed=seed)
    parts = [format_plan(result)]
    if write:
        parts.append(write_candidate(result, pick, write, result.shape.num_labels))
    if plot:
        parts.append(plot_plan(result, plot))
    return "\n".join(parts)
