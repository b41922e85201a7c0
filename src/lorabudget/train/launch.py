"""Several local processes for one run (speed.processes): how many, and starting them.

`lorabudget train` with speed.processes N > 1 (and not already under a launcher) starts N copies of itself, each
`python -m lorabudget.cli train ...` with the environment torchrun gives its workers (RANK, LOCAL_RANK,
WORLD_SIZE, MASTER_ADDR/MASTER_PORT on this machine; accelerate then joins them with gloo on CPUs, NCCL on GPUs)
and OMP_NUM_THREADS = MKL_NUM_THREADS = threads / N. The starting command stays as their parent: it holds the run's
lock and passes it on (the lock lives as long as any of them), forwards SIGINT and SIGTERM to them once each (they
stop together at the next step, with a checkpoint, as one process does), and turns the way they ended into one
message: each worker reports its error to a file instead of printing it, and the workers other than rank 0 print
nothing.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

from ..config import Config, dump_config
from ..errors import ConfigError, Interrupted, LorabudgetError
from ..rundir import RunDir
from ..runlock import INHERITED_LOCK_ENV, held_descriptor

REPORT_ENV = "LORABUDGET_WORKER_REPORTS"  # the folder where each started process reports how it failed
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
FAILURE_GRACE_S = 30.0  # after one process fails, the time the others get to end before they are killed

# `auto` (the default): two 1-thread processes beat one 2-thread process for MiniLM (hidden 384) by 1.35x at batch
# 32 and 1.16x at 64, and for roberta-base's shape (hidden 768) by 1.01-1.12x at batch 16-64, ~50 tokens
# (benchmarks/processes.py, docs/benchmarks.md). The lead shrinks as the matmuls widen: wider encoders (roberta-
# large's 1,024, unmeasured) keep one process's threads busy, so they stay at 1.
AUTO_MAX_HIDDEN = 768
AUTO_MAX_BATCH = 64


def launcher_world() -> int | None:
    """WORLD_SIZE when this process was started by a launcher (torchrun, accelerate launch, lorabudget itself)."""
    world = os.environ.get("WORLD_SIZE")
    return int(world) if world and "RANK" in os.environ else None


def on_cpu(cfg: Config) -> bool:
    import torch

    return cfg.model.device == "cpu" or (cfg.model.device == "auto" and not torch.cuda.is_available()
                                         and not torch.backends.mps.is_available())


def physical_cores() -> int:
    import psutil

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(psutil.cpu_count(logical=False) or usable, usable))


def auto_processes(cfg: Config) -> tuple[int, str]:
    """speed.processes 'auto': (N, why)."""
    if not on_cpu(cfg):
        return 1, "one process on a GPU"
    if os.name != "posix":  # the starting command forwards SIGINT / SIGTERM to its processes: POSIX signals
        return 1, "processes are started on POSIX systems only"
    cores = physical_cores()
    if cores < 2:
        return 1, "fewer than 2 physical cores"
    import torch

    if torch.get_num_threads() < 2:  # OMP_NUM_THREADS=1 (two trainings side by side, say): no threads to share out
        return 1, "one thread (OMP_NUM_THREADS / MKL_NUM_THREADS = 1, or torch.set_num_threads(1))"
    if cfg.optim.batch_size % 2:
        return 1, f"optim.batch_size={cfg.optim.batch_size} does not split in two"
    if cfg.optim.batch_size > AUTO_MAX_BATCH:
        return 1, f"batch {cfg.optim.batch_size} > {AUTO_MAX_BATCH}: one process's matmuls keep the threads busy"
    try:
        from ..model.backbone import load_config

        mc = load_config(cfg.model.name, 2, trust_remote_code=cfg.model.trust_remote_code)
    except LorabudgetError:
        return 1, "the model's shape could not be read"
    hidden, layers = mc.hidden_size, mc.num_hidden_layers
    if hidden > AUTO_MAX_HIDDEN:
        return 1, f"hidden size {hidden} > {AUTO_MAX_HIDDEN}: one process's matmuls keep the threads busy"
    import psutil

    # the FFN's width: DistilBERT calls it hidden_dim
    ffn = getattr(mc, "intermediate_size", None) or getattr(mc, "hidden_dim", None) or 4 * hidden
    weights = 4 * (mc.vocab_size * hidden + layers * (4 * hidden * hidden + 2 * hidden * ffn))
    # activations kept for the backward: ~ 20 floats per hidden unit, token and layer, for half the batch
    activations = 4 * 20 * (cfg.optim.batch_size // 2) * cfg.model.max_length * hidden * layers
    need, free = 2 * (weights + activations), psutil.virtual_memory().available
    if need > free / 2:
        return 1, f"two copies need ~{need / 2**30:.1f} GiB, more than half the {free / 2**30:.1f} GiB free"
    return 2, f"hidden size {hidden} <= {AUTO_MAX_HIDDEN}, batch {cfg.optim.batch_size} <= {AUTO_MAX_BATCH}, " \
              f"{cores} physical cores"


def with_processes(cfg: Config, n: int) -> Config:
    """The config with speed.processes set to the number `n` that trains it (what config.yaml records, so that
    --resume starts as many)."""
    return cfg.model_copy(update={"speed": cfg.speed.model_copy(update={"processes": n})})


def resolve_processes(cfg: Config, say=print) -> Config:
    """The config with speed.processes a number: the processes this run trains on (what config.yaml records, so
    that --resume starts as many). Refuses a batch that does not split evenly."""
    requested, world = cfg.speed.processes, launcher_world()
    if world is not None:  # under an outside launcher: 'auto' (the default) and 1 keep the old meaning, a batch per
        n = 1 if requested == "auto" else requested  # process; N shares each batch out as lorabudget's own do
    elif requested == "auto":
        n, why = auto_processes(cfg)
        say(f"processes {n} (speed.processes auto: {why})")
    else:
        n = requested
    check_processes(cfg, n, world if world is not None else n)
    if world is None and n > 1 and not on_cpu(cfg):
        import torch

        if torch.cuda.device_count() < n:
            raise ConfigError(f"speed.processes={n} on a GPU needs {n} GPUs, and {torch.cuda.device_count()} "
                              "are visible; set speed.processes to 1")
    return with_processes(cfg, n)


def check_processes(cfg: Config, n: int | str, world: int) -> None:
    """speed.processes N > 1 means N processes sharing each batch: refuse another count, or a batch that does not
    split evenly."""
    if n == "auto" or n == 1:
        return
    if world != n:
        raise ConfigError(f"speed.processes={n}, but this run has {world} process(es): `lorabudget train` starts "
                          f"them itself; under another launcher (torchrun, accelerate launch) or from Python, start "
                          f"{n} or set speed.processes to 1")
    if cfg.optim.batch_size % n:
        raise ConfigError(f"optim.batch_size={cfg.optim.batch_size} does not split evenly over speed.processes={n}:"
                          f" each process takes batch_size / {n} rows of every batch; choose a multiple of {n}")


def splits_batch(cfg: Config, world: int) -> bool:
    """Whether each batch of optim.batch_size rows is shared out over the processes (speed.processes = their
    number), rather than each process taking a whole batch (1 or 'auto' under an outside launcher)."""
    return world > 1 and cfg.speed.processes == world


def batch_per_process(cfg: Config, world: int) -> int:
    return cfg.optim.batch_size // world if splits_batch(cfg, world) else cfg.optim.batch_size


# ---- the starting process -------------------------------------------------------------------------------------

def worker_command(cfg: Config, run: RunDir, folder: Path, *, resume: bool, overwrite: bool) -> list[str]:
    """What each process runs: the run's own --resume, or the resolved config (its output_dir and number of
    processes settled) written beside the reports."""
    if resume:
        args = ["train", "--resume", str(run.path)]
    else:
        (folder / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")
        args = ["train", "-c", str(folder / "config.yaml")] + (["--overwrite"] if overwrite else [])
    return [sys.executable, "-m", "lorabudget.cli", *args]


def launch(cfg: Config, run: RunDir, *, resume: bool, overwrite: bool) -> None:
    """Train `run` on cfg.speed.processes local processes; returns when all finished, raises how they ended
    otherwise (Interrupted, the workers' own LorabudgetError, KeyboardInterrupt, or a failure with the
    traceback of the process that failed first)."""
    import torch

    n = cfg.speed.processes
    threads = max(1, torch.get_num_threads() // n) if on_cpu(cfg) else torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="lorabudget-workers-") as tmp:
        folder = Path(tmp)
        command = worker_command(cfg, run, folder, resume=resume, overwrite=overwrite)
        fd = held_descriptor(run.path)
        base = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": str(n),
                "LOCAL_WORLD_SIZE": str(n), "GROUP_RANK": "0", "OMP_NUM_THREADS": str(threads),
                "MKL_NUM_THREADS": str(threads),  # torch takes MKL's over OMP's when both are set
                REPORT_ENV: str(folder), **({INHERITED_LOCK_ENV: str(fd)} if fd is not None else {})}
        procs: list[subprocess.Popen] = []
        with forwarding(procs) as received:
            for rank in range(n):
                env = {**base, "RANK": str(rank), "LOCAL_RANK": str(rank)}
                # rank 0 talks to the user; the others' output would repeat it (kept for a crash's message)
                out = None if rank == 0 else subprocess.DEVNULL
                err = None if rank == 0 else open(folder / f"rank-{rank}.stderr", "wb")  # noqa: SIM115
                procs.append(subprocess.Popen(command, env=env, stdout=out, stderr=err, start_new_session=True,
                                              pass_fds=(fd,) if fd is not None else ()))
                if err is not None:
                    err.close()
            order = wait_all(procs, received)
        if order:
            raise outcome(order, folder, run, n, received)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def forwarding(procs: list):
    """While the processes run, SIGINT and SIGTERM reach each of them once per signal this process gets (they run
    in sessions of their own, so a terminal's Ctrl-C reaches only this one). Yields the signals received."""
    received: list[int] = []

    def forward(signum, frame) -> None:
        received.append(signum)
        for p in procs:
            if p.poll() is None:
                try:
                    p.send_signal(signum)
                except ProcessLookupError:
                    pass

    main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, forward) for s in STOP_SIGNALS} if main else {}
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def wait_all(procs: list, received: list) -> list[tuple[int, int]]:
    """Wait for every process; the (rank, exit code) of those that failed, in the order they were seen to. When
    one fails (other than by the stop asked for), the others get FAILURE_GRACE_S to end, then are killed: they
    would otherwise wait for it in the next collective."""
    failed: list[tuple[int, int]] = []
    first_failure = None
    while True:
        running = False
        for rank, p in enumerate(procs):
            code = p.poll()
            if code is None:
                running = True
            elif code != 0 and all(r != rank for r, _ in failed):
                failed.append((rank, code))
                if not (received and code in (130, 143)):  # not the stop that was asked for
                    first_failure = first_failure or time.monotonic()
        if not running:
            return failed
        if first_failure and time.monotonic() - first_failure > FAILURE_GRACE_S:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        time.sleep(0.05)


def outcome(failed: list[tuple[int, int]], folder: Path, run: RunDir, n: int, received: list) -> BaseException:
    """One error for the user from the processes' reports: a user error (the lowest rank that reported one: they
    all say the same) before anything else, else the first failure seen."""
    reports = {rank: read_report(folder, rank) for rank, _ in failed}
    errors = [rank for rank, _ in sorted(failed) if reports[rank].get("kind") in ("error", "keyboard")]
    rank, code = next(((r, c) for r, c in failed if r == errors[0]), failed[0]) if errors else failed[0]
    report = reports[rank]
    if report.get("kind") == "keyboard":
        return KeyboardInterrupt()
    if report.get("kind") == "error":
        if report.get("type") == "Interrupted":
            return Interrupted(report["message"], report["exit_code"])
        error = LorabudgetError(report["message"])
        error.exit_code = report["exit_code"]
        return error
    if received and code < 0:  # stopped by the signal itself, before training caught it
        name = signal.Signals(received[0]).name
        return Interrupted(f"stopped by {name} before training began; start the run again",
                           128 + received[0])
    if report.get("kind") == "crash":
        print(report["traceback"], file=sys.stderr, end="")
        what = report["traceback"].strip().splitlines()[-1]
    elif code < 0:
        what = f"killed by {signal.Signals(-code).name}" + (" (out of memory?)" if code == -signal.SIGKILL else "")
    else:
        tail = (folder / f"rank-{rank}.stderr").read_text(errors="replace")[-2000:] if rank else ""
        print(tail, file=sys.stderr, end="")
        what = f"exit status {code}"
    message = f"training process {rank} of {n} failed: {what}"
    mark_failed(run, message)
    error = LorabudgetError(message)
    error.exit_code = 1
    return error


def mark_failed(run: RunDir, message: str) -> None:
    """A run left 'running' by a killed process, or marked with a follower's symptom, says why it stopped."""
    from .stopping import checkpoint_step

    try:
        state = json.loads(run.status_file.read_text(encoding="utf-8")).get("state")
    except (OSError, ValueError):
        return  # the run never started
    if state in ("running", "failed"):
        run.mark_stopped("failed", reason=message, step=checkpoint_step(run))


# ---- in each started process ------------------------------------------------------------------------------------

def read_report(folder: Path, rank: int) -> dict:
    try:
        return json.loads((folder / f"rank-{rank}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def report(exc: BaseException, exit_code: int) -> bool:
    """In a process that `lorabudget train` started: write how it failed for the starting process to tell the
    user (once, for all), and print nothing. False elsewhere (the caller prints as usual)."""
    folder = os.environ.get(REPORT_ENV)
    if not folder or launcher_world() is None:
        return False
    if isinstance(exc, LorabudgetError):
        record = {"kind": "error", "type": type(exc).__name__, "message": str(exc)}
    elif isinstance(exc, KeyboardInterrupt):
        record = {"kind": "keyboard"}
    else:
        record = {"kind": "crash", "traceback": "".join(traceback.format_exception(exc))}
    record["exit_code"] = exit_code
    try:
        Path(folder, f"rank-{os.environ.get('RANK', '0')}.json").write_text(json.dumps(record), encoding="utf-8")
    except OSError:
        return False
    return True
