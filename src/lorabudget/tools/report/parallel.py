"""A study's complete trials as parallel-coordinate axes: each trial's place on the objective's axis and on each
sampled parameter's (log where it was sampled on a log scale, evenly spaced for categorical choices, a separate
'not sampled' place for a parameter that a trial's conditions left out), and tick labels short enough to sit
between two axes. The picture is drawn by `figures.plot_parallel`; this module decides what it shows."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

MAX_TICK_CHARS = 14  # a value longer than this is written as a letter on its axis, and spelled out in the caption
MAX_NAME_LINE = 16  # a longer parameter name is wrapped at a dot (or a slash)
NOT_SAMPLED = "not sampled"
_ABSENT = object()


@dataclass
class Axis:
    name: str  # the parameter's full name, 'adapter.r' (or the objective's)
    positions: list[float]  # each trial's place on the axis: 0 at the bottom, 1 at the top
    ticks: list[tuple[float, str]]  # (place, text) written beside the axis
    key: list[str] = field(default_factory=list)  # 'A = [query, key, value]' for the values written as letters

    @property
    def label(self) -> str:
        """The name as written under the axis: whole, wrapped after a dot where it is long."""
        if len(self.name) <= MAX_NAME_LINE:
            return self.name
        cut = max((i for i, c in enumerate(self.name[:MAX_NAME_LINE + 1]) if c in "./"), default=-1)
        return self.name if cut <= 0 else f"{self.name[:cut + 1]}\n{self.name[cut + 1:]}"


@dataclass
class Parallel:
    axes: list[Axis]  # the objective first, then every parameter that varies among the trials
    objective: list[float]  # per trial
    higher_is_better: bool
    constant: dict[str, Any]  # parameters every complete trial shares: no axis, named in the caption
    trials: list[int]  # Optuna trial numbers


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _numbers(values: list) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _numeric_axis(name: str, values: list, log: bool) -> Axis:
    """A continuous axis; trials without a value sit at the bottom, below the range, at 'not sampled'."""
    from matplotlib.ticker import MaxNLocator

    present = [v for v in values if v is not _ABSENT]
    scale = math.log10 if log else float
    lo, hi = scale(min(present)), scale(max(present))
    bottom = 0.18 if len(present) < len(values) else 0.0  # room for the 'not sampled' place

    def place(v) -> float:
        return bottom + (1 - bottom) * ((scale(v) - lo) / (hi - lo) if hi > lo else 0.5)

    if log:  # four places evenly spaced in log space, each written with two digits: 0.0013, 0.0035, ...
        marks = [10 ** (lo + (hi - lo) * k / 3) for k in range(4)] if hi > lo else [min(present)]
        ticks = [(place(m), f"{m:.2g}") for m in marks]
    else:
        locator = MaxNLocator(nbins=4, integer=all(isinstance(v, int) for v in present))
        marks = [m for m in locator.tick_values(lo, hi) if lo - 1e-12 <= m <= hi + 1e-12] or [lo]
        step = marks[1] - marks[0] if len(marks) > 1 else abs(lo) or 1
        # as many decimals as the step needs, the same on every tick: 0.4, 0.6, ... 1.0; 0.25, 0.50; 2, 4, 6
        digits = next((d for d in range(8) if abs(round(step, d) - step) < 1e-9 * max(1.0, abs(step))), 8)
        ticks = [(place(m), f"{m:.{digits}f}") for m in marks]
    if bottom:
        ticks.append((0.0, NOT_SAMPLED))
    return Axis(name, [0.0 if v is _ABSENT else place(v) for v in values], ticks)


def _categorical_axis(name: str, values: list, choices: list) -> Axis:
    """Evenly spaced choices, in the space's order (numbers in numeric order), only those some trial took."""
    taken = ([_ABSENT] if any(v is _ABSENT for v in values) else []) + [c for c in choices if c in values]
    texts = [NOT_SAMPLED if c is _ABSENT else _fmt(c) for c in taken]
    key = []
    if any(len(t) > MAX_TICK_CHARS for t in texts):  # letters beside the axis, the values in the caption
        key = [f"{chr(ord('A') + i)} = {t}" for i, t in enumerate(texts)]
        texts = [k.split(" = ")[0] for k in key]

    def place(v) -> float:
        i = next(i for i, c in enumerate(taken) if c is v or (c is not _ABSENT and v is not _ABSENT and c == v))
        return i / (len(taken) - 1) if len(taken) > 1 else 0.5

    return Axis(name, [place(v) for v in values], [(place(c), t) for c, t in zip(taken, texts)], key)


def parallel_data(study) -> Parallel:
    """The axes of the study's complete trials: the objective, then the sampled parameters in name order."""
    from optuna.distributions import CategoricalDistribution
    from optuna.study import StudyDirection

    trials = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE" and t.value is not None]
    metric = ((study.user_attrs.get("base_config") or {}).get("eval") or {}).get("metric")
    objective = [float(t.value) for t in trials]
    axes = [_numeric_axis(f"validation {metric}" if metric else "objective value", objective, log=False)]
    constant = {}
    for name in sorted({n for t in trials for n in t.params}):
        values = [t.params.get(name, _ABSENT) for t in trials]
        if len({repr(v) for v in values}) == 1:
            constant[name] = values[0]
            continue
        dist = next(t.distributions[name] for t in trials if name in t.distributions)
        if isinstance(dist, CategoricalDistribution):
            choices = list(dist.choices)
            if _numbers(choices):
                choices.sort()
            axes.append(_categorical_axis(name, values, choices))
        else:
            axes.append(_numeric_axis(name, values, log=bool(getattr(dist, "log", False))))
    return Parallel(axes, objective, study.direction != StudyDirection.MINIMIZE,
                    {k: v for k, v in constant.items() if v is not _ABSENT}, [t.number for t in trials])
