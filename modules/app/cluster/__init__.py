"""Generation jobs on a Ray cluster (``--ray ADDRESS``): a pool of actors, each with its own Service.

This package's ``__init__`` is plain Python (no Ray): the ``JobRunner`` protocol the Service uses
when its generation jobs run elsewhere, and the cluster's errors.  Ray itself is imported only by
``connect`` / ``pool`` / ``actor``, and only when ``--ray`` is given.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

from modules.core.errors import UserError
from modules.core.request import GenerationRequest
from modules.core.settings import Settings
from modules.models.checkpoints import CheckpointInfo

RAY_REQUIREMENT = "ray[default]==2.60.0"


class ClusterError(UserError):
    """The cluster cannot be used: Ray missing, an address that does not answer, a worker refused."""


class WorkerLostError(UserError):
    """A job whose workers died (it was retried once on another): the API answers 503."""

    status_code = 503


@dataclass(frozen=True)
class SwitchedModel:
    """What ``Service.select_checkpoint`` returns when the model lives on the cluster's workers."""

    info: CheckpointInfo
    load_seconds: float


class JobRunner(Protocol):
    """Where a Service's generation jobs run instead of its own worker thread (a Ray actor pool)."""

    def submit(self, request: GenerationRequest, settings: Settings) -> Future: ...

    def select_checkpoint(self, info: CheckpointInfo) -> SwitchedModel: ...

    def current_checkpoint(self) -> CheckpointInfo | None: ...

    def interrupt(self) -> bool: ...

    def skip(self) -> bool: ...

    def cancel(self, future: Future) -> str: ...

    def progress(self) -> dict[str, Any]: ...

    def close(self) -> None: ...
