"""`lorabudget sweep`: an Optuna study over configs (`run`), each candidate counted against the budget first
(`trial`), over a search space file (`space`)."""

from .run import SAMPLERS, SweepResult, _enqueue, open_study, run_sweep
from .space import Param, Space
from .trial import WORKER, objective

__all__ = ["SAMPLERS", "WORKER", "Param", "Space", "SweepResult", "_enqueue", "objective", "open_study", "run_sweep"]
