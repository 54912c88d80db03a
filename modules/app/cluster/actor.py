"""One cluster worker: a Ray actor holding its own Service (built by ``app.bootstrap`` from the driver's
options), which loads the checkpoint once and runs every job through the same ``process``.

The actor is threaded (``max_concurrency``): ``generate`` blocks in one thread on the Service's own
worker while ``progress`` / ``interrupt`` / ``skip`` / ``select_checkpoint`` answer from others; a model
switch goes through that worker's queue, so it waits for the running job.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from modules.core.request import GenerationRequest, GenerationResult
from modules.core.settings import Settings
from modules.models.checkpoints import sha256_file

# settings that never travel to a worker: folders are the node's own (outputs are written where the job runs)
LOCAL_SETTINGS = {f.name for f in fields(Settings) if f.metadata.get("folder")}


def node_name() -> str:
    """'host (ip)' of this process's machine, for messages."""
    try:
        import ray

        ip = ray.util.get_node_ip_address()
    except Exception:  # not inside Ray (tests calling the class directly)
        ip = "?"
    return f"{socket.gethostname()} ({ip})"


def checkpoint_problem(filename: str, sha256: str | None, size: int) -> str | None:
    """Why this node cannot use the driver's checkpoint file, or None when it sees the same file."""
    path = Path(filename)
    if not path.is_file():
        return f"no checkpoint file at {filename} (every node needs it at the same path)"
    if path.stat().st_size != size:
        return f"{filename} is a different file here ({path.stat().st_size} bytes, the driver's has {size})"
    if sha256 and sha256_file(path) != sha256:
        return f"{filename} is a different file here (its sha256 differs from the driver's {sha256[:10]})"
    return None


class GenerationActor:
    """The body of the Ray actor (``ray.remote`` is applied by the pool, with its resources)."""

    def __init__(self, options: Any, build_service: Callable[[Any], Any], checkpoint: dict[str, Any] | None):
        self.node = node_name()
        self.problem = checkpoint_problem(**checkpoint["file"]) if checkpoint else None
        self.service = build_service(options)
        self.load_seconds = 0.0
        if checkpoint and self.problem is None:
            self.load_seconds = self.service.select_checkpoint(checkpoint["title"]).load_seconds

    def ready(self) -> dict[str, Any]:
        """Who this worker is and whether it can work (a refusal's reason)."""
        return {"node": self.node, "pid": os.getpid(), "problem": self.problem, "load_seconds": self.load_seconds}

    def pid(self) -> int:
        return os.getpid()

    def generate(self, request: GenerationRequest, values: dict[str, Any]) -> GenerationResult:
        """Bring this worker's settings (and model) to the driver's, then run the request."""
        self.sync_settings(values)
        return self.service.generate(request)

    def sync_settings(self, values: dict[str, Any]) -> None:
        mine = self.service.settings.to_dict()
        changed = {k: v for k, v in values.items() if k not in LOCAL_SETTINGS and mine.get(k) != v}
        current = self.service.current_checkpoint()
        title = changed.pop("sd_model_checkpoint", None) or values.get("sd_model_checkpoint")
        if title and (current is None or title not in current.aliases):
            self.service.select_checkpoint(title)
        if changed:
            self.service.update_settings(changed)

    def select_checkpoint(self, title: str) -> float:
        """Switch model after the running job; the seconds it took to load."""
        return self.service.select_checkpoint(title).load_seconds

    def current_title(self) -> str | None:
        current = self.service.current_checkpoint()
        return current.title if current else None

    def progress(self) -> dict[str, Any]:
        return self.service.progress()

    def interrupt(self) -> bool:
        return self.service.interrupt()

    def skip(self) -> bool:
        return self.service.skip()

    def close(self) -> None:
        self.service.close()
