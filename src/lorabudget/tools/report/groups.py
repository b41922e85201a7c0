"""Runs compared: which settings vary between them, and which runs are seeds of one recipe (one leaderboard row,
mean and spread). What a recipe is comes from config.recipe_settings, the one definition."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from typing import Any

from .collect import Run


def comparable(value: Any) -> str:
    """A comparable form of a config value (lists and tuples alike)."""
    return json.dumps(value, sort_keys=True)


def varied_keys(runs: list[Run]) -> list[str]:
    """Config fields whose value differs between runs, seed excluded (seeds make groups, not figures)."""
    keys = sorted({k for r in runs for k in r.config})
    return [k for k in keys if len({comparable(r.config.get(k)) for r in runs}) > 1]


@dataclass
class Group:
    runs: list[Run]  # configs equal but for the seed

    @property
    def accuracies(self) -> list[float]:
        return [r.best_accuracy for r in self.runs]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accuracies)

    @property
    def std(self) -> float:
        return statistics.stdev(self.accuracies) if len(self.runs) > 1 else 0.0

    def mean_of(self, key: str) -> float:
        return statistics.fmean(float(r.summary.get(key, 0)) for r in self.runs)


def group_by_seed(runs: list[Run]) -> list[Group]:
    """Runs whose configs match in every field but the seed (and where they wrote) are repeats of one
    experiment: one leaderboard row, best first."""
    groups: dict[str, list[Run]] = {}
    for r in runs:
        key = comparable(r.config)
        groups.setdefault(key, []).append(r)
    out = [Group(sorted(g, key=lambda r: (r.seed or 0, r.name))) for g in groups.values()]
    return sorted(out, key=lambda g: (-g.mean, g.runs[0].summary.get("trainable_params", 0), g.runs[0].name))


def short_keys(keys: list[str]) -> dict[str, str]:
    """'optim.lr' -> 'lr' where the last part is unambiguous among `keys`."""
    last = [k.split(".")[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(map(str, value)) + "]"
    return str(value)


def describe(run: Run, keys: list[str], short: dict[str, str]) -> str:
    return ", ".join(f"{short[k]}={fmt_value(run.config.get(k))}" for k in keys) or "(one config)"


def fmt_seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 120 else f"{int(s // 60)} min {int(s % 60):02d} s"
