"""Joining a Ray cluster: ``local`` (a throwaway instance here), ``auto`` (the one this machine joined),
or an address (``ray://host:10001``, ``host:6379``), with one clear error when that cannot be done.

An address is first probed with a plain TCP connect (a few seconds): ``ray.init`` itself waits for a
GCS that does not answer for minutes.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from types import ModuleType

from modules.app.cluster import RAY_REQUIREMENT, ClusterError

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[3]
PROBE_SECONDS = 5.0


def import_ray() -> ModuleType:
    """The ray module, or a ClusterError saying how to install it."""
    try:
        import ray
    except ImportError as e:
        raise ClusterError(f"Ray not installed: pip install '{RAY_REQUIREMENT}' (needed for --ray)") from e
    return ray


def host_port(address: str) -> tuple[str, int] | None:
    """('host', port) of a 'ray://host:port' or 'host:port' address; None for 'local' / 'auto'."""
    if address in ("local", "auto"):
        return None
    rest = address.removeprefix("ray://")
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ClusterError(f"--ray {address!r}: expected local, auto, ray://HOST:PORT or HOST:PORT")
    return host.strip("[]"), int(port)


def probe(address: str, timeout: float = PROBE_SECONDS) -> None:
    """Raise ClusterError unless something listens at the address's host and port."""
    target = host_port(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=timeout):
            pass
    except OSError as e:
        raise ClusterError(f"--ray {address}: no Ray cluster answers there ({e.strerror or e}); "
                           "start one with `ray start --head` or check the address") from e  # fmt: skip


def connect(address: str, *, num_cpus: int | None = None) -> tuple[ModuleType, bool]:
    """ray, initialised for `address`; the flag says whether this process started the instance (local)."""
    ray = import_ray()
    probe(address)
    if ray.is_initialized():
        return ray, False
    runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}}
    kwargs = {"runtime_env": runtime_env, "log_to_driver": True}
    try:
        if address == "local":
            ray.init(num_cpus=num_cpus, include_dashboard=False, **kwargs)
        else:
            ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, TimeoutError) as e:
        raise ClusterError(f"--ray {address}: could not join the cluster ({e})") from e
    log.info("Ray cluster %s: %s", address, ray.cluster_resources())
    return ray, address == "local"
