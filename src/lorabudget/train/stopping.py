"""How a run stops other than by finishing: Ctrl-C or SIGTERM at a safe point, a disk that refuses a write, or a
failure; each leaves status.json saying so, the last good checkpoint intact, and a run `--resume` continues.

Signals only set a flag: the loop checks it after each optimizer step, writes a checkpoint there and ends with
exit 130 (SIGINT) or 143 (SIGTERM), as a shell reports a process killed by them. A second Ctrl-C stops at once
(the checkpoint before it is kept).
"""

from __future__ import annotations

import math
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import Interrupted, LorabudgetError, TrainingError, WriteFailed
from ..rundir import RunDir
from ..runlock import command_line
from .checkpoint import newest_state

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class StopSignals:
    """While entered (main thread only), SIGINT and SIGTERM ask the run to stop at its next safe point."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: stop now
        self.signum = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in EXIT_CODES}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def agreed(self, accelerator) -> bool:
        """Whether a signal asked to stop; with several processes, whether any process got one: all stop at the
        same step, or the others would wait forever in the next collective."""
        if accelerator.num_processes == 1:
            return self.requested
        import torch

        flag = torch.tensor(float(self.requested), device=accelerator.device)
        return bool(accelerator.reduce(flag, "sum") > 0)

    def interrupted(self, run: RunDir, step: int) -> Interrupted:
        name = signal.Signals(self.signum).name
        return Interrupted(f"stopped by {name} at step {step}, after a checkpoint; continue with `lorabudget "
                           f"train --resume {run.path}`", EXIT_CODES[self.signum])


def check_finite(recipe, step_loss: float) -> None:
    """A loss that became NaN or infinite ends the run, marked failed; the last good checkpoint stays."""
    if math.isfinite(step_loss):
        return
    message = (f"the training loss became {step_loss} at step {recipe.state.step + 1}; the last good checkpoint is "
               "kept. Lower optim.lr, or use fp32/bf16 instead of fp16")
    if recipe.main:
        recipe.run.set_status("failed", reason=message, step=recipe.state.step)
    raise TrainingError(message)


def checkpoint_step(run: RunDir) -> int | None:
    """The step of the newest checkpoint on disk (for messages), or None."""
    state = newest_state(run.last)
    return None if state is None else state["step"]


def is_main_process() -> bool:
    """Before the accelerator exists: launchers (torchrun, accelerate) set RANK; only rank 0 writes the run."""
    return os.environ.get("RANK", "0") == "0"


@contextmanager
def run_writer(run: RunDir, started) -> Iterator[StopSignals]:
    """Hold the run directory's lock while training writes it, catch the signals, and when the run stops any way
    but finishing, say so in status.json. `started()` tells whether this run has written its header yet (before
    that, the folder may still hold an older run that must not be marked)."""
    main = is_main_process()
    lock = run.lock(command_line()) if main else _nothing()
    with lock, StopSignals() as stop:
        try:
            yield stop
        except WriteFailed as exc:
            step = checkpoint_step(run)
            kept = (f"its last good checkpoint (step {step}) is kept" if step is not None else
                    "it has no checkpoint yet")
            message = f"{exc}. The run stopped and {kept}: free some space, then `lorabudget train --resume {run.path}`"
            if main and started():
                run.mark_stopped("failed", reason=message, step=step)
            raise WriteFailed(message) from None
        except Interrupted as exc:
            if main and started():
                run.mark_stopped("interrupted", reason=str(exc), step=checkpoint_step(run))
            raise
        except KeyboardInterrupt:
            if main and started():
                run.mark_stopped("interrupted", reason="stopped by a second Ctrl-C", step=checkpoint_step(run))
            raise
        except LorabudgetError:
            raise  # marked where it was raised (a NaN loss) or raised before the run started
        except BaseException as exc:  # a bug: the traceback is shown, but the run must not look alive
            if main and started():
                run.mark_stopped("failed", reason=f"{type(exc).__name__}: {str(exc)[:300]}",
                                 step=checkpoint_step(run))
            raise


@contextmanager
def _nothing() -> Iterator[None]:
    yield
