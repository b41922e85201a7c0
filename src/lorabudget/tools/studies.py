"""Where Optuna studies live: opening a storage (SQLite file or any SQLAlchemy URL, with heartbeats so a killed
worker's trial is retried once), showing its URL without the password, and loading a study to report on it.
Shared by `sweep`, which writes studies, and `report`, which reads them."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

from ..errors import ConfigError, LorabudgetError
from ..rundir import RunDir


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


def load_study(storage: str, study_name: str | None = None):
    import optuna
    import sqlalchemy.exc
    from sqlalchemy.engine import make_url

    quiet_optuna()
    url = with_driver(storage)
    try:
        database = make_url(url).database
    except sqlalchemy.exc.ArgumentError:
        raise LorabudgetError(f"{storage!r} is not a database URL") from None
    if url.startswith("sqlite") and database and not Path(database).is_file():
        # SQLite would create an empty database for a mistyped path; a report only reads
        raise LorabudgetError(f"no study database at {database}")
    try:
        names = optuna.get_all_study_names(url)
    except (sqlalchemy.exc.SQLAlchemyError, ImportError) as exc:  # unreachable server, missing driver
        raise LorabudgetError(f"cannot read studies from {safe_url(storage)}: {exc}") from None
    if study_name is None:
        if len(names) != 1:
            raise LorabudgetError(f"{safe_url(storage)} holds {len(names)} studies "
                                  f"({', '.join(names) or 'none'}); name one with --study")
        study_name = names[0]
    if study_name not in names:
        raise LorabudgetError(f"{safe_url(storage)} holds no study {study_name!r} (it has: "
                              f"{', '.join(names)})")
    return optuna.load_study(study_name=study_name, storage=url)
