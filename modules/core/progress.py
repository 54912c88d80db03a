"""Progress of the running job and the user's interrupt / skip requests (thread-safe).

``process`` reports through a ``JobControl``; the worker owns one per job and the UI / API read
``snapshot()``.  A1111's /progress shape: job counts, sampling step, ETA, a live preview image.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


class Stop(enum.Enum):
    """Why a job stops early: the user's Interrupt (end the job) or Skip (drop the current batch, go on)."""

    INTERRUPT = "interrupt"
    SKIP = "skip"


@dataclass
class ProgressState:
    job: str = ""
    job_timestamp: str = ""
    job_no: int = 0  # images finished or started, 0-based
    job_count: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0
    started: float = 0.0
    textinfo: str = ""
    interrupted: bool = False
    skipped: bool = False
    preview: np.ndarray | None = field(default=None, repr=False)
    preview_id: int = 0


class JobControl:
    """Shared between the job (writes) and the UI / API (reads, interrupt, skip)."""

    def __init__(self, job: str = "", preview_every: int = 5):
        self._lock = threading.Lock()
        self._interrupt = threading.Event()
        self._skip = threading.Event()
        self.preview_every = max(1, preview_every)
        self.state = ProgressState(job=job, job_timestamp=time.strftime("%Y%m%d%H%M%S"), started=time.time())

    # --- requests from outside -------------------------------------------------------------------
    def interrupt(self) -> None:
        self._interrupt.set()
        with self._lock:
            self.state.interrupted = True

    def skip(self) -> None:
        self._skip.set()
        with self._lock:
            self.state.skipped = True

    @property
    def interrupted(self) -> bool:
        return self._interrupt.is_set()

    # --- reports from the job --------------------------------------------------------------------
    def begin(self, job_count: int, steps: int, text: str = "") -> None:
        with self._lock:
            self.state.job_count, self.state.sampling_steps, self.state.textinfo = job_count, steps, text
            self.state.sampling_step = 0

    def begin_batch(self, job_no: int, steps: int) -> None:
        self._skip.clear()
        with self._lock:
            self.state.job_no, self.state.sampling_steps, self.state.sampling_step = job_no, steps, 0
            self.state.skipped = False

    def step(self, step: int, total: int, make_preview: Callable[[], np.ndarray] | None = None) -> Stop | None:
        """Record a finished step; returns a ``Stop`` when the user asked for one."""
        preview = None
        if make_preview is not None and ((step + 1) % self.preview_every == 0 or step + 1 == total):
            preview = make_preview()
        with self._lock:
            self.state.sampling_step, self.state.sampling_steps = step + 1, total
            if preview is not None:
                self.state.preview, self.state.preview_id = preview, self.state.preview_id + 1
        if self._interrupt.is_set():
            return Stop.INTERRUPT
        if self._skip.is_set():
            return Stop.SKIP
        return None

    def finish_batch(self, images_done: int) -> None:
        with self._lock:
            self.state.job_no = images_done

    # --- reading ---------------------------------------------------------------------------------
    def progress(self) -> tuple[float, float]:
        """(fraction done 0..1, estimated seconds left)."""
        with self._lock:
            s = self.state
            if s.job_count == 0 or s.sampling_steps == 0:
                return 0.0, 0.0
            per_job = 1.0 / s.job_count
            done = min(1.0, per_job * s.job_no + per_job * s.sampling_step / s.sampling_steps)
            elapsed = time.time() - s.started
            eta = elapsed / done - elapsed if done > 0 else 0.0
            return done, max(0.0, eta)

    def snapshot(self) -> ProgressState:
        with self._lock:
            return ProgressState(**self.state.__dict__)
