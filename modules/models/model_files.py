"""What every kind of model file shares: finding files in a folder tree, and their sha256 (cached).

Used by the checkpoint list (``checkpoints``), LoRA networks (``networks.files``), embeddings and VAE
files.  ``walk`` visits each folder once (a link back up is no endless loop), skips hidden entries,
goes through sorted names, and asks ``link_ok`` about each symbolic link (the checkpoint list keeps
links inside its folders only).  ``FileDigests`` caches a digest per file while its path, mtime and
size stay the same.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


def sha256_file(path: Path, block: int = 1 << 20) -> str:
    """Full-file sha256, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:
        return False


def walk(folder: Path, keep: Callable[[str], bool], link_ok: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Files under `folder` whose name `keep` accepts, each folder visited once, hidden entries skipped."""
    folder = Path(folder)
    seen: set[tuple[int, int]] = set()
    pending = [folder]
    while pending:
        current = pending.pop()
        try:
            st = current.stat()
            entries = sorted(os.scandir(current), key=lambda e: e.name)
        except OSError as e:
            if current != folder or folder.exists():
                log.warning("Skipping folder %s: %s", current, e.strerror or e)
            continue
        if (st.st_dev, st.st_ino) in seen:
            log.warning("Skipping %s: a link loop (that folder is already listed)", current)
            continue
        seen.add((st.st_dev, st.st_ino))
        subfolders = []
        for entry in entries:
            path = Path(entry.path)
            if entry.name.startswith(".") or (entry.is_symlink() and link_ok is not None and not link_ok(path)):
                continue
            if _is_dir(path):
                subfolders.append(path)
            elif keep(entry.name):
                yield path
        pending.extend(reversed(subfolders))


def scan(folders: list[Path], suffixes: tuple[str, ...]) -> list[Path]:
    """Files with one of `suffixes` (any case) under each existing folder, in walking order."""
    found: list[Path] = []
    for folder in folders:
        if Path(folder).is_dir():
            found += walk(folder, lambda name: name.lower().endswith(suffixes))
    return found


@dataclass(frozen=True)
class FileStamp:
    """What ``stat`` says about a file's identity and contents; any write or replacement changes it."""

    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int
    dev: int

    @classmethod
    def of(cls, path: str | Path) -> FileStamp:
        st = os.stat(path)
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)

    @classmethod
    def from_dict(cls, d: dict) -> FileStamp | None:
        """A stamp stored in the hash cache; None for an entry without all fields (an older cache: hash again)."""
        try:
            return cls(*(int(d[f.name]) for f in dataclasses.fields(cls)))
        except (KeyError, TypeError, ValueError):
            return None

    def differences(self, other: FileStamp) -> str:
        """What changed, for the log ('size 100 -> 50, inode')."""
        out = []
        for f in dataclasses.fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if a != b:
                out.append(f"size {a} -> {b}" if f.name == "size" else f.name.replace("_ns", ""))
        return ", ".join(out) or "nothing"


def identity(path: Path) -> tuple[str, FileStamp]:
    """A model file's identity as far as the disk tells (path and stamp): what caches of its contents key on."""
    return str(path), FileStamp.of(path)


class FileDigests:
    """A digest per file (sha256 by default), computed once while its path and FileStamp are the same (a
    rewrite with the same size and mtime still changes the ctime: computed again)."""

    def __init__(self, digest: Callable[[Path], str] = sha256_file):
        self.digest = digest
        self._lock = threading.Lock()
        self._items: dict[tuple[str, FileStamp], str] = {}

    def get(self, path: Path) -> str:
        key = (str(Path(path).resolve()), FileStamp.of(path))
        with self._lock:
            hit = self._items.get(key)
        if hit is None:
            hit = self.digest(Path(path))
            with self._lock:
                self._items[key] = hit
        return hit
