"""Atomic file writes: a temporary file in the same folder, flushed and fsynced, then renamed.

A process killed mid-write leaves either the old file or the new one, never a truncated one (at
worst a ``.<name>.<random>.tmp`` file beside it).  The new file gets the mode a plain ``open()``
would give it (0666 minus the umask), or the mode of the file it replaces.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def _create_temp(path: Path) -> tuple[int, Path]:
    """An exclusive new file beside `path`; the kernel applies the umask (mkstemp would make it 0600)."""
    mode = path.stat().st_mode & 0o7777 if path.exists() else 0o666
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, flags, mode)
        except FileExistsError:
            continue
        if path.exists():
            os.chmod(tmp, mode)  # keep the replaced file's mode exactly (the umask may have narrowed it)
        return fd, tmp
    raise FileExistsError(f"could not create a temporary file beside {path}")


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))
