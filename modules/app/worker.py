"""One thread that runs jobs in order (GPU work is serial), with progress, interrupt and skip.

Generation, model switches and refreshes all go through ``Worker.run``, so a model switch asked for
mid-job waits for the job, and concurrent clients are answered one after another.  Each job gets a
fresh ``JobControl``; ``interrupt()`` / ``skip()`` act on the running one, ``cancel(future)`` on one job
(queued: it never starts; running: it is interrupted), e.g. when the client that asked for it is gone.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

from modules.core import memory
from modules.core.progress import JobControl, ProgressState

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class _QueuedTask:
    id: int
    name: str
    fn: Callable[[JobControl], Any]
    future: Future
    control: JobControl


class Worker:
    def __init__(self, preview_every: Callable[[], int] = lambda: 5):
        self._queue: queue.Queue[_QueuedTask | None] = queue.Queue()
        self._ids = itertools.count(1)
        self._current: _QueuedTask | None = None
        self._lock = threading.Lock()
        self._preview_every = preview_every
        self._last_state = ProgressState()
        self.idle_spare: int | None = None  # RAM to spare measured after the last job (admission while busy)
        self._thread = threading.Thread(target=self._loop, name="job-worker", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[JobControl], T], name: str = "job") -> Future:
        job_id = next(self._ids)
        job = _QueuedTask(job_id, name, fn, Future(), JobControl(f"{name}({job_id})", self._preview_every()))
        self._queue.put(job)
        return job.future

    def run(self, fn: Callable[[JobControl], T], name: str = "job", timeout: float | None = None) -> T:
        """Queue `fn` and wait for its result (its exception is re-raised here)."""
        return self.submit(fn, name).result(timeout)

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            if not job.future.set_running_or_notify_cancel():
                continue
            with self._lock:
                self._current = job
            try:
                job.future.set_result(job.fn(job.control))
            except BaseException as e:  # handed to the waiting caller, never kills the worker
                if not isinstance(e, Exception):
                    log.error("job %s stopped by %r", job.name, e)
                job.future.set_exception(e)
            finally:
                with self._lock:
                    self._last_state = job.control.snapshot()
                    self._current = None
                memory.release_freed_memory()  # an idle server gives the job's peak back to the OS
                self.idle_spare = memory.spare_bytes()

    # --- control --------------------------------------------------------------------------------
    def interrupt(self) -> bool:
        with self._lock:
            if self._current is None:
                return False
            self._current.control.interrupt()
            return True

    def skip(self) -> bool:
        with self._lock:
            if self._current is None:
                return False
            self._current.control.skip()
            return True

    @property
    def busy(self) -> bool:
        with self._lock:
            return self._current is not None

    def cancel(self, future: Future) -> str:
        """Stop the job of `future`: "cancelled" (it was queued), "interrupted" (running), or "done"."""
        if future.cancel():
            return "cancelled"
        with self._lock:
            if self._current is not None and self._current.future is future:
                self._current.control.interrupt()
                return "interrupted"
        return "done"

    @property
    def pending(self) -> int:
        """Jobs waiting to start (cancelled ones not counted)."""
        with self._queue.mutex:
            return sum(1 for job in self._queue.queue if job is not None and not job.future.cancelled())

    def current_control(self) -> JobControl | None:
        with self._lock:
            return self._current.control if self._current else None

    def last_state(self) -> ProgressState:
        with self._lock:
            return self._last_state

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)
