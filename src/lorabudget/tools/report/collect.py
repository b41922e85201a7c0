"""Reading what a report covers: finished run directories (found under the inputs), and Optuna studies with the
trials that have no run to show and why."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ...config import Config, recipe_settings, without_non_recipe
from ...errors import LorabudgetError, RunDirError
from ...rundir import RunDir
from ...runlock import describe_holder
from ..studies import load_study

MAX_SEARCH_DEPTH = 3  # folders searched below an input for run directories


def flatten(raw: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in raw.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@dataclass
class Run:
    path: Path
    name: str
    config: dict[str, Any]  # the run's recipe (config.recipe_settings), flattened: 'adapter.r', ...
    seed: Any
    summary: dict
    metrics: list[dict]
    trial: int | None = None  # Optuna trial number, for runs of a study

    @property
    def curve(self) -> tuple[list[int], list[float]]:
        val = [r for r in self.metrics if "val_accuracy" in r]
        return [r["step"] for r in val], [r["val_accuracy"] for r in val]

    @property
    def accuracy(self) -> float:
        """The run's one validation accuracy: that of the adapter it shipped (its best evaluation by eval.metric),
        as training measured it; what the leaderboard ranks by and the sweep's objective reads. The best
        accuracy seen on the curve is another number where eval.metric is not accuracy or min_delta is set."""
        best = self.summary.get("best", {})
        if isinstance(best.get("accuracy"), (int, float)):
            return float(best["accuracy"])
        _, acc = self.curve  # a summary without scores (an old or hand-made run): the best seen
        return max(acc) if acc else float("nan")

    @property
    def evaluations(self) -> int:
        return len(self.curve[0])

    @property
    def note(self) -> str:
        stopped = self.summary.get("stopped_by")
        if stopped == "callback":
            return f"pruned at step {self.summary.get('steps')}"
        return "stopped early" if stopped else ""


@dataclass
class Collection:
    runs: dict[Path, Run] = field(default_factory=dict)  # by resolved path: an input given twice counts once
    left_out: dict[str, str] = field(default_factory=dict)  # name -> why
    studies: list = field(default_factory=list)  # optuna Study objects
    notes: list[str] = field(default_factory=list)

    def add_run_dir(self, path: Path, trial: int | None = None) -> None:
        run = RunDir(path)
        key = path.resolve()
        if key in self.runs:
            return
        if not run.is_finished():
            writer = run.writer()
            if writer is not None:  # only what is complete is read: a running run has no summary yet
                steps = [r["step"] for r in run.read_metrics() if "val_accuracy" in r]
                where = f"last evaluated at step {steps[-1]}" if steps else "not evaluated yet"
                self.left_out[str(path)] = f"still running ({describe_holder(writer)}; {where})"
                return
            status = run.status() or {}
            why = status.get("reason") or f"state {status.get('state', 'unknown')}"
            self.left_out[str(path)] = f"not finished ({why})"
            return
        try:
            summary = run.summary()
            raw = yaml.safe_load(run.config.read_text(encoding="utf-8")) or {}
        except (LorabudgetError, OSError, yaml.YAMLError) as exc:  # a damaged file: say which, report the rest
            self.left_out[str(path)] = f"damaged ({' '.join(str(exc).split())[:200]})"
            return
        recipe, seed = recipe_of(raw if isinstance(raw, dict) else {}, summary)
        self.runs[key] = Run(path, path.name, flatten(recipe), seed, summary, run.read_metrics(), trial)


def recipe_of(raw: dict, summary: dict) -> tuple[dict, Any]:
    """(recipe, seed) of a run's config.yaml, by the one definition of a recipe (config.recipe_settings): a run
    written before a field existed trained as if it held the field's default, so it compares equal to a newer run
    that writes the default out. A config this version cannot read is compared as written."""
    try:
        cfg = Config.model_validate(raw)
    except ValueError:
        return without_non_recipe(copy.deepcopy(raw)), raw.get("seed")
    return recipe_settings(cfg, summary), cfg.seed


def _find_run_dirs(folder: Path, depth: int = 0) -> list[Path]:
    """Run directories (and sweep folders) under `folder`; a run directory's insides are not searched."""
    if (folder / "config.yaml").is_file() or (folder / "sweep.yaml").is_file():
        return [folder]
    if depth >= MAX_SEARCH_DEPTH:
        return []
    found = []
    for child in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found.extend(_find_run_dirs(child, depth + 1))
    return found


def _why_not(trial) -> str | None:
    """Why a trial has no run to report; None for COMPLETE and PRUNED ones."""
    state, a = trial.state.name, trial.user_attrs
    if state in ("COMPLETE", "PRUNED"):
        return None
    if state == "FAIL" and a.get("skipped") == "over budget":
        return f"never trained: over budget ({a.get('trainable_params', 0):,} trainable)"
    if state == "FAIL" and a.get("skipped"):
        return f"never trained: {a['skipped']}"
    if state == "FAIL":
        return a.get("error") or ("interrupted" if a.get("interrupted")
                                  else "failed: its worker stopped (killed?)")
    return state.lower()


def add_study(col: Collection, study, sweep_dir: Path | None = None) -> None:
    col.studies.append(study)
    retried = {}
    for t in study.get_trials(deepcopy=False):
        for n in t.system_attrs.get("retry_history", []):
            retried[n] = t.number
    for t in study.get_trials(deepcopy=False):
        why = _why_not(t)
        run_dir = t.user_attrs.get("run_dir")
        if why is None:
            path = Path(run_dir) if run_dir else None
            if path is not None and not path.is_dir() and sweep_dir is not None:  # the sweep folder was moved
                path = sweep_dir / "trials" / Path(run_dir).name
            if path is None or not path.is_dir():
                col.left_out[f"trial {t.number}"] = f"run dir not on this machine ({run_dir})"
            else:
                col.add_run_dir(path, t.number)
        elif t.state.name != "WAITING":
            if t.number in retried:
                why += f"; retried as trial {retried[t.number]}"
            col.left_out[f"trial {t.number}" + (f" ({Path(run_dir).name})" if run_dir else "")] = why


def collect(inputs: list[str], study_name: str | None = None) -> Collection:
    col = Collection()
    for item in inputs:
        if "://" in item:
            add_study(col, load_study(item, study_name))
            continue
        path = Path(item)
        if not path.is_dir():
            raise RunDirError(f"{item}: no such folder (give run directories, folders of them, sweep "
                              "folders, or a study's storage URL)")
        found = _find_run_dirs(path)
        if not found:
            raise RunDirError(f"{item} holds no run directory (config.yaml) and no sweep (sweep.yaml)")
        for folder in found:
            if (folder / "sweep.yaml").is_file():
                _add_sweep(col, folder, study_name)
            else:
                col.add_run_dir(folder)
    # two runs named alike (runs/a/x, runs/b/x): name them by their parent too
    names = [r.name for r in col.runs.values()]
    for r in col.runs.values():
        if names.count(r.name) > 1:
            r.name = f"{r.path.parent.name}/{r.path.name}"
    return col


def _add_sweep(col: Collection, folder: Path, study_name: str | None) -> None:
    info = yaml.safe_load((folder / "sweep.yaml").read_text(encoding="utf-8")) or {}
    storage = str(info.get("storage", ""))
    if "***" in storage:  # the URL's password is not on disk: read the runs, and say how to get the rest
        col.notes.append(f"{folder}: the study's storage needs a password; pass its URL to include the study")
    else:
        try:
            add_study(col, load_study(storage, study_name or info.get("study")), folder)
            return
        except LorabudgetError as exc:
            col.notes.append(f"{folder}: {exc}; reporting its run directories only")
    trials = folder / "trials"
    for run in sorted(trials.iterdir()) if trials.is_dir() else []:
        col.add_run_dir(run)
