"""The run directory: the contract between training and everything after it.

    config.yaml          resolved config (what ran, after overrides and data-source resolution)
    labels.json          class names and how the source codes them
    status.json          {"state": "running" | "finished" | "failed", ...}: a run is finished only when it says so
    metrics.jsonl        one JSON object per logging step (train) and per evaluation (validation)
    summary.json         best and final metrics, parameter breakdown, timing, versions (written last)
    checkpoints/last/    everything needed to resume; checkpoints/best/ the best trainable weights
    adapter/             the adapter in peft's format, head included (+ lorabudget_head.json)
    plots/               loss and accuracy curves

Every file is written to a temporary name and renamed into place, so a killed process leaves either the old or
the new version, never half of one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .errors import RunDirError

# What a run directory may hold (see above), partial runs included: --overwrite deletes only folders made of these.
RUN_ENTRIES = frozenset({"config.yaml", "labels.json", "status.json", "metrics.jsonl", "summary.json", "split.json",
                         "checkpoints", "adapter", "adapter.tmp", "adapter.old", "plots", "eval", "tensorboard"})


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes files private (0600); results are for others to read too
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def replace_dir(tmp: Path, final: Path) -> None:
    """Swap a fully written folder into place: the old one stays complete until the new one is."""
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    # paths
    config = property(lambda self: self.path / "config.yaml")
    labels = property(lambda self: self.path / "labels.json")
    status_file = property(lambda self: self.path / "status.json")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    summary_file = property(lambda self: self.path / "summary.json")
    checkpoints = property(lambda self: self.path / "checkpoints")
    last = property(lambda self: self.path / "checkpoints" / "last")
    best = property(lambda self: self.path / "checkpoints" / "best")
    adapter = property(lambda self: self.path / "adapter")
    plots = property(lambda self: self.path / "plots")

    def status(self) -> dict | None:
        if not self.status_file.is_file():
            return None
        try:
            status = json.loads(self.status_file.read_text(encoding="utf-8"))
        except (ValueError, OSError):  # not JSON, not UTF-8, unreadable: no status we can trust
            return None
        return status if isinstance(status, dict) else None

    def is_finished(self) -> bool:
        s = self.status()
        return bool(s and s.get("state") == "finished" and self.summary_file.is_file())

    def set_status(self, state: str, **extra: Any) -> None:
        atomic_write_json(self.status_file, {"state": state, **extra})

    def summary(self) -> dict:
        return json.loads(self.summary_file.read_text())

    def append_metrics(self, record: dict) -> None:
        with open(self.metrics, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()

    def read_metrics(self) -> list[dict]:
        if not self.metrics.is_file():
            return []
        out = []
        for line in self.metrics.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut by a kill: everything after it is from a lost future
        return out

    def truncate_metrics(self, last_step: int) -> None:
        """On resume, drop what was logged after the checkpoint: those steps are about to be redone."""
        kept = [r for r in self.read_metrics() if r.get("step", 0) <= last_step]
        atomic_write_text(self.metrics, "".join(json.dumps(r) + "\n" for r in kept))

    def check_new(self, overwrite: bool) -> None:
        """Refuse to clobber a run unless asked. Only checks: the folder is cleared by `reset`, once the new run's
        config, data and model have passed their own checks, so a failing `--overwrite` keeps the old run."""
        self._refuse_foreign()
        if self.path.exists() and any(self.path.iterdir()):
            if self.is_finished() and not overwrite:
                raise RunDirError(f"{self.path} holds a finished run; pass --overwrite to replace it, or choose "
                                  "another --output-dir")
            if not self.is_finished() and self.last.is_dir() and not overwrite:
                raise RunDirError(f"{self.path} holds an unfinished run; continue it with `lorabudget train "
                                  f"--resume {self.path}`, or pass --overwrite to start again")
            if not overwrite and not self.config.is_file():
                raise RunDirError(f"{self.path} exists and is not a run directory; choose another --output-dir")
        parent = self.path.parent
        while not parent.exists():
            parent = parent.parent
        if not os.access(parent, os.W_OK):
            raise RunDirError(f"cannot create the run directory {self.path}: {parent} is not writable")

    def reset(self) -> None:
        """Start from an empty folder (the main process only, after `check_new`)."""
        self._refuse_foreign()
        if self.path.exists():
            shutil.rmtree(self.path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirError(f"cannot create the run directory {self.path} ({exc.strerror or exc})") from None

    def _refuse_foreign(self) -> None:
        """A run directory is ours to replace; a file, or a folder holding anything else, is not (even with
        --overwrite: `--output-dir . --overwrite` must not delete a project)."""
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"{self.path} exists and is not a folder; choose another --output-dir")
        if self.path.is_dir():
            foreign = sorted(p.name for p in self.path.iterdir()
                             if p.name not in RUN_ENTRIES and not p.name.startswith("."))
            if foreign:
                shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
                raise RunDirError(f"{self.path} holds files that are not a run's ({shown}); lorabudget replaces "
                                  "only run directories: choose another --output-dir")


def open_finished(path: str | Path) -> RunDir:
    run = RunDir(path)
    if not run.path.is_dir():
        raise RunDirError(f"run directory not found: {run.path}")
    if not run.config.is_file():
        raise RunDirError(f"{run.path} is not a run directory (no config.yaml)")
    if not run.is_finished():
        status = run.status()
        if status is None:
            why = "status.json is missing or unreadable"
        elif status.get("state") == "finished":
            why = "summary.json is missing"
        else:
            why = f"state: {status.get('state', 'unknown')}"
        raise RunDirError(f"{run.path} is not a finished run ({why}); resume it with `lorabudget train "
                          f"--resume {run.path}`")
    return run
