"""The base of every config section."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    # Unknown keys are errors: a typo such as `adapter.rank` must not be silently ignored.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
