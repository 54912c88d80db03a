"""Starting the real app (as webui.main builds it) on a loopback port, in-process, for API and browser tests."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from modules.app import bootstrap
from modules.app import options as cmd_args
from modules.frontends.server import App, create_app
from tests.helpers.ldm_layout import TinyCheckpoint


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def populate(data_dir: Path, *checkpoints: TinyCheckpoint) -> Path:
    """Copy tiny checkpoints (and their yaml) into data_dir/models/Stable-diffusion/."""
    folder = data_dir / "models" / "Stable-diffusion"
    folder.mkdir(parents=True, exist_ok=True)
    for ck in checkpoints:
        shutil.copy(ck.path, folder / ck.path.name)
        if ck.config_path is not None:
            shutil.copy(ck.config_path, folder / ck.config_path.name)
    return folder


@dataclass
class RunningServer:
    url: str
    port: int
    app: App
    server: uvicorn.Server


@contextmanager
def running_server(data_dir: Path, *extra_args: str) -> Iterator[RunningServer]:
    """The whole app as `python launch.py --data-dir DATA --port N ...` would build it, served in a thread."""
    port = free_port()
    args = cmd_args.parse_args(["--data-dir", str(data_dir), "--port", str(port), "--skip-install", *extra_args])
    bootstrap.configure_logging("WARNING")
    app = create_app(bootstrap.create_service(args), args)
    bootstrap.load_initial_model(app.service, args)
    server = uvicorn.Server(uvicorn.Config(app.fastapi, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield RunningServer(f"http://127.0.0.1:{port}", port, app, server)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        app.service.close()
