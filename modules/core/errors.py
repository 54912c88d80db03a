"""Errors meant for people: each carries a message that says what is wrong and what to do.

The UI shows ``str(error)``; the HTTP API maps ``UserError`` subclasses to 4xx responses.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with what the user asked for or gave us (never a bug in our code)."""

    status_code = 400


class ValidationError(UserError):
    """A request field has a value we refuse; ``field`` names it (A1111's API field name)."""

    status_code = 422

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class CheckpointError(UserError):
    """A checkpoint file that cannot be loaded (unreadable, truncated, mismatched config...)."""


class UnsafeCheckpointError(CheckpointError):
    """A pickled checkpoint that would run code when loaded; refused, never executed."""


class UnsupportedModelError(CheckpointError):
    """A readable checkpoint of a model family this program does not run."""


class ConfigError(CheckpointError):
    """An LDM yaml config that is malformed or does not describe a supported model."""


class CheckpointNotFoundError(UserError):
    """A checkpoint name that the checkpoint list does not contain."""

    status_code = 404


class NoModelLoadedError(UserError):
    """Generation was asked for while no checkpoint is available."""

    status_code = 409
