"""LoRA / LyCORIS files on disk: the folder scan, names and aliases, metadata, hashes, the API listing.

As A1111's ``extensions-builtin/Lora``: every ``.safetensors`` / ``.pt`` / ``.ckpt`` under the folder
(sub-folders too) is a network named after its file (without extension); its alias is the
``ss_output_name`` of its safetensors metadata.  The hash is A1111's: for ``.safetensors`` the
kohya-ss "addnet" hash (sha256 of everything after the JSON header, so editing metadata keeps it),
for pickles the sha256 of the whole file; infotext shows its first 12 hex digits
(``Lora hashes: "name: 0123456789ab"``).  Pickles are read only through ``safe_load`` (torch's
allow-list unpickler): a file that would run code is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from modules.core.errors import UserError
from modules.models import model_files, safe_load
from modules.models.model_files import FileStamp
from modules.models.model_files import sha256_file as file_sha256

log = logging.getLogger(__name__)

NETWORK_SUFFIXES = (".safetensors", ".pt", ".ckpt")
SHORTHASH_LEN = 12


class NetworkNotFoundError(UserError):
    """A LoRA name that the LoRA folder does not hold."""

    status_code = 404


def read_safetensors_metadata(path: Path) -> dict[str, Any]:
    """The ``__metadata__`` of a safetensors header; JSON-looking values parsed (as A1111 shows them)."""
    try:
        with path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > min(path.stat().st_size - 8, 100 * 2**20):
                return {}
            header = json.loads(f.read(n))
    except (OSError, struct.error, ValueError) as e:
        log.warning("could not read the metadata of %s: %s", path.name, e)
        return {}
    raw = header.get("__metadata__") if isinstance(header, dict) else None
    return {k: _parse_value(v) for k, v in raw.items()} if isinstance(raw, dict) else {}


def _parse_value(value: Any) -> Any:
    if isinstance(value, str) and value[:1] == "{":
        try:
            return json.loads(value)
        except ValueError:
            pass
    return value


def addnet_hash(path: Path, block: int = 1 << 20) -> str:
    """kohya-ss' safetensors hash: sha256 of the file after its 8-byte length and JSON header."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        f.seek(8 + n)
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def _network_digest(path: Path) -> str:
    return addnet_hash(path) if path.suffix.lower() == ".safetensors" else file_sha256(path)


_digests = model_files.FileDigests(_network_digest)


def network_hash(path: Path) -> str:
    """A1111's hash of a network file (addnet hash for safetensors), cached by path, mtime and size."""
    return _digests.get(path)


@dataclass
class NetworkFile:
    """One network file, named as A1111 names it."""

    name: str  # file name without extension
    path: Path
    metadata: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def alias(self) -> str:
        return str(self.metadata.get("ss_output_name") or self.name)

    @property
    def stamp(self) -> tuple[str, FileStamp]:
        """Identity of the file's contents as far as the disk tells (size, mtime, ctime, inode)."""
        return model_files.identity(self.path)

    @property
    def sha256(self) -> str:
        return network_hash(self.path)

    @property
    def shorthash(self) -> str:
        return self.sha256[:SHORTHASH_LEN]

    def api_json(self) -> dict[str, Any]:
        """One entry of ``GET /sdapi/v1/loras`` (A1111's ``create_lora_json``)."""
        return {"name": self.name, "alias": self.alias, "path": str(self.path), "metadata": self.metadata}


def read_network_state_dict(path: Path, *, allow_unsafe: bool = False) -> dict[str, torch.Tensor]:
    """The file's tensors; a pickle that would run code raises UnsafeCheckpointError."""
    return safe_load.read_state_dict(path, allow_unsafe=allow_unsafe)


def scan(folders: list[Path]) -> list[NetworkFile]:
    """Network files under `folders` (sub-folders too, hidden ones skipped), sorted by relative path."""
    found: list[tuple[str, Path]] = []
    for folder in folders:
        for path in model_files.scan([folder], NETWORK_SUFFIXES):
            found.append((path.relative_to(folder).as_posix().lower(), path))
    found.sort()
    return [_describe(path) for _, path in found]


def _describe(path: Path) -> NetworkFile:
    meta = read_safetensors_metadata(path) if path.suffix.lower() == ".safetensors" else {}
    return NetworkFile(path.stem, path.resolve(), meta)


class NetworkRegistry:
    """The networks found in the LoRA folders; ``refresh()`` rescans, ``get`` finds by name or alias."""

    def __init__(self, folders: list[Path]):
        self.folders = [Path(f) for f in folders]
        self._items: dict[str, NetworkFile] = {}
        self._lock = threading.Lock()

    def refresh(self) -> list[NetworkFile]:
        items: dict[str, NetworkFile] = {}
        for net in scan(self.folders):
            if net.name in items:
                log.warning("LoRA %s: %s is shadowed by %s", net.name, net.path, items[net.name].path)
                continue
            items[net.name] = net
        with self._lock:
            self._items = items
        return list(items.values())

    def list(self) -> list[NetworkFile]:
        with self._lock:
            return list(self._items.values())

    def get(self, name: str) -> NetworkFile:
        """By file name, then by alias; rescans once before giving up."""
        for attempt in range(2):
            found = self._find(name)
            if found is not None:
                return found
            if attempt == 0:
                self.refresh()
        known = ", ".join(n.name for n in self.list()[:20]) or "none (put LoRA files into models/Lora/)"
        raise NetworkNotFoundError(f"LoRA {name!r} not found; available: {known}")

    def _find(self, name: str) -> NetworkFile | None:
        with self._lock:
            items = self._items
        if name in items:
            return items[name]
        aliased = [n for n in items.values() if n.alias == name]
        return aliased[0] if len(aliased) == 1 else None

    def api_list(self) -> list[dict[str, Any]]:
        """``GET /sdapi/v1/loras``: name, alias, path and metadata of each network."""
        return [n.api_json() for n in self.list()]
