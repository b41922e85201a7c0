"""The sweep's search space file: typed parameters on dotted config fields, a value relative to another
(`adapter.alpha` as a multiple of `adapter.r`), conditions (`head.rank` only for the low-rank head), lists as
categorical choices."""

from __future__ import annotations

import copy
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from ...config import Config, get_dotted, read_yaml, set_dotted
from ...errors import ConfigError

PARAM_TYPES = ("categorical", "int", "float", "loguniform")


def _is_config_field(key: str) -> bool:
    """True when `key` names a field of Config (or an entry of a dict field such as adapter.rank_pattern)."""
    model: type[BaseModel] = Config
    parts = key.split(".")
    for i, part in enumerate(parts):
        info = model.model_fields.get(part)
        if info is None:
            return False
        annotation = info.annotation
        if i == len(parts) - 1:
            return True
        if typing.get_origin(annotation) is dict:
            return i == len(parts) - 2  # one key inside the dict: rank_pattern.value
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return False
        model = annotation
    return True


def _label(choice: Any) -> Any:
    """Optuna's categorical choices must be None, bool, int, float or str: a list (target modules, layers) is
    stored as its YAML flow text, '[query, value]', which reads well in plots and maps back one to one."""
    if isinstance(choice, (list, dict)):
        return yaml.safe_dump(choice, default_flow_style=True, width=10_000).strip()
    return choice


@dataclass(frozen=True)
class Param:
    key: str  # the dotted config field it sets, e.g. 'adapter.r'
    type: str  # categorical | int | float (loguniform is float with log=True)
    choices: tuple = ()
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    per: str | None = None  # the sampled number multiplies this field's value (alpha per r)
    when: dict = field(default_factory=dict)  # field -> allowed values: sampled only when all hold

    @property
    def name(self) -> str:
        """The Optuna parameter name: the field, or 'adapter.alpha/adapter.r' for a relative value, so that
        importances and plots say what was actually sampled."""
        return f"{self.key}/{self.per}" if self.per else self.key

    def active(self, raw: dict) -> bool:
        return all(get_dotted(raw, k) in allowed for k, allowed in self.when.items())

    def suggest(self, trial, raw: dict) -> Any:
        """The value this trial gives the config field."""
        if self.type == "categorical":
            labels = [_label(c) for c in self.choices]
            value = self.choices[labels.index(trial.suggest_categorical(self.name, labels))]
        elif self.type == "int":
            value = trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1),
                                      log=self.log)
        else:
            value = trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)
        if self.per:
            value = value * get_dotted(raw, self.per)
        return value

    def grid_values(self) -> list:
        if self.type == "categorical":
            return [_label(c) for c in self.choices]
        if self.step is None:
            raise ConfigError(f"--sampler grid needs a finite set of values: give {self.key} `choices` or a "
                              "`step`")
        n = math.floor((self.high - self.low) / self.step + 1e-9) + 1
        values = [self.low + i * self.step for i in range(n)]
        return [int(v) for v in values] if self.type == "int" else [round(v, 12) for v in values]

    def from_config(self, raw: dict) -> Any:
        """The Optuna value that reproduces this config's field (for --enqueue)."""
        value = get_dotted(raw, self.key)
        if self.per:
            base = get_dotted(raw, self.per)
            if not base:
                raise ConfigError(f"{self.key} is relative to {self.per}, which the config does not set")
            value = value / base
            if float(value).is_integer():
                value = int(value)
        if self.type == "categorical":
            for choice in self.choices:
                if choice == value:
                    return _label(choice)
            raise ConfigError(f"{self.name}={value!r} is not among the space's choices {list(self.choices)}; "
                              "add it to the space to enqueue this config")
        return value


def _parse_param(key: str, spec: Any, origin: str) -> Param:
    where = f"{origin}: {key}"
    if not _is_config_field(key):
        raise ConfigError(f"{where}: not a config field (see `lorabudget config --fields`)")
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a mapping such as {{type: categorical, choices: [4, 8]}}")
    unknown = set(spec) - {"type", "choices", "low", "high", "step", "log", "per", "when"}
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
    kind = spec.get("type", "categorical" if "choices" in spec else None)
    if kind not in PARAM_TYPES:
        raise ConfigError(f"{where}: type must be one of {', '.join(PARAM_TYPES)}, got {kind!r}")
    when = {}
    for cond_key, allowed in (spec.get("when") or {}).items():
        if not _is_config_field(cond_key):
            raise ConfigError(f"{where}: condition on {cond_key!r}, which is not a config field")
        when[cond_key] = tuple(allowed) if isinstance(allowed, list) else (allowed,)
    per = spec.get("per")
    if per is not None and not _is_config_field(per):
        raise ConfigError(f"{where}: per {per!r} is not a config field")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: a categorical parameter needs a non-empty list of choices")
        if key == "adapter.layers":  # 'all' and null both mean every layer: one choice, as the config reads it
            choices = [None if c == "all" else c for c in choices]
        labels = [_label(c) for c in choices]
        if len(set(map(repr, labels))) != len(labels):
            raise ConfigError(f"{where}: choices repeat")
        return Param(key, kind, choices=tuple(choices), per=per, when=when)
    try:
        low, high = float(spec["low"]), float(spec["high"])
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"{where}: a {kind} parameter needs numeric `low` and `high`") from None
    log = bool(spec.get("log", False)) or kind == "loguniform"
    step = spec.get("step")
    if low > high or (log and low <= 0):
        raise ConfigError(f"{where}: needs low <= high" + (" and low > 0 for a log scale" if log else ""))
    if step is not None and (log or float(step) <= 0):
        raise ConfigError(f"{where}: step must be > 0 and cannot be combined with a log scale")
    return Param(key, "int" if kind == "int" else "float", low=low, high=high,
                 step=None if step is None else float(step), log=log, per=per, when=when)


@dataclass
class Space:
    params: list[Param]
    raw: dict  # the file's `params` mapping, kept to recognise the study's space on a rerun

    @classmethod
    def parse(cls, raw: Any, origin: str = "space") -> Space:
        if not isinstance(raw, dict) or not isinstance(raw.get("params"), dict) or not raw["params"]:
            raise ConfigError(f"{origin}: expected a mapping `params:` of dotted config fields to parameter "
                              "specs")
        params = [_parse_param(str(k), v, origin) for k, v in raw["params"].items()]
        seen = set()
        for p in params:  # a condition or a relative value can only read what is already decided
            for dep in [*p.when, *([p.per] if p.per else [])]:
                later = [q.key for q in params if q.key == dep and q.key not in seen]
                if later:
                    raise ConfigError(f"{origin}: {p.key} depends on {dep}, which is sampled after it; list "
                                      f"{dep} first")
            seen.add(p.key)
        return cls(params, raw["params"])

    @classmethod
    def load(cls, path: str | Path) -> Space:
        return cls.parse(read_yaml(path), str(path))

    def sample(self, trial, base_raw: dict) -> dict:
        """The base config with this trial's values, set in file order so that conditions see earlier ones."""
        raw = copy.deepcopy(base_raw)
        for p in self.params:
            if p.active(raw):
                set_dotted(raw, p.key, p.suggest(trial, raw))
        return raw

    def grid(self) -> dict[str, list]:
        return {p.name: p.grid_values() for p in self.params}

    def params_of(self, raw: dict) -> dict[str, Any]:
        """The Optuna parameters that reproduce a config (for --enqueue)."""
        return {p.name: p.from_config(raw) for p in self.params if p.active(raw)}
