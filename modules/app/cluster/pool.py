"""The driver's side of the cluster: N ``GenerationActor`` workers and one dispatch thread per worker.

Jobs wait in one queue; each worker's thread takes the next, runs it on its actor and hands the result
to the job's Future, so N jobs run at once.  A worker that dies mid-job (killed, OOM, node lost) has
its job put back at the front of the queue for another worker (one retry; then ``WorkerLostError``,
a 503); Ray restarts the actor, which loads the checkpoint again before it takes new work.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from modules.app.cluster import ClusterError, SwitchedModel, WorkerLostError
from modules.core.request import GenerationRequest
from modules.core.settings import Settings
from modules.models.checkpoints import CheckpointInfo

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 2  # a job whose worker dies runs once more elsewhere
READY_SECONDS = 900.0  # a worker's start: its Service, the checkpoint's hash and load
CONTROL_SECONDS = 10.0


@dataclass
class Job:
    id: int
    label: str
    request: GenerationRequest
    values: dict[str, Any]
    future: Future = field(default_factory=Future)
    workers: list[str] = field(default_factory=list)  # who ran it, in order (more than one: retried)
    lost: list[str] = field(default_factory=list)  # why earlier attempts failed
    avoid: int | None = None  # the worker it died on
    started: float = 0.0
    seconds: float = 0.0


@dataclass
class WorkerHandle:
    index: int
    actor: Any
    node: str = ""
    pid: int = 0
    alive: bool = True

    @property
    def name(self) -> str:
        return f"worker {self.index} on {self.node} pid {self.pid}"


class WorkerPool:
    def __init__(self, ray: ModuleType, workers: list[WorkerHandle], checkpoint: CheckpointInfo | None, owns_ray: bool):
        self._ray = ray
        self.workers = workers
        self._checkpoint = checkpoint
        self._owns_ray = owns_ray
        self._ids = itertools.count(1)
        self._queue: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._running: dict[int, tuple[WorkerHandle, Job]] = {}
        self._closing = False
        self.retries: list[str] = []  # one line per retried job
        self.on_event: Callable[[str], None] = log.info
        self._threads = [threading.Thread(target=self._serve, args=(w,), name=f"ray-worker-{w.index}", daemon=True)
                         for w in workers]  # fmt: skip
        for t in self._threads:
            t.start()

    # --- jobs -----------------------------------------------------------------------------------
    def submit(self, request: GenerationRequest, settings: Settings) -> Future:
        return self.submit_job(request, settings).future

    def submit_job(self, request: GenerationRequest, settings: Settings, label: str = "") -> Job:
        """Queue a request for the next free worker, with the driver's settings and model."""
        with self._cond:
            if self._closing:
                raise ClusterError("the cluster is shut down")
            values = settings.to_dict()
            values["sd_model_checkpoint"] = self._checkpoint.title if self._checkpoint else ""
            job_id = next(self._ids)
            job = Job(job_id, label or f"generate({job_id})", request, values)
            self._queue.append(job)
            self._cond.notify_all()
        return job

    @property
    def pending(self) -> int:
        with self._cond:
            return sum(1 for j in self._queue if not j.future.cancelled())

    def _take(self, worker: WorkerHandle) -> Job | None:
        """The next job for `worker` (not one that just died on it while another worker lives)."""
        with self._cond:
            while not self._closing:
                others = any(w.alive for w in self.workers if w is not worker)
                for job in self._queue:
                    if job.avoid != worker.index or not others:
                        self._queue.remove(job)
                        self._running[job.id] = (worker, job)
                        return job
                self._cond.wait(0.5)
            return None

    def _serve(self, worker: WorkerHandle) -> None:
        while worker.alive:
            job = self._take(worker)
            if job is None:
                return
            if not job.workers and not job.future.set_running_or_notify_cancel():
                self._done(job)
                continue
            self._run(worker, job)

    def _run(self, worker: WorkerHandle, job: Job) -> None:
        ray = self._ray
        job.workers.append(worker.name)
        job.started = time.perf_counter()
        try:
            result = ray.get(worker.actor.generate.remote(job.request, job.values))
        except _actor_errors(ray) as e:
            self._done(job)
            self._lost(worker, job, e)
            return
        except Exception as e:  # the job's own error (a UserError with its message), unwrapped from Ray's
            self._done(job)
            job.future.set_exception(getattr(e, "cause", None) or e)
            return
        job.seconds = time.perf_counter() - job.started
        self._done(job)
        job.future.set_result(result)
        self.on_event(f"{worker.name}: {job.label} in {job.seconds:.2f}s")

    def _done(self, job: Job) -> None:
        with self._cond:
            self._running.pop(job.id, None)
            self._cond.notify_all()

    def _lost(self, worker: WorkerHandle, job: Job, error: Exception) -> None:
        """The worker died under `job`: retry it elsewhere (once), then wait for the worker's restart."""
        if self._closing:
            job.future.set_exception(ClusterError("the cluster was shut down during the job"))
            return
        why = f"{worker.name} died ({type(error).__name__})"
        job.lost.append(why)
        if len(job.workers) >= MAX_ATTEMPTS:
            job.future.set_exception(WorkerLostError(f"{job.label}: the workers running it died twice ({'; '.join(job.lost)}); "
                                                     "try again"))  # fmt: skip
        else:
            job.avoid = worker.index
            with self._cond:
                self._queue.appendleft(job)
                self._cond.notify_all()
            line = f"{job.label}: {why}; retrying on another worker"
            self.retries.append(line)
            self.on_event(line)
        self._await_restart(worker)

    def _await_restart(self, worker: WorkerHandle) -> None:
        try:
            info = self._ray.get(worker.actor.ready.remote(), timeout=READY_SECONDS)
        except Exception as e:  # restarts used up, or the node is gone for good
            worker.alive = False
            self.on_event(f"{worker.name} is gone ({type(e).__name__}); {sum(w.alive for w in self.workers)} left")
            with self._cond:
                self._cond.notify_all()
            return
        worker.node, worker.pid = info["node"], info["pid"]
        self.on_event(f"{worker.name}: restarted")

    # --- models ---------------------------------------------------------------------------------
    def select_checkpoint(self, info: CheckpointInfo) -> SwitchedModel:
        """Every worker switches after its running job; jobs queued from now on carry the new model."""
        with self._cond:
            self._checkpoint = info
        t0 = time.perf_counter()
        calls = [w.actor.select_checkpoint.remote(info.title) for w in self.workers if w.alive]
        try:
            self._ray.get(calls)
        except Exception as e:
            raise (getattr(e, "cause", None) or e) from None
        return SwitchedModel(info, time.perf_counter() - t0)

    def current_checkpoint(self) -> CheckpointInfo | None:
        return self._checkpoint

    def current_titles(self) -> list[str | None]:
        """Each living worker's loaded checkpoint (what a model switch reached)."""
        return self._ray.get([w.actor.current_title.remote() for w in self.workers if w.alive], timeout=CONTROL_SECONDS)

    # --- control and progress -------------------------------------------------------------------
    def _running_workers(self) -> list[tuple[WorkerHandle, Job]]:
        with self._cond:
            return sorted(self._running.values(), key=lambda wj: wj[1].id)

    def interrupt(self) -> bool:
        """Interrupt every running job (A1111's one Interrupt button)."""
        running = self._running_workers()
        for worker, _ in running:
            worker.actor.interrupt.remote()
        return bool(running)

    def skip(self) -> bool:
        running = self._running_workers()
        for worker, _ in running:
            worker.actor.skip.remote()
        return bool(running)

    def cancel(self, future: Future) -> str:
        if future.cancel():
            return "cancelled"
        for worker, job in self._running_workers():
            if job.future is future:
                worker.actor.interrupt.remote()
                return "interrupted"
        return "done"

    def progress(self) -> dict[str, Any]:
        """A1111's /progress of the oldest running job (from its worker), with the cluster's queue."""
        running = self._running_workers()
        out = None
        if running:
            worker, job = running[0]
            try:
                out = self._ray.get(worker.actor.progress.remote(), timeout=CONTROL_SECONDS)
                out["state"]["job"] = out["state"]["job"] and job.label
            except Exception as e:  # the worker is restarting: reported as idle for now
                log.debug("progress of %s: %s", worker.name, e)
        if out is None:
            out = _idle()
        out["queued"] = self.pending
        out["running"] = len(running)
        return out

    def cancel_queued(self) -> int:
        """Drop every job not yet running (their Futures are cancelled); how many there were."""
        with self._cond:
            queued, self._queue = list(self._queue), collections.deque()
        for job in queued:
            if not job.future.cancel():  # a retried job is already running for its caller
                job.future.set_exception(ClusterError(f"{job.label}: not run, the batch or server stopped"))
        return len(queued)

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self.cancel_queued()
        for w in self.workers:
            try:
                self._ray.kill(w.actor)
            except Exception as e:  # already gone
                log.debug("kill %s: %s", w.name, e)
        for t in self._threads:
            t.join(timeout=5)
        if self._owns_ray:
            self._ray.shutdown()


def _actor_errors(ray: ModuleType) -> tuple[type[BaseException], ...]:
    ex = ray.exceptions
    return tuple(e for e in (getattr(ex, "RayActorError", None), getattr(ex, "ActorUnavailableError", None)) if e)


def _idle() -> dict[str, Any]:
    state = {"skipped": False, "interrupted": False, "job": "", "job_count": 0, "job_timestamp": "",
             "job_no": 0, "sampling_step": 0, "sampling_steps": 0}  # fmt: skip
    return {"active": False, "progress": 0.0, "eta_relative": 0.0, "state": state, "current_image": None,
            "textinfo": ""}  # fmt: skip


def checkpoint_file(info: CheckpointInfo) -> dict[str, Any]:
    """What a worker compares with its own copy of the checkpoint: path, size, sha256 (None: --no-hashing)."""
    return {"filename": str(info.filename), "sha256": info.sha256, "size": Path(info.filename).stat().st_size}
