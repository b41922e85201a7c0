"""`lorabudget sweep`: an Optuna study over configs, each candidate counted against the budget first.

    base config (+ --set, --data)  +  search space (YAML)  ->  Optuna study (SQLite in OUT/study.db, or any
    SQLAlchemy URL)  ->  one run directory per trial, OUT/trials/trial-0007/

What Optuna does, Optuna does: sampling (TPE, grid, random), pruning (MedianPruner, fed through the engine's
`on_evaluate` hook), storage, heartbeats and the retry of a trial whose worker died. What this module adds:

- the space file: typed parameters on dotted config fields, a value relative to another (`adapter.alpha` as a
  multiple of `adapter.r`), conditions (`head.rank` only for the low-rank head), lists as categorical choices;
- the budget: every candidate is counted exactly on the meta device (`planned_breakdown`) before it may train.
  One over budget is marked FAIL with `skipped` in its user attrs: it never trains, has no run dir and does
  not count towards `--trials`. (Optuna's constraints only cover trials that COMPLETE, and a completed trial
  would count, so they do not fit here);
- `--trials N` is the study's total of COMPLETE + PRUNED trials, shared by every worker and by every rerun: a
  sweep that is run again after a kill continues to N, and two workers on one database stop at N together.
"""

from __future__ import annotations

import copy
import json
import math
import os
import socket
import time
import typing
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from .config import Config, build_config, read_yaml
from .errors import ConfigError, LorabudgetError, TrainingError
from .rundir import RunDir, atomic_write_text

SAMPLERS = ("tpe", "grid", "random")
PRUNERS = ("median", "none")
PARAM_TYPES = ("categorical", "int", "float", "loguniform")
MAX_SKIPPED_IN_A_ROW = 50  # candidates skipped one after another: the space lies mostly outside the budget
# Fields that say where a run goes and how it logs, not what it learns: they may differ between workers.
NOT_HYPERPARAMETERS = ("output_dir", "logging", "data.source")
WORKER = f"{socket.gethostname()}:{os.getpid()}"


# ---- the search space --------------------------------------------------------------------------------------

def get_dotted(raw: dict, key: str, default: Any = None) -> Any:
    node: Any = raw
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def set_dotted(raw: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


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


# ---- the study ---------------------------------------------------------------------------------------------

def quiet_optuna():
    """Optuna logs every caught failure with a traceback, and warns that heartbeats and retries are
    experimental; the sweep prints one line per trial instead."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def default_storage(out: Path) -> str:
    return f"sqlite:///{(out / 'study.db').resolve()}"


def _on_stale_trial(study, trial) -> None:
    """A worker stopped heartbeating mid-trial (killed, machine lost): Optuna has marked the trial FAIL. Say
    so in its run dir, where this machine can see it, and queue the same parameters once more."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    run_dir = trial.user_attrs.get("run_dir")
    if run_dir and RunDir(run_dir).status_file.is_file() and not RunDir(run_dir).is_finished():
        RunDir(run_dir).set_status("failed", reason="the sweep worker stopped heartbeating during this trial "
                                   f"(optuna trial {trial.number}); its parameters are tried once more")
    RetryHeartbeatStaleTrialCallback(max_retry=1)(study, trial)


def with_driver(url: str) -> str:
    """'postgresql://' means psycopg2 to SQLAlchemy; the `postgres` extra installs psycopg 3, so use it when
    psycopg2 is absent rather than fail on a missing module."""
    import importlib.util

    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix) and importlib.util.find_spec("psycopg2") is None \
                and importlib.util.find_spec("psycopg") is not None:
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def open_storage(url: str, heartbeat: int):
    """RDBStorage with heartbeats, so that a killed worker's trial is found stale and retried once."""
    import sqlalchemy.exc
    from optuna.storages import RDBStorage

    url = with_driver(url)
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(3):
        try:
            return RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=heartbeat,
                              grace_period=2 * heartbeat, heartbeat_stale_trial_callback=_on_stale_trial)
        except sqlalchemy.exc.OperationalError as exc:
            raise ConfigError(f"cannot open the study storage {safe_url(url)}: {exc.orig}") from None
        except sqlalchemy.exc.SQLAlchemyError:
            # two workers starting together may both create the tables; the loser finds them on a second try
            if attempt == 2:
                raise
            time.sleep(1.0 + attempt)


def safe_url(url: str) -> str:
    import sqlalchemy.exc
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:  # not a URL SQLAlchemy can parse: show it as given
        return url


def _comparable(base: Config) -> dict:
    raw = json.loads(json.dumps(base.model_dump(mode="json")))
    for key in NOT_HYPERPARAMETERS:
        parts = key.split(".")
        parent = get_dotted(raw, ".".join(parts[:-1])) if len(parts) > 1 else raw
        if isinstance(parent, dict):
            parent.pop(parts[-1], None)
    return raw


def _diff(stored: Any, mine: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ. A key only `mine` has is a field added by a newer lorabudget since the
    study began: it takes its default, and is no difference."""
    if isinstance(stored, dict) and isinstance(mine, dict):
        return [d for k in sorted(stored) for d in _diff(stored[k], mine.get(k), f"{prefix}{k}.")]
    return [] if stored == mine else [prefix.rstrip(".")]


def _check_same_study(study, base: Config, space: Space) -> None:
    """A rerun (or another worker) must search the same space from the same base, or the trials mix."""
    mine = {"base_config": _comparable(base), "space": json.loads(json.dumps(space.raw))}
    attrs = study.user_attrs
    if "space" not in attrs:
        for key, value in mine.items():
            study.set_user_attr(key, value)
        return
    diffs = [f"{k}: {d}" for k in mine for d in _diff(attrs.get(k), mine[k])]
    if diffs:
        raise ConfigError(f"study {study.study_name!r} was started with another base config or space "
                          f"(differs at {', '.join(diffs[:6])}); choose another --study or --out to start a "
                          "new one")


def make_sampler(kind: str, space: Space, seed: int | None):
    import optuna

    if kind == "grid":
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def make_pruner(kind):
    """'median' or 'none'; an Optuna pruner object is used as it is (the Python API, tests)."""
    import optuna

    if isinstance(kind, optuna.pruners.BasePruner):
        return kind
    # Prune a trial whose validation score is below the median of earlier trials at the same step, once five
    # trials have finished (before that the median says little).
    return optuna.pruners.MedianPruner(n_startup_trials=5) if kind == "median" else optuna.pruners.NopPruner()


# ---- one trial ---------------------------------------------------------------------------------------------

class Skipped(Exception):
    """A candidate that must not train (over budget, or an invalid config): its trial ends FAIL, uncounted."""


class Surplus(Exception):
    """Another worker claimed the last slot at the same moment: this trial ends FAIL, untrained, uncounted."""


@dataclass
class SweepContext:
    base_raw: dict
    space: Space
    out: Path
    trials: int
    num_labels: int
    metric: str
    status: Callable[[str], None]  # a one-line progress note (the bar's postfix)
    counts: dict = field(default_factory=dict)  # (model, adapter, head) -> exact trainable count


def _trainable(ctx: SweepContext, cfg: Config) -> int:
    """Exact count on the meta device; cached, since many candidates share an adapter and head."""
    from .pipeline import planned_breakdown

    key = json.dumps([cfg.model.name, cfg.adapter.model_dump(mode="json"), cfg.head.model_dump(mode="json")])
    if key not in ctx.counts:
        ctx.counts[key] = planned_breakdown(cfg, ctx.num_labels).total
    return ctx.counts[key]


def _skip(trial, why: str) -> Skipped:
    trial.set_user_attr("skipped", why)
    return Skipped(why)


def _claim_slot(ctx: SweepContext, trial) -> None:
    """Two workers may both see N-1 trials claimed and both start one. Trial numbers are unique and ordered,
    so the one with the higher number steps back, before it samples or trains anything."""
    from optuna.trial import TrialState

    claimed = trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED,
                                                             TrialState.RUNNING))
    if sum(t.number < trial.number for t in claimed) >= ctx.trials:
        trial.set_user_attr("skipped", "surplus: the study had its trials already")
        raise Surplus()


def _candidate(ctx: SweepContext, trial) -> tuple[Config, RunDir]:
    raw = ctx.space.sample(trial, ctx.base_raw)
    run = RunDir(ctx.out / "trials" / f"trial-{trial.number:04d}")
    raw["output_dir"] = str(run.path.resolve())
    raw.setdefault("logging", {})["progress"] = False  # the sweep's own bar shows progress
    try:
        cfg = build_config(raw, origin=f"trial {trial.number}")
        count = _trainable(ctx, cfg)
    except LorabudgetError as exc:  # an invalid combination, a layer the model lacks: this candidate only
        raise _skip(trial, "invalid: " + " ".join(str(exc).split())[:300]) from None
    trial.set_user_attr("trainable_params", count)
    if count > cfg.budget:
        raise _skip(trial, "over budget")
    return cfg, run


def objective(ctx: SweepContext, trial) -> float:
    import optuna

    from .engine import train

    _claim_slot(ctx, trial)
    trial.set_user_attr("worker", WORKER)  # hostname:pid, to see which worker ran what
    if trial.user_attrs.get("interrupted"):  # a retry carries its original's attrs: this attempt is a new one
        trial.set_user_attr("interrupted", False)
    cfg, run = _candidate(ctx, trial)
    run.check_new(overwrite=False)  # a trial number is new in its study: an existing dir is another study's
    trial.set_user_attr("run_dir", str(run.path.resolve()))
    total = {}

    def ready(recipe) -> None:
        total["steps"] = recipe.total_steps

    def report(step: int, scores: dict) -> bool:
        # The pruner compares this trial's score with earlier trials' scores at the same step.
        value = scores[ctx.metric]
        trial.report(value, step)
        ctx.status(f"trial {trial.number}: step {step}/{total.get('steps', '?')} {ctx.metric} {value:.4f}")
        if trial.should_prune():
            trial.set_user_attr("pruned_at_step", step)
            return True  # the engine stops and finishes the run (best adapter saved, summary written)
        return False

    try:
        summary = train(cfg, run, on_ready=ready, on_evaluate=report)
    except TrainingError as exc:  # a diverged candidate (NaN loss): FAIL, and the sweep goes on
        trial.set_user_attr("error", str(exc).splitlines()[0])
        raise
    except KeyboardInterrupt:
        if run.status_file.is_file():
            run.set_status("failed", reason=f"sweep interrupted (optuna trial {trial.number}); its "
                           "parameters are tried again when the sweep runs again")
        trial.set_user_attr("interrupted", True)
        raise
    trial.set_user_attr("steps", summary["steps"])
    if summary.get("stopped_by") == "callback":
        raise optuna.TrialPruned(f"pruned at step {trial.user_attrs.get('pruned_at_step')}")
    return float(summary["best"][cfg.eval.metric])


# ---- the loop ----------------------------------------------------------------------------------------------

def short_name(param: str) -> str:
    """'adapter.alpha/adapter.r' -> 'alpha/r', 'optim.lr' -> 'lr': enough to read a one-line trial summary."""
    return "/".join(part.split(".")[-1] for part in param.split("/"))


def _params_text(params: dict) -> str:
    return " ".join(f"{short_name(k)}={_short(v)}" for k, v in params.items())


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value).replace(" ", "")


def _describe(trial) -> str:
    state = trial.state.name
    a = trial.user_attrs
    if state == "COMPLETE":
        what = f"value {trial.value:.4f}, {a.get('trainable_params', 0):,} trainable"
    elif state == "PRUNED":
        what = f"pruned at step {a.get('pruned_at_step')}"
    elif a.get("skipped"):
        state, what = "skipped", a["skipped"] + (f" ({a['trainable_params']:,} trainable)"
                                                 if a.get("skipped") == "over budget" else "")
    else:
        what = a.get("error") or ("interrupted" if a.get("interrupted") else "failed")
    return f"trial {trial.number:>4}  {state:<8} {what}  {_params_text(trial.params)}"


@dataclass
class SweepResult:
    study_name: str
    storage: str
    out: Path
    done: int  # COMPLETE + PRUNED
    best: dict | None  # number, value, params, run_dir of the best trial
    skipped: int
    failed: int


def _counts(study) -> dict[str, int]:
    from collections import Counter

    return Counter(t.state.name for t in study.get_trials(deepcopy=False))


def _done(counts: dict[str, int]) -> int:
    return counts.get("COMPLETE", 0) + counts.get("PRUNED", 0)


def _retry_interrupted(study, number: int | None) -> None:
    """Ctrl+C ends the trial FAIL (Optuna does that); heartbeats only retry trials of dead workers, so an
    interrupted trial is queued for the next run here."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState

    if number is None:
        return
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if t.number == number and t.user_attrs.get("interrupted"):
            RetryHeartbeatStaleTrialCallback(max_retry=1)(study, t)


def _enqueue(study, space: Space, base_raw: dict, paths: list[str]) -> list[str]:
    """Seed the study with configs (a `lorabudget plan --write` candidate, say): each becomes a waiting trial
    with the space's parameters read from it; values the space does not search are ignored. Enqueuing the same
    config twice (rerunning the command) adds it once."""
    notes = []
    for path in paths:
        raw = copy.deepcopy(base_raw)
        _deep_update(raw, read_yaml(path))
        try:
            # validated first, so a field reads as the config means it (`layers: all` is every layer, None)
            raw = build_config(raw, origin=str(path)).model_dump(mode="json")
            params = space.params_of(raw)
        except ConfigError as exc:
            raise ConfigError(f"--enqueue {path}: {exc}") from None
        study.enqueue_trial(params, user_attrs={"enqueued_from": str(path)}, skip_if_exists=True)
        notes.append(f"enqueued  {path}: {_params_text(params)}")
    return notes


def _deep_update(raw: dict, update: dict) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            _deep_update(raw[key], value)
        else:
            raw[key] = value


def _num_labels(cfg: Config) -> int:
    """The head's size enters the count; the data says how many classes there are (read once per sweep)."""
    if cfg.data.label_names:
        return len(cfg.data.label_names)
    from .data import load_source

    return len(load_source(cfg.data).labels.names)


def write_sweep_file(out: Path, study_name: str, storage: str, sampler: str, pruner: str, trials: int,
                     metric: str, space_path: str | None) -> None:
    """OUT/sweep.yaml: where the study lives, so that `lorabudget report OUT` finds it."""
    info = {"study": study_name, "storage": safe_url(storage), "sampler": sampler, "pruner": pruner,
            "trials": trials, "metric": metric, "space": str(space_path) if space_path else None}
    atomic_write_text(out / "sweep.yaml", yaml.safe_dump(info, sort_keys=False))


def open_study(base: Config, space: Space, out: Path, storage: str, study_name: str, sampler: str,
               pruner: Any, sampler_seed: int | None, heartbeat: int):
    """Create the study, or load it to continue: same name, same base config, same space."""
    import optuna

    direction = "minimize" if base.eval.metric == "loss" else "maximize"
    study = optuna.create_study(storage=open_storage(storage, heartbeat), study_name=study_name,
                                direction=direction, sampler=make_sampler(sampler, space, sampler_seed),
                                pruner=make_pruner(pruner), load_if_exists=True)
    _check_same_study(study, base, space)
    if sampler_seed is not None and study.trials:
        # A rerun with the same seed would replay the first run's samples: offset it by the trials so far.
        study.sampler = make_sampler(sampler, space, sampler_seed + len(study.trials))
    return study


def _next_step(study, trials: int, grid: Space | None) -> str:
    """'done', 'wait' (the last trials run elsewhere: one may die and come back here) or 'run' one more."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental API
        optuna.storages.fail_stale_trials(study)  # a dead worker's trial -> FAIL, queued once more
    counts = _counts(study)
    if _done(counts) >= trials:
        return "done"
    if grid is not None and not counts.get("WAITING") and _grid_points_left(study, grid) == 0:
        return "wait" if counts.get("RUNNING") else "done"
    if _done(counts) + counts.get("RUNNING", 0) >= trials:
        return "wait"
    return "run"


def run_sweep(base: Config, space: Space, out: str | Path, trials: int, *, storage: str | None = None,
              study_name: str | None = None, sampler: str = "tpe", pruner: Any = "median",
              sampler_seed: int | None = None, heartbeat: int = 60, enqueue: tuple[str, ...] = (),
              space_path: str | None = None, progress: bool = True,
              log: Callable[[str], None] = print) -> SweepResult:
    """Run (or continue) the study until it holds `trials` COMPLETE or PRUNED trials (or a grid is done)."""
    from tqdm.auto import tqdm

    if trials < 1:
        raise ConfigError("--trials must be at least 1")
    if heartbeat < 1:
        raise ConfigError("--heartbeat must be at least 1 second")
    if sampler not in SAMPLERS or (isinstance(pruner, str) and pruner not in PRUNERS):
        raise ConfigError(f"--sampler is one of {SAMPLERS}, --pruner one of {PRUNERS}")
    quiet_optuna()
    num_labels = _num_labels(base)  # reads the data: a missing file fails here, before a study is created
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    study_name = study_name or out.resolve().name
    storage = storage or default_storage(out)
    study = open_study(base, space, out, storage, study_name, sampler, pruner, sampler_seed, heartbeat)
    write_sweep_file(out, study_name, storage, sampler, type(study.pruner).__name__, trials, base.eval.metric,
                     space_path)
    base_raw = base.model_dump(mode="json")
    for note in _enqueue(study, space, base_raw, list(enqueue)):
        log(note)
    done = _done(_counts(study))
    log(f"study     {study_name} in {safe_url(storage)}: {done} of {trials} trials done, {sampler} sampler, "
        f"{type(study.pruner).__name__}, {study.direction.name.lower()} validation {base.eval.metric}")

    bar = tqdm(total=trials, initial=min(done, trials), desc="sweep", unit="trial", disable=not progress,
               dynamic_ncols=True)

    def say(text: str) -> None:
        (bar.write if progress else log)(text)

    def announce(study, trial) -> None:  # Optuna calls it after each trial
        bar.set_postfix_str("", refresh=False)
        say(_describe(trial))
        bar.n = min(_done(_counts(study)), trials)
        bar.refresh()

    ctx = SweepContext(base_raw, space, out, trials, num_labels, base.eval.metric,
                       status=lambda text: bar.set_postfix_str(text, refresh=True))
    current: dict[str, int | None] = {"number": None}  # the trial in progress, for Ctrl+C

    def tracked(trial) -> float:
        current["number"] = trial.number
        return objective(ctx, trial)

    skipped_in_a_row, waiting = 0, False
    try:
        while (step := _next_step(study, trials, space if sampler == "grid" else None)) != "done":
            if step == "wait":
                if not waiting:
                    say("waiting   for the last running trial(s): other workers', or a killed one's (found "
                        f"stale after {2 * heartbeat} s, then retried)")
                waiting = True
                time.sleep(min(2.0, heartbeat / 2))
                continue
            waiting, current["number"] = False, None
            before = _counts(study).get("FAIL", 0)
            study.optimize(tracked, n_trials=1, catch=(Skipped, Surplus, TrainingError), callbacks=[announce],
                           gc_after_trial=True)
            skipped_in_a_row = skipped_in_a_row + 1 if _counts(study).get("FAIL", 0) > before else 0
            if skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW:
                raise ConfigError(f"the last {MAX_SKIPPED_IN_A_ROW} candidates were all skipped or failed "
                                  "(see above): most of the space is over the budget or invalid; narrow it")
    except KeyboardInterrupt:
        _retry_interrupted(study, current["number"])
        raise
    finally:
        bar.close()
    if sampler == "grid" and _done(_counts(study)) < trials:
        log(f"grid      exhausted: all {_grid_size(space)} points were tried")
    return _result(study, storage, out)


def _grid_size(space: Space) -> int:
    return math.prod(len(values) for values in space.grid().values())


def _grid_points_left(study, space: Space) -> int:
    """Grid points no trial has started. GridSampler would re-run a finished point rather than stop when asked
    for one more, so the loop must not ask."""
    started = {t.system_attrs["grid_id"] for t in study.get_trials(deepcopy=False)
               if "grid_id" in t.system_attrs and t.state.name != "WAITING"}
    return _grid_size(space) - len(started)


def _result(study, storage: str, out: Path) -> SweepResult:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    best = None
    if any(t.state == TrialState.COMPLETE for t in trials):
        t = study.best_trial
        attrs = t.user_attrs
        best = {"number": t.number, "value": t.value, "params": t.params, "run_dir": attrs.get("run_dir"),
                "trainable_params": attrs.get("trainable_params")}
    fails = [t for t in trials if t.state == TrialState.FAIL]
    skipped = sum(1 for t in fails if t.user_attrs.get("skipped"))
    done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    return SweepResult(study.study_name, storage, out, done, best, skipped, len(fails) - skipped)
