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
        return [r.accuracy for r in self.runs]

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


def colourings(runs: list[Run], keys: list[str]) -> list[list[str]]:
    """The varied keys, grouped so that each group is one curve figure: keys that split the runs alike (each
    run's value of one tells its value of the other) would draw the same lines in the same colours, with only the
    legend's words changed, so they share a figure (two runs differ in every varied key: one figure). A group of
    more than ten values is split again, one figure per key: a legend of that many rows tells nothing apart."""
    splits: dict[frozenset, list[str]] = {}
    for k in keys:
        parts: dict[str, set[int]] = {}
        for i, r in enumerate(runs):
            parts.setdefault(comparable(r.config.get(k)), set()).add(i)
        splits.setdefault(frozenset(frozenset(p) for p in parts.values()), []).append(k)
    out = []
    for split, group in splits.items():
        out += [group] if len(split) <= 10 else [[k] for k in group]
    return out


def fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(map(str, value)) + "]"
    return str(value)


def describe(run: Run, keys: list[str]) -> str:
    """The run's values of the varied settings, each by its full name ('adapter.r' and 'head.rank', never 'r' and
    'rank', which read alike)."""
    return ", ".join(f"{k}={fmt_value(run.config.get(k))}" for k in keys) or "(one config)"


def fmt_seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 120 else f"{int(s // 60)} min {int(s % 60):02d} s"
