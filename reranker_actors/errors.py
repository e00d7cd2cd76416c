"""Errors a user can cause in the engine: a bad model, device, config value or row.

The job (`jobs`) reports these as they are: message only, exit status 2 (3 for a quality
gate that refused the run). The message
alone must say what is wrong (the key, model, column or row) and what would be accepted.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's config, data or model; no traceback is shown for these."""

    exit_status = 2

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property  # type: ignore[override]
    def args(self) -> tuple[str]:
        return (self.message,)

    @args.setter
    def args(self, value: tuple) -> None:
        """Ignored: Ray Data appends generic retry advice to a UDF error's args, which would
        bury the one message the user needs under text about transient failures."""

    def __str__(self) -> str:
        return self.message


class ConfigError(UserError):
    """A config value is invalid (e.g. an unknown backend)."""


class InputError(UserError):
    """The input data is unusable: missing files, wrong schema, bad rows."""


class ModelError(UserError):
    """A model could not be loaded or cannot run on the requested device/dtype."""


class GateFailure(UserError):
    """A quality gate refused the run: scores that are NaN, or canaries that moved, or (in the
    job) a ranking worse than the gates allow. Nothing is published."""

    exit_status = 3
