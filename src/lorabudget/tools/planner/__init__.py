"""Budget planner behind `lorabudget plan`: what fits a trainable-parameter budget, counted exactly, no weights.
`arithmetic` counts an allocation from widths alone, `search` enumerates allocations and checks them against the
built model, `ranking` orders them (the heuristic, and what the studies taught it), `render` prints, writes and
draws the result."""

from .arithmetic import Counts, ModelShape, allocation_from_config, count_allocation, model_shape
from .ranking import HEURISTIC
from .render import check_config, format_plan, plan, plot_plan, write_candidate
from .search import (
    Candidate,
    Design,
    Plan,
    PlanMismatch,
    SearchSpace,
    candidate_config,
    enumerate_designs,
    search,
    verify,
)

__all__ = ["HEURISTIC", "Candidate", "Counts", "Design", "ModelShape", "Plan", "PlanMismatch",
           "SearchSpace", "allocation_from_config", "candidate_config", "check_config", "count_allocation",
           "enumerate_designs", "format_plan", "model_shape", "plan", "plot_plan", "search", "verify",
           "write_candidate"]
