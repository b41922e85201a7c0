"""The project's own error types.

Everything a user can get wrong (a config field, a data file, a budget, a run directory) raises a subclass of
`LorabudgetError` with a message that names the place and what was expected. The CLI prints that message and
exits non-zero; anything else escaping is a bug in lorabudget, and shows as a traceback on purpose.
"""

from __future__ import annotations


class LorabudgetError(Exception):
    """A problem the user can fix; the message says what and where."""

    exit_code = 2


class ConfigError(LorabudgetError):
    """An invalid config field, override or combination of fields."""


class DataError(LorabudgetError):
    """A data source that cannot be read or does not match the config."""


class ModelError(LorabudgetError):
    """A model that cannot be loaded, or an adapter config that does not fit it."""


class BudgetError(LorabudgetError):
    """The adapted model trains more parameters than the budget allows."""


class RunDirError(LorabudgetError):
    """A run directory that is missing, unfinished, or would be overwritten."""


class TrainingError(LorabudgetError):
    """Training cannot go on (a loss that became NaN or infinite, say)."""
