"""Where the web UI's uploads go, and how they leave: a folder of ours, swept on a timer, removed at exit.

Gradio writes every upload (and the files it caches for outputs) under ``GRADIO_TEMP_DIR`` (its
``get_upload_folder()``; the system temp folder's ``gradio/`` by default, where nothing is ever
deleted).  ``UploadFolder.create`` makes a fresh folder for this server and points Gradio at it before
the Blocks are built; files older than the time to live are deleted by ``sweep`` (run from a daemon
thread every ``interval`` seconds, and at most once a minute on uploads), and the whole folder when
the process ends.  Gradio keeps no folder per browser session, so the age of a file is what counts.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)
GRADIO_TEMP_ENV = "GRADIO_TEMP_DIR"


class UploadFolder:
    def __init__(self, folder: Path, ttl_seconds: float, *, clock: Callable[[], float] = time.time,
                 interval: float = 60.0):  # fmt: skip
        self.folder = Path(folder)
        self.ttl_seconds = ttl_seconds
        self.clock = clock
        self.interval = interval
        self._last_sweep = -float("inf")
        self._lock = threading.Lock()
        self._stop = threading.Event()

    @classmethod
    def create(cls, ttl_seconds: float) -> UploadFolder:
        """The process' upload folder, set as Gradio's (call before building the Blocks).

        One that ``GRADIO_TEMP_DIR`` already names (the user's, or this process' from a first server) is
        used and swept; otherwise a fresh one is made, removed when the process ends."""
        current = os.environ.get(GRADIO_TEMP_ENV)
        if current and Path(current).is_dir():
            return cls(Path(current), ttl_seconds)
        folder = Path(tempfile.mkdtemp(prefix="sd2-depth-uploads-"))
        os.environ[GRADIO_TEMP_ENV] = str(folder)  # Gradio's documented setting, read when its app is built
        uploads = cls(folder, ttl_seconds)
        weakref.finalize(uploads, shutil.rmtree, str(folder), True)  # removed at exit (or when dropped)
        return uploads

    def start(self) -> None:
        """Sweep every `interval` seconds on a daemon thread until ``stop``."""
        thread = threading.Thread(target=self._loop, name="upload-sweeper", daemon=True)
        thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sweep()

    def maybe_sweep(self) -> None:
        """Sweep unless one ran within the last `interval` seconds (called on each upload)."""
        if self.clock() - self._last_sweep >= self.interval:
            self.sweep()

    def sweep(self) -> int:
        """Delete files older than the time to live, then empty folders; returns how many files went."""
        with self._lock:
            now = self.clock()
            self._last_sweep = now
            removed = 0
            for root, dirs, files in os.walk(self.folder, topdown=False):
                for name in files:
                    path = Path(root) / name
                    try:
                        if now - path.lstat().st_mtime > self.ttl_seconds:
                            path.unlink()
                            removed += 1
                    except OSError:
                        continue
                for name in dirs:
                    try:
                        (Path(root) / name).rmdir()  # only when empty
                    except OSError:
                        pass
        if removed:
            log.info("deleted %d web UI upload(s) older than %g min", removed, self.ttl_seconds / 60)
        return removed

    def size(self) -> tuple[int, int]:
        """(files, bytes) in the folder now."""
        files = total = 0
        for root, _, names in os.walk(self.folder):
            for name in names:
                try:
                    total += (Path(root) / name).lstat().st_size
                    files += 1
                except OSError:
                    pass
        return files, total
