"""Experiment trackers (`logging.trackers`) through accelerate's tracker interface: each gets the run's config
at the start (dotted keys: `adapter.r`), every metrics record (train_loss, lr, val_*), and the summary's
headline numbers at the end (best_*, final_*, trainable_params, train_seconds). Where each one writes:

    tensorboard   RUN/tensorboard/<logging.project>/
    mlflow        MLFLOW_TRACKING_URI when set, else an SQLite store in RUN/mlflow/ (MLflow 3 refuses the old
                  file store): experiment `logging.project`, a run named after the run directory
    wandb         RUN/wandb/, offline unless WANDB_MODE is set: project `logging.project`, a run named after the
                  run directory (`wandb sync RUN/wandb/offline-run-*` uploads it later)

Only the main process logs. A tracker whose package is missing is a ConfigError naming the pip install, raised
before the run directory is touched.
"""

from __future__ import annotations

import importlib
import json
import os
import time

from accelerate.tracking import GeneralTracker, on_main_process
from pydantic import BaseModel

from ..config import Config
from ..errors import ConfigError
from ..rundir import RunDir

# The module each tracker needs; the extra of the same name installs it (`pip install lorabudget[mlflow]`).
PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}
SUMMARY_KEYS = ("trainable_params", "train_seconds", "train_samples_per_s", "steps")


def check_installed(trackers: list[str]) -> None:
    for name in trackers:
        try:
            importlib.import_module(PACKAGES[name])
        except ImportError as exc:
            raise ConfigError(f"logging.trackers names {name!r}, but its package cannot be imported ({exc}); install "
                              f"it with `pip install lorabudget[{name}]` (or `pip install {PACKAGES[name]}`), or "
                              f"remove {name!r} from logging.trackers") from None


def run_name(run: RunDir) -> str:
    return run.path.resolve().name


def accelerator_kwargs(cfg: Config, run: RunDir | None) -> dict:
    """`Accelerator(...)` arguments for the configured trackers (none without a run directory), after checking
    that their packages import."""
    trackers = cfg.logging.trackers
    if not trackers or run is None:
        return {}
    check_installed(trackers)
    kwargs = {"log_with": [mlflow_tracker(cfg, run) if name == "mlflow" else name for name in trackers]}
    if "tensorboard" in trackers:
        kwargs["project_dir"] = str(run.path / "tensorboard")
    return kwargs


def mlflow_tracker(cfg: Config, run: RunDir) -> MLflowStoreTracker:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return MLflowStoreTracker(uri, cfg.logging.project, run_name(run))
    store = run.path.resolve() / "mlflow"
    return MLflowStoreTracker(f"sqlite:///{store / 'mlflow.db'}", cfg.logging.project, run_name(run),
                              artifact_location=(store / "artifacts").as_uri())


def wandb_kwargs(run: RunDir) -> dict:
    """wandb.init's arguments: offline unless WANDB_MODE says otherwise (a run never needs a login or the network
    to start); `finish_previous`, so a sweep's next trial never logs into a failed trial's run."""
    kwargs = {"name": run_name(run), "dir": str(run.path), "reinit": "finish_previous"}
    if not os.environ.get("WANDB_MODE"):
        kwargs["mode"] = "offline"
    return kwargs


def flat_config(section: BaseModel, prefix: str = "") -> dict:
    """The config as dotted keys (`adapter.r`) with values every tracker takes: bool, int, float or str (None,
    lists and mappings as their JSON)."""
    out = {}
    for name in type(section).model_fields:
        value, key = getattr(section, name), prefix + name
        if isinstance(value, BaseModel):
            out.update(flat_config(value, key + "."))
        elif isinstance(value, (bool, int, float, str)):
            out[key] = value
        else:
            out[key] = json.dumps(value, default=str)
    return out


def start_trackers(acc, cfg: Config, run: RunDir) -> None:
    """After the run directory is set up (a new run's folder is cleared first)."""
    acc.init_trackers(cfg.logging.project, config=flat_config(cfg), init_kwargs={"wandb": wandb_kwargs(run)})


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def summary_metrics(summary: dict) -> dict:
    """The summary's numbers a tracker shows at the end: best_accuracy, final_accuracy, ..., trainable_params."""
    out = {f"{part}_{k}": v for part in ("best", "final") for k, v in summary.get(part, {}).items() if _number(v)}
    out.update({k: summary[k] for k in SUMMARY_KEYS if _number(summary.get(k))})
    return out


def finish_trackers(acc, summary: dict) -> None:
    """Log the summary (the main process holds it; the others have no trackers) and close every tracker."""
    if summary:
        acc.log(summary_metrics(summary), step=summary["steps"])
    acc.end_training()


class MLflowStoreTracker(GeneralTracker):
    """MLflow through an `MlflowClient` bound to one tracking URI, not mlflow's process-wide tracking URI and active
    run (as accelerate's own MLflowTracker uses): runs one after another in a process (a sweep's trials, tests)
    each log to their own store, and a trial that failed without ending its run does not block the next."""

    name = "mlflow"
    requires_logging_directory = False

    def __init__(self, tracking_uri: str, experiment: str, run_name: str, artifact_location: str | None = None):
        super().__init__()
        self.tracking_uri, self.experiment, self.run_name = tracking_uri, experiment, run_name
        self.artifact_location = artifact_location
        self.client = self.run_id = None

    @property
    def tracker(self):
        return self.client

    @on_main_process
    def start(self) -> None:
        from mlflow.tracking import MlflowClient
        from mlflow.tracking._tracking_service.utils import _tracking_store_registry

        # mlflow keeps one store (and its database connection) per URI for the life of the process: a run dir
        # replaced with --overwrite in the same process (a notebook, a test) would log through a connection to
        # the deleted database ("attempt to write a readonly database"). A fresh store per run costs milliseconds.
        _tracking_store_registry._get_store_with_resolved_uri.cache_clear()
        try:  # and one SQLAlchemy engine per database URI (private in mlflow 3; harmless where it is absent)
            from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

            engine = SqlAlchemyStore._engine_map.pop(self.tracking_uri, None)
            if engine is not None:
                engine.dispose()
        except (ImportError, AttributeError):
            pass
        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        run = self.client.create_run(self._experiment_id(), run_name=self.run_name)
        self.run_id = run.info.run_id

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(self.experiment, artifact_location=self.artifact_location)
        except MlflowException:  # created meanwhile by another process logging to the same store
            found = self.client.get_experiment_by_name(self.experiment)
            if found is None:
                raise
            return found.experiment_id

    @on_main_process
    def store_init_configuration(self, values: dict) -> None:
        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

        params = [Param(k, str(v)[:MAX_PARAM_VAL_LENGTH]) for k, v in values.items()]
        for i in range(0, len(params), MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, params=params[i:i + MAX_PARAMS_TAGS_PER_BATCH])

    @on_main_process
    def log(self, values: dict, step: int | None = None, **kwargs) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step or 0) for k, v in values.items() if _number(v)]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    @on_main_process
    def finish(self) -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, "FINISHED")
