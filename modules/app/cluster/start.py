"""Starting the worker pool: join the cluster, check it has room, start N actors, refuse any worker
that cannot see the driver's checkpoint (missing, or a different file), naming its node."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from types import ModuleType
from typing import Any

from modules.app.cluster import ClusterError
from modules.app.cluster.actor import GenerationActor
from modules.app.cluster.connect import connect
from modules.app.cluster.pool import READY_SECONDS, WorkerHandle, WorkerPool, checkpoint_file
from modules.models.checkpoints import CheckpointInfo

log = logging.getLogger(__name__)
ACTOR_THREADS = 8  # generate + progress / interrupt / skip / model switch calls at once
ACTOR_RESTARTS = 4


def start_pool(
    options: Any,
    build_service: Callable[[Any], Any],
    checkpoint: CheckpointInfo | None,
    *,
    num_cpus: int | None = None,
) -> WorkerPool:
    """`options.ray_workers` actors on the cluster at `options.ray`, each with its own Service built by
    `build_service(options without --ray)` and `checkpoint` loaded; ClusterError when that cannot be."""
    if options.ray == "local" and num_cpus is None:
        num_cpus = max(os.cpu_count() or 1, options.ray_workers)  # a throwaway instance: room for every worker
    ray, owns = connect(options.ray, num_cpus=num_cpus)
    try:
        return _start(ray, owns, options, build_service, checkpoint)
    except BaseException:
        if owns:
            ray.shutdown()
        raise


def _start(ray: ModuleType, owns: bool, options: Any, build_service: Callable, checkpoint: CheckpointInfo | None) -> WorkerPool:
    count = options.ray_workers
    if count < 1:
        raise ClusterError(f"--ray-workers {count}: give at least 1")
    gpus = _gpus_per_worker(ray, options.ray_gpus_per_worker, count)
    worker_options = dataclasses.replace(options, ray=None)
    wanted = {"file": checkpoint_file(checkpoint), "title": checkpoint.title} if checkpoint else None
    remote = ray.remote(GenerationActor).options(
        max_concurrency=ACTOR_THREADS, max_restarts=ACTOR_RESTARTS, num_cpus=1, num_gpus=gpus
    )
    actors = [remote.remote(worker_options, build_service, wanted) for _ in range(count)]
    workers = [WorkerHandle(i + 1, a) for i, a in enumerate(actors)]
    try:
        _check_ready(ray, workers)
    except BaseException:
        for a in actors:
            ray.kill(a)
        raise
    for w in workers:
        log.info("%s ready", w.name)
    return WorkerPool(ray, workers, checkpoint, owns)


def _gpus_per_worker(ray: ModuleType, asked: float | None, count: int) -> float:
    """--ray-gpus-per-worker, or 1 when the cluster has GPUs and 0 when it has none; checked against the cluster."""
    have = ray.cluster_resources()
    gpus = (1.0 if have.get("GPU", 0) >= 1 else 0.0) if asked is None else float(asked)
    if have.get("CPU", 0) < count:
        raise ClusterError(f"--ray-workers {count}: the cluster has {have.get('CPU', 0):g} CPU(s), each worker needs 1")
    if gpus and have.get("GPU", 0) < gpus * count:
        raise ClusterError(f"--ray-workers {count} x --ray-gpus-per-worker {gpus:g}: the cluster has "
                           f"{have.get('GPU', 0):g} GPU(s)")  # fmt: skip
    return gpus


def _check_ready(ray: ModuleType, workers: list[WorkerHandle]) -> None:
    """Wait for every worker's start; the first refusal (or start failure) is the error, naming the node."""
    try:
        infos = ray.get([w.actor.ready.remote() for w in workers], timeout=READY_SECONDS)
    except Exception as e:
        cause = getattr(e, "cause", None) or e
        raise ClusterError(f"a cluster worker could not start: {type(cause).__name__}: {cause}") from e
    problems = []
    for w, info in zip(workers, infos, strict=True):
        w.node, w.pid = info["node"], info["pid"]
        if info["problem"]:
            problems.append(f"worker {w.index} on node {w.node} refused: {info['problem']}")
    if problems:
        raise ClusterError("; ".join(problems))
