"""A planned folder batch on the cluster's workers (``--ray``): the driver's side.

The driver plans the batch (pairing, resume: an input whose output exists is skipped), hands the
items to the workers (at most two per worker in flight, so a long sequence is never all in memory),
and writes every output itself, atomically, with the same code as the single-process batch
(``runner._run_one`` / ``process_item``), so the outputs are the same pixel for pixel and the output
folder need exist only here.  An item whose worker died is retried on another one (``WorkerPool``);
it is written once, when a worker returns it, and the summary lists what was retried.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modules.core.request import GenerationRequest, GenerationResult
from modules.frontends.batch.plan import BatchItem, BatchOptions
from modules.frontends.batch.runner import BatchReport, ItemOutcome, _run_one

log = logging.getLogger(__name__)
IN_FLIGHT_PER_WORKER = 2  # one running, one waiting on each worker: no worker idles between items


class _Stopped(BaseException):
    """The batch was interrupted before this item ran (not an item failure)."""


@dataclass
class ClusterBatchReport(BatchReport):
    retried: list[str] = field(default_factory=list)
    workers: int = 0

    def summary(self, total: int | None = None) -> str:
        head = super().summary(total) + f" on {self.workers} Ray worker(s)"
        if not self.retried:
            return head
        return "\n".join([head, f"{len(self.retried)} retried after a worker died:"] + [f"  {r}" for r in self.retried])


class _ItemDoor:
    """What ``process_item`` uses of a Service (``settings``, ``generate``), for one item on the cluster."""

    def __init__(self, service: Any, label: str, stop: threading.Event, log_line: Callable[[str], None]):
        self._service, self._label, self._stop, self._log_line = service, label, stop, log_line

    @property
    def settings(self) -> Any:
        return self._service.settings

    def generate(self, request: GenerationRequest) -> GenerationResult:
        if self._stop.is_set():
            raise _Stopped
        job = self._service.jobs.submit_job(request, self._service.settings, label=self._label)
        try:
            result = job.future.result()
        except CancelledError:
            raise _Stopped from None
        retried = f" (retried: {'; '.join(job.lost)})" if job.lost else ""
        self._log_line(f"{job.workers[-1]}: {self._label} in {job.seconds:.2f}s{retried}")
        return result


def run_folder_on_cluster(
    service: Any,
    template: GenerationRequest,
    options: BatchOptions,
    items: list[BatchItem],
    progress: Callable[[int, int, ItemOutcome], None] | None = None,
    log_line: Callable[[str], None] = log.info,
) -> ClusterBatchReport:
    """Run every planned item on `service.jobs` (the Ray pool); ``progress(done, total, outcome)`` after each."""
    pool = service.jobs
    Path(options.output_dir).mkdir(parents=True, exist_ok=True)
    report = ClusterBatchReport(workers=len(pool.workers))
    first_retry = len(pool.retries)
    pool.on_event = log_line
    stop = threading.Event()
    t0 = time.perf_counter()

    def one(item: BatchItem) -> ItemOutcome:
        try:
            return _run_one(_ItemDoor(service, item.image.name, stop, log_line), template, item, options)
        except _Stopped:
            return ItemOutcome(item, "interrupted", "not run: the batch was interrupted")

    executor = ThreadPoolExecutor(max_workers=IN_FLIGHT_PER_WORKER * len(pool.workers), thread_name_prefix="batch")
    futures = [executor.submit(one, item) for item in items]
    try:
        for future in as_completed(futures):
            outcome = future.result()
            if outcome.status == "interrupted":
                report.interrupted = True
                continue
            report.outcomes.append(outcome)
            if progress is not None:
                progress(len(report.outcomes), len(items), outcome)
    except KeyboardInterrupt:
        stop.set()
        pool.cancel_queued()
        service.interrupt()
        report.interrupted = True
    finally:
        executor.shutdown(wait=not report.interrupted, cancel_futures=True)
    report.retried = pool.retries[first_retry:]
    report.seconds = time.perf_counter() - t0
    return report
