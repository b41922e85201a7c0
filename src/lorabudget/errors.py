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


class DamagedFileError(RunDirError):
    """A file lorabudget wrote earlier and reads back (checkpoint, adapter, config, summary) is damaged: `what`
    names the file and the damage, `way_out` what the user can do."""

    def __init__(self, what: str, way_out: str = ""):
        super().__init__(f"{what}; {way_out}" if way_out else what)
        self.what, self.way_out = what, way_out


class WriteFailed(RunDirError):
    """The disk refused a write (full, over quota, read-only, no permission): the message says what and where."""


class Interrupted(LorabudgetError):
    """A run stopped by SIGINT or SIGTERM at a safe point; exit 130 or 143 as a shell would report it."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
