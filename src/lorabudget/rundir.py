"""The run directory: the contract between training and everything after it.

    config.yaml          resolved config (what ran, after overrides and data-source resolution)
    labels.json          class names and how the source codes them
    status.json          {"state": "running" | "finished" | "failed" | "interrupted", "reason": ...}: a run is
                         finished only when it says so
    metrics.jsonl        one JSON object per logging step (train) and per evaluation (validation)
    summary.json         best and final metrics, parameter breakdown, timing, versions (written last)
    checkpoints/last/    everything needed to resume, with a manifest of its files' hashes; checkpoints/previous/
                         the generation before it (a fallback when last is damaged); checkpoints/best/ the best
                         trainable weights
    adapter/             the adapter in peft's format, head included (+ lorabudget_head.json)
    plots/               loss and accuracy curves
    tensorboard/, mlflow/, wandb/   the experiment trackers' own files, when logging.trackers names them
    shift/<target>/      `lorabudget shift`: shift.json, shift.png, target_scores.csv
    .lock                held (flock) by the one process writing the run; see runlock.py

Every file is written to a temporary name and renamed into place, so a killed process leaves either the old or
the new version, never half of one. A write the disk refuses (full, over quota, read-only) raises `WriteFailed`
naming the file and the space left, and leaves no temporary file behind. Files follow the user's umask.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import DamagedFileError, RunDirError, WriteFailed
from .runlock import LOCK_NAME, RunLock, busy, describe_holder, writer_of

# What a run directory may hold (see above), partial runs included: --overwrite deletes only folders made of these.
RUN_ENTRIES = frozenset({"config.yaml", "labels.json", "status.json", "metrics.jsonl", "summary.json", "split.json",
                         "checkpoints", "adapter", "adapter.tmp", "adapter.old", "plots", "eval", "tensorboard",
                         "mlflow", "wandb", "predictions.csv", "shift"})


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


FILE_MODE = 0o666 & ~_UMASK  # what open() would give a new file: run files are for colleagues to read too

# The errors of a disk that refuses a write, as opposed to a bug: each becomes a WriteFailed with a clear message.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG})


def free_space(path: Path) -> str:
    """Free space on the filesystem holding `path` (or its nearest existing parent), for messages."""
    where = Path(path)
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        return "unknown space"
    return f"{free / 2**20:,.1f} MiB" if free < 2**30 else f"{free / 2**30:,.1f} GiB"


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn a refused write into a WriteFailed that says what could not be written, why, and the space left."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in WRITE_ERRNOS:
            raise
        raise WriteFailed(f"could not write {path}: {exc.strerror or exc} ({free_space(path)} free there)") from None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, FILE_MODE)  # mkstemp makes files private (0600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def follow_umask(folder: Path) -> None:
    """Give every file under `folder` the umask's mode. Libraries that write through their own temporary files
    (safetensors' `save_file`, which peft and transformers use) leave them private (0600): an exported model that
    only its owner can read."""
    for p in [Path(folder), *Path(folder).rglob("*")]:
        if p.is_file() and not p.is_symlink():
            os.chmod(p, FILE_MODE)


def read_json(path: Path, way_out: str) -> Any:
    """A JSON file lorabudget wrote, read back: a damaged one is a DamagedFileError naming it and the way out."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DamagedFileError(f"{path} is missing", way_out) from None
    except (ValueError, OSError) as exc:  # cut short, not UTF-8, unreadable
        raise DamagedFileError(f"{path} is damaged ({type(exc).__name__}: {str(exc)[:120]})", way_out) from None


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def remove_quietly(path: Path) -> None:
    """Remove a temporary file or folder after a failed write, whatever state it is in."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        try:
            path.unlink()
        except OSError:
            pass


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

    def mark_stopped(self, state: str, **extra: Any) -> None:
        """Record that a run failed or was interrupted, even on a full disk: when the atomic write cannot get a
        new block, status.json is rewritten in place (the few hundred bytes fit in the block it already has)."""
        try:
            self.set_status(state, **extra)
        except (WriteFailed, OSError):
            try:
                with open(self.status_file, "r+b") as f:
                    f.write(json.dumps({"state": state, **extra}).encode())
                    f.truncate()
            except OSError:
                pass  # nothing more can be done; the error itself still reaches the user

    def summary(self) -> dict:
        return read_json(self.summary_file, f"the run's record is lost: train it again with --overwrite, or "
                                            f"`lorabudget train --resume {self.path}` if its checkpoints remain")

    def has_checkpoint(self) -> bool:
        """A checkpoint to resume from: the last, or the generation before it (kept for when last is damaged)."""
        return self.last.is_dir() or (self.checkpoints / "previous").is_dir()

    def writer(self) -> dict | None:
        """Who is writing this run now (pid, command, since), or None when no live process is."""
        return writer_of(self.path)

    def lock(self, command: str) -> RunLock:
        """Hold while writing this run: a second writer refuses at once instead of interleaving files."""
        return RunLock(self.path, command)

    def append_metrics(self, record: dict) -> None:
        with writing(self.metrics), open(self.metrics, "a", encoding="utf-8") as f:
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

    def check_new(self, overwrite: bool, *, main: bool = True) -> None:
        """Refuse to clobber a run unless asked. Only checks: the folder is cleared by `reset`, once the new run's
        config, data and model have passed their own checks, so a failing `--overwrite` keeps the old run."""
        self._refuse_foreign()
        writer = self.writer() if main else None  # the other processes of a launch see their main one's lock
        if writer is not None:
            raise busy(self.path, writer)
        if self.path.exists() and any(p.name != LOCK_NAME for p in self.path.iterdir()):
            if self.is_finished() and not overwrite:
                raise RunDirError(f"{self.path} holds a finished run; pass --overwrite to replace it, or choose "
                                  "another --output-dir")
            if not self.is_finished() and self.has_checkpoint() and not overwrite:
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
        """Start from an empty folder (the main process only, after `check_new`). The lock file stays: the lock
        this process holds lives on it, and a new file would let a second writer in."""
        self._refuse_foreign()
        for child in list(self.path.iterdir()) if self.path.is_dir() else []:
            if child.name != LOCK_NAME:
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
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


def open_finished(path: str | Path, *, allow_running: bool = False) -> RunDir:
    """A finished run to read. With `allow_running`, also a run that a live process is writing now, once it has a
    best checkpoint to read (the caller scores that, and says so); a stopped unfinished run is refused either way."""
    run = RunDir(path)
    if not run.path.is_dir():
        raise RunDirError(f"run directory not found: {run.path}")
    if not run.config.is_file():
        raise RunDirError(f"{run.path} is not a run directory (no config.yaml)")
    if not run.is_finished():
        writer = run.writer()
        if writer is not None:
            if allow_running and (run.best / "trainable.safetensors").is_file():
                return run
            raise RunDirError(f"{run.path} is still being written ({describe_holder(writer)})"
                              + ("" if not allow_running else " and has no best checkpoint yet")
                              + "; wait for it to finish")
        status = run.status()
        if status is None:
            why = "status.json is missing or unreadable"
        elif status.get("state") == "finished":
            why = "summary.json is missing"
        else:
            why = f"state: {status.get('state', 'unknown')}" + (f", {status['reason']}" if status.get("reason")
                                                                 else "")
        raise RunDirError(f"{run.path} is not a finished run ({why}); resume it with `lorabudget train "
                          f"--resume {run.path}`")
    return run
