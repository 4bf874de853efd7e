"""User-facing errors: one line a user can act on, never a traceback.

The CLI catches :class:`RayAlignError` and prints ``error: <message>`` with exit code 2.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class RayAlignError(Exception):
    """A mistake the user can fix (bad config, bad data, missing package)."""


class ConfigError(RayAlignError):
    """A config key is unknown, has the wrong type, or the values do not fit together."""


class DataError(RayAlignError):
    """A row of preference data is unusable.

    The message names the file, the 1-based row, the field and the fix, so it reads well alone.
    """

    def __init__(self, source: str, row: int | None, field: str | None, problem: str):
        self.source, self.row, self.field, self.problem = source, row, field, problem
        where = source if row is None else f"{source}, row {row}"
        if field:
            where += f", field '{field}'"
        super().__init__(f"{where}: {problem}")


class MissingPackageError(RayAlignError):
    """An optional package is needed for what the user asked for."""

    def __init__(self, package: str, purpose: str, install: str):
        super().__init__(f"{purpose} needs the package '{package}': install it with `{install}`")


class TrainingError(RayAlignError):
    """Training stopped for a reason the user should see (e.g. a non-finite loss)."""
