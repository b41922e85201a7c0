"""`lorabudget sweep`, the study and its loop: an Optuna study over configs, each candidate counted against the
budget first.

    base config (+ --set, --data)  +  search space (YAML)  ->  Optuna study (SQLite in OUT/study.db, or any
    SQLAlchemy URL)  ->  one run directory per trial, OUT/trials/trial-0007/

What Optuna does, Optuna does: sampling (TPE, grid, random), pruning (MedianPruner, fed through the training recipe's
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
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ...config import Config, build_config, read_yaml, recipe_settings
from ...errors import ConfigError, TrainingError
from ...rundir import atomic_write_text
from ..studies import default_storage, open_storage, quiet_optuna, safe_url
from .space import Space
from .trial import Skipped, Surplus, SweepContext, objective

SAMPLERS = ("tpe", "grid", "random")
PRUNERS = ("median", "none")
MAX_SKIPPED_IN_A_ROW = 50  # candidates skipped one after another: the space lies mostly outside the budget


def _comparable(base: Config) -> dict:
    """What a study fixes: the recipe its trials vary (config.recipe: not where runs write or the data file lies,
    which may differ between workers' machines) and the seed they train with."""
    return json.loads(json.dumps({**recipe_settings(base), "seed": base.seed}))


# Recorded by studies begun before speed.processes left the recipe (config/recipe.py): trials train in one
# process whatever it says, so a difference there is none.
NOT_COMPARED = {"base_config: speed.processes"}


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
    diffs = [f"{k}: {d}" for k in mine for d in _diff(attrs.get(k), mine[k])
             if f"{k}: {d}" not in NOT_COMPARED]
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
    from ...data import load_source

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
    from ...runtime.prefix import shared_between_runs

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
    # Trials share the frozen layers' states when they cache the same ones (token ids are cached on disk).
    with shared_between_runs():
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
