"""One writer per run directory: an exclusive OS lock (`flock`) on RUN/.lock, held for as long as a command writes
the run. The kernel drops the lock when its process ends, however it ends, so a killed run leaves no stale lock;
the file's content only names the holder (pid, host, command, since) for the message a second writer gets.

Readers (evaluate, predict, report) never take the lock: they ask `writer_of` whether a live process holds it, to
say that the run is still being written.

The processes that `lorabudget train` starts for one run (speed.processes) inherit its lock: the descriptor is
passed to them (its number in LORABUDGET_LOCK_FD), so the lock lives until the last of them ends, and their main
process writes the run under it instead of refusing.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import sys
import time
from pathlib import Path

from .errors import RunDirError

try:
    import fcntl
except ImportError:  # Windows: no flock; runs there are not guarded against a second writer
    fcntl = None

LOCK_NAME = ".lock"
INHERITED_LOCK_ENV = "LORABUDGET_LOCK_FD"
# A reader's probe (`writer_of`) holds a shared lock for microseconds: a writer retries this long before refusing.
_PROBE_GRACE_S = 1.0
_held: dict[Path, list] = {}  # resolved folder -> [fd, depth]: re-entrant within one process


def _holder_text(path: Path) -> dict:
    try:
        holder = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        holder = {}
    return holder if isinstance(holder, dict) else {}


def busy(folder: Path, holder: dict) -> RunDirError:
    """The refusal a second writer gets: who holds the folder, and what to do."""
    return RunDirError(f"{folder} is being written by another lorabudget process ({describe_holder(holder)}); "
                       "wait for it to finish, or choose another --output-dir")


def describe_holder(holder: dict) -> str:
    parts = [f"pid {holder.get('pid', '?')}" + (f" on {holder['host']}" if holder.get("host") else "")]
    if holder.get("command"):
        parts.append(f"`{holder['command']}`")
    if holder.get("since"):
        parts.append(f"since {holder['since']}")
    return ", ".join(parts)


class RunLock:
    """`with RunLock(folder, command):` holds the folder's lock, creating the folder if needed; a folder it
    created is removed again when the block fails before writing anything else into it."""

    def __init__(self, folder: str | Path, command: str):
        self.folder, self.command = Path(folder), command
        self.created = False

    def __enter__(self) -> RunLock:
        key = self.folder.resolve()
        if key in _held:
            _held[key][1] += 1
            return self
        if fcntl is None:
            _held[key] = [None, 1]
            return self
        inherited = _inherited(self.folder)
        if inherited is not None:  # a process that `lorabudget train` started: its lock is this process's too
            _held[key] = [inherited, 1]
            return self
        self.created = not self.folder.exists()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise RunDirError(f"cannot create the run directory {self.folder} ({exc.strerror or exc})") from None
        deadline = time.monotonic() + _PROBE_GRACE_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                os.close(fd)
                raise busy(self.folder, _holder_text(self.folder / LOCK_NAME)) from None
        me = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
              "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        except OSError:
            pass  # a full disk: the lock holds all the same, the message just names no holder
        _held[key] = [fd, 1]
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        key = self.folder.resolve()
        entry = _held[key]
        entry[1] -= 1
        if entry[1]:
            return
        del _held[key]
        if exc_type is not None and self.created:
            leftovers = [p for p in self.folder.iterdir() if p.name != LOCK_NAME]
            if not leftovers:  # the run never started: leave no empty folder behind
                (self.folder / LOCK_NAME).unlink(missing_ok=True)
                self.folder.rmdir()
        if entry[0] is not None:
            os.close(entry[0])  # closing the descriptor releases the lock


def _inherited(folder: Path) -> int | None:
    """The descriptor of `folder`'s lock that this process inherited from the command that started it (and holds
    the lock through), or None."""
    try:
        fd = int(os.environ[INHERITED_LOCK_ENV])
        mine, lock = os.fstat(fd), os.stat(folder / LOCK_NAME)
    except (KeyError, ValueError, OSError):
        return None
    if (mine.st_dev, mine.st_ino) != (lock.st_dev, lock.st_ino):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # succeeds at once on the description that holds it
    except OSError:
        return None
    return fd


def held_descriptor(folder: str | Path) -> int | None:
    """The descriptor through which this process holds `folder`'s lock (to pass to the processes it starts)."""
    entry = _held.get(Path(folder).resolve())
    return entry[0] if entry else None


def writer_of(folder: str | Path) -> dict | None:
    """The holder of the folder's lock (pid, host, command, since), or None when no other live process holds it
    (this process's own lock, or the one it inherited, is no other writer)."""
    path = Path(folder) / LOCK_NAME
    if fcntl is None or not path.is_file() or Path(folder).resolve() in _held:
        return None
    if _inherited(Path(folder)) is not None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    except BlockingIOError:
        return _holder_text(path) or {"pid": "?"}
    finally:
        os.close(fd)


def command_line() -> str:
    """This process's command, as the user typed it (for a lock holder's description)."""
    args = [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv and sys.argv[0] else ["python"]
    return shlex.join(args)[:200]
