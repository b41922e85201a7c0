"""One trial of a sweep: claim a slot, sample a candidate config, count it exactly (one over the budget never
trains), train it with the pruner listening to each evaluation."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ...config import Config, build_config
from ...errors import Interrupted, LorabudgetError, TrainingError
from ...rundir import RunDir
from .space import Space

WORKER = f"{socket.gethostname()}:{os.getpid()}"


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
    from ...model.build import planned_breakdown

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


    _claim_slot(ctx, trial)
    trial.set_user_attr("worker", WORKER)  # hostname:pid, to see which worker ran what
    if trial.user_attrs.get("interrupted"):  # a retry carries its original's attrs: this attempt is a new one
        trial.set_user_attr("interrupted", False)
    cfg, run = _candidate(ctx, trial)
    with run.lock(f"sweep {ctx.out} trial {trial.number}"):  # held from the check to the finished run
        run.check_new(overwrite=False)  # a trial number is new in its study: an existing dir is another study's
        return _train_trial(ctx, trial, cfg, run)


def _train_trial(ctx: SweepContext, trial, cfg: Config, run: RunDir) -> float:
    import optuna

    from ...train.recipe import train

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
            return True  # the recipe stops and finishes the run (best adapter saved, summary written)
        return False

    try:
        summary = train(cfg, run, on_ready=ready, on_evaluate=report)
    except TrainingError as exc:  # a diverged candidate (NaN loss): FAIL, and the sweep goes on
        trial.set_user_attr("error", str(exc).splitlines()[0])
        raise
    except (KeyboardInterrupt, Interrupted):
        if run.status_file.is_file():
            run.set_status("failed", reason=f"sweep interrupted (optuna trial {trial.number}); its "
                           "parameters are tried again when the sweep runs again")
        trial.set_user_attr("interrupted", True)
        raise
    trial.set_user_attr("steps", summary["steps"])
    if summary.get("stopped_by") == "callback":
        raise optuna.TrialPruned(f"pruned at step {trial.user_attrs.get('pruned_at_step')}")
    return float(summary["best"][cfg.eval.metric])
