"""Errors of the upscaler registry (file problems use modules.core.errors' CheckpointError family)."""

from __future__ import annotations

from modules.core.errors import UserError


class UnknownUpscalerError(UserError):
    """An upscaler or latent upscale mode name that the registry does not list."""

    status_code = 404


class UpscaleInterrupted(Exception):
    """The job was interrupted between two tiles; no partial image is returned."""
