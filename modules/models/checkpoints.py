"""Checkpoints on disk: scanning, hashing, config pairing, and loading into a model.

``CheckpointRegistry`` lists ``*.ckpt`` / ``*.safetensors`` under the model folders (recursively,
``*.vae.*`` excluded, sorted), each titled ``name [shorthash]`` with the file's sha256, cached in a
JSON file under the file's ``FileStamp`` (size, mtime, ctime, inode, device: any write changes the
ctime, so bytes written back with the same size and mtime are hashed again).  Symbolic links are
followed when they resolve inside the model folders (or anywhere with ``allow_links_out``); dangling
or looping ones, and links out of the folders, are skipped with a log line, never an error.
``load_model`` is the one way a checkpoint file becomes a ``StableDiffusionModel``.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from modules.core import memory
from modules.core.errors import CheckpointError, CheckpointNotFoundError
from modules.core.fileio import atomic_write_text
from modules.models import ldm_config as model_config
from modules.models import model_files
from modules.models import safe_load as ckpt_io
from modules.models.model_files import FileStamp, sha256_file
from modules.models.precision import PrecisionPlan, release_file_pages
from modules.models.sd_model import StableDiffusionModel, build_model, looks_like_v_prediction

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".ckpt", ".safetensors")
SHORTHASH_LEN = 10
# A file changed less than this before it is hashed waits this long first, so that a later write in the same
# timestamp tick (coarse clocks tick every 1-10 ms) cannot leave the stamp, and so the cached hash, unchanged.
SETTLE_NS = 20_000_000
HASH_ATTEMPTS = 3


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint file, named as A1111 names it."""

    filename: str  # absolute path
    name: str  # path relative to its model folder, e.g. "sd2/512-depth-ema.safetensors"
    model_name: str  # name without extension, "/" replaced by "_"
    sha256: str | None
    config: str | None  # the <name>.yaml beside the file, if any
    stamp: FileStamp | None = None  # the file as it was when `sha256` was computed (or when listed, without hashing)

    @property
    def shorthash(self) -> str | None:
        return self.sha256[:SHORTHASH_LEN] if self.sha256 else None

    @property
    def title(self) -> str:
        return f"{self.name} [{self.shorthash}]" if self.shorthash else self.name

    @property
    def aliases(self) -> tuple[str, ...]:
        found = [self.title, self.name, self.model_name, Path(self.name).name]
        if self.sha256:
            found += [self.sha256, self.shorthash]
        return tuple(found)


class HashCache:
    """sha256 of files, cached in a JSON file keyed by the resolved path and valid while the FileStamp is the same."""

    def __init__(self, path: Path | None):
        self.path = path
        self._lock = threading.Lock()
        self._data: dict[str, dict] = {}
        if path is not None and path.is_file():
            try:
                self._data = json.loads(path.read_text("utf-8")).get("hashes", {})
            except (OSError, ValueError, AttributeError) as e:
                log.warning("ignoring unreadable hash cache %s: %s", path, e)

    def sha256(self, file: Path) -> str:
        return self.lookup(file)[0]

    def cached(self, file: Path) -> tuple[str | None, FileStamp]:
        """The cached sha256 while the file's stamp is unchanged (None: not hashed yet), without hashing."""
        stamp = FileStamp.of(file)
        with self._lock:
            hit = self._data.get(f"checkpoint/{file.resolve()}")
        valid = hit and FileStamp.from_dict(hit) == stamp and isinstance(hit.get("sha256"), str)
        return (hit["sha256"] if valid else None), stamp

    def lookup(self, file: Path) -> tuple[str, FileStamp]:
        """The file's sha256 and the stamp it belongs to: from the cache if the stamp is unchanged, else hashed.

        A file that changes while it is hashed is hashed again; CheckpointError if it keeps changing."""
        key = f"checkpoint/{file.resolve()}"
        for _ in range(HASH_ATTEMPTS):
            before = FileStamp.of(file)
            with self._lock:
                hit = self._data.get(key)
            if hit and FileStamp.from_dict(hit) == before and isinstance(hit.get("sha256"), str):
                return hit["sha256"], before
            before = _settled(file, before)
            t0 = time.perf_counter()
            digest = sha256_file(file)
            after = FileStamp.of(file)
            if after == before:
                log.info("Calculated sha256 of %s: %s (%.1fs)", file.name, digest[:SHORTHASH_LEN],
                         time.perf_counter() - t0)  # fmt: skip
                with self._lock:
                    self._data[key] = {**dataclasses.asdict(after), "sha256": digest}
                    self._save()
                return digest, after
            log.warning("%s changed while it was hashed (%s); hashing it again", file.name, before.differences(after))
        raise CheckpointError(f"{file.name} kept changing while it was hashed; is a copy or download still running?")

    def _save(self) -> None:
        if self.path is None:
            return
        try:
            atomic_write_text(self.path, json.dumps({"hashes": self._data}, indent=1))
        except OSError as e:
            log.warning("could not write hash cache %s: %s", self.path, e)


def _settled(file: Path, stamp: FileStamp) -> FileStamp:
    """The stamp again after a short wait if the file changed just now (see SETTLE_NS)."""
    age = time.time_ns() - stamp.ctime_ns
    if age >= SETTLE_NS:
        return stamp
    time.sleep(min(SETTLE_NS, SETTLE_NS - age) / 1e9)
    return FileStamp.of(file)


class CheckpointRegistry:
    """The checkpoints found in the model folders; ``refresh()`` rescans (and never raises for a bad entry)."""

    def __init__(
        self,
        folders: list[Path],
        hash_cache: HashCache | None = None,
        *,
        hashing: bool = True,
        allow_links_out: bool = False,
        lazy: bool = False,
    ):
        self.folders = [Path(f) for f in folders]
        self.hash_cache = hash_cache or HashCache(None)
        self.hashing = hashing
        self.allow_links_out = allow_links_out  # --allow-symlinks-out: list links that point out of the folders
        # lazy (the app's choice, as A1111): a new file is listed at once, unhashed, and hashed when first loaded
        self.lazy = lazy
        self._items: list[CheckpointInfo] = []
        self._lock = threading.Lock()

    def refresh(self) -> list[CheckpointInfo]:
        roots = _resolved_roots(self.folders)
        found: dict[str, CheckpointInfo] = {}
        for folder in self.folders:
            for path in self._walk(folder, roots):
                info = self._info_or_skip(folder, path)
                if info is not None:
                    found.setdefault(info.filename, info)
        items = sorted(found.values(), key=lambda i: i.name.lower())
        with self._lock:
            self._items = items
        return list(items)

    def _walk(self, folder: Path, roots: list[Path]) -> Iterator[Path]:
        """Checkpoint files under `folder`, each folder visited once (a link back up is not a loop forever)."""
        return model_files.walk(folder, _is_checkpoint, link_ok=lambda path: self._link_ok(path, roots))

    def _link_ok(self, path: Path, roots: list[Path]) -> bool:
        """A link is followed when its target exists and lies inside the model folders (or links out are allowed)."""
        try:
            target = path.resolve(strict=True)
        except (OSError, RuntimeError) as e:  # RuntimeError: Python 3.11's "Symlink loop"
            loop = isinstance(e, RuntimeError) or getattr(e, "errno", None) == errno.ELOOP
            what = "a link loop" if loop else "a dangling link (its target does not exist)"
            log.warning("Skipping %s: %s -> %s", path, what, _readlink(path))
            return False
        if self.allow_links_out or any(target == r or r in target.parents for r in roots):
            return True
        log.warning("Skipping %s: a link to %s, outside the model folders (start with --allow-symlinks-out to list it)",
                    path, target)  # fmt: skip
        return False

    def _info_or_skip(self, folder: Path, path: Path) -> CheckpointInfo | None:
        try:
            return self._info(folder, path)
        except (OSError, CheckpointError) as e:  # gone, unreadable, or still being written: skipped, listed later
            log.warning("Skipping %s: %s", path, getattr(e, "strerror", None) or e)
            return None

    def _info(self, folder: Path, path: Path) -> CheckpointInfo:
        name = path.relative_to(folder).as_posix()
        model_name = os.path.splitext(name.replace("/", "_"))[0]
        sha, stamp = self._hash(path, listing=True)
        cfg = model_config.sibling_config(path)
        return CheckpointInfo(str(path.resolve()), name, model_name, sha, str(cfg) if cfg else None, stamp)

    def _hash(self, path: Path, *, listing: bool = False) -> tuple[str | None, FileStamp]:
        if not self.hashing:
            return None, FileStamp.of(path)
        return self.hash_cache.cached(path) if listing and self.lazy else self.hash_cache.lookup(path)

    def unhashed(self) -> list[CheckpointInfo]:
        """Listed checkpoints whose sha256 is not known yet (lazy listing): hashed when first loaded."""
        return [i for i in self.list() if self.hashing and i.sha256 is None]

    def with_hash(self, info: CheckpointInfo) -> CheckpointInfo:
        """`info` with its sha256 (computed now if the listing left it out); the list is updated."""
        return self.rehash(info) if self.hashing and info.sha256 is None else info

    def rehash(self, info: CheckpointInfo) -> CheckpointInfo:
        """`info` for its file as it is now (new stamp, new sha256), replacing it in the list."""
        try:
            sha, stamp = self._hash(Path(info.filename))
        except OSError as e:
            raise CheckpointError(f"{info.name}: {e.strerror or e} ({info.filename})") from e
        fresh = dataclasses.replace(info, sha256=sha, stamp=stamp)
        if fresh.sha256 != info.sha256 and info.sha256 is not None:  # None: listed lazily, hashed now
            log.warning("%s changed on disk: sha256 %s -> %s", info.name, info.shorthash, fresh.shorthash)
        with self._lock:
            self._items = [fresh if i.filename == info.filename else i for i in self._items]
        return fresh

    def list(self) -> list[CheckpointInfo]:
        with self._lock:
            return list(self._items)

    def titles(self) -> list[str]:
        return [i.title for i in self.list()]

    def get(self, alias: str) -> CheckpointInfo:
        """By title, name, model name, file name, sha256 or short hash; never by a path outside the folders."""
        alias = (alias or "").strip()
        items = self.list()
        for info in items:
            if alias in info.aliases:
                return info
        matches = [i for i in items if alias and alias.lower() in i.title.lower()]
        if len(matches) == 1:
            return matches[0]
        known = ", ".join(i.title for i in items[:10]) or "none (put checkpoints in models/Stable-diffusion/)"
        raise CheckpointNotFoundError(f"checkpoint {alias!r} not found; available: {known}")


def _resolved_roots(folders: list[Path]) -> list[Path]:
    roots = []
    for folder in folders:
        try:
            roots.append(folder.resolve(strict=True))
        except (OSError, RuntimeError):
            continue
    return roots


def _readlink(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return "?"


def _is_checkpoint(fname: str) -> bool:
    lower = fname.lower()
    return lower.endswith(CHECKPOINT_SUFFIXES) and ".vae." not in lower and not lower.startswith(".")


def resolve_config(
    checkpoint_path: Path, state_dict: dict[str, torch.Tensor], config_path: str | Path | None
) -> tuple[model_config.ModelConfig, str]:
    """The config to build with and where it came from: explicit, beside the file, or detected."""
    if config_path is not None:
        return model_config.load_config(config_path), "given"
    sibling = model_config.sibling_config(checkpoint_path)
    if sibling is not None:
        return model_config.load_config(sibling), "beside the checkpoint"
    found = model_config.detect(state_dict)
    path = model_config.CONFIGS_DIR / model_config.FAMILY_CONFIG[found.family]
    return model_config.load_config(path), f"detected {found.family}"


_COMPONENT_PREFIXES = (("model.diffusion_model.", "unet"), ("cond_stage_model.", "text_encoder"),
                       ("first_stage_model.", "vae"))  # fmt: skip


def _cast_on_read(precision: PrecisionPlan | None):
    """The tensors of each part that a CPU plan gives bfloat16 weights (the UNet; the text encoder and VAE
    where the plan says so) become bfloat16 as they are read, so that part is never all in float32."""
    if precision is None:
        return None
    lower = tuple(prefix for prefix, part in _COMPONENT_PREFIXES if getattr(precision, part) == torch.bfloat16)
    if not lower:
        return None
    return lambda key: torch.bfloat16 if key.startswith(lower) else None


def load_model(
    checkpoint_path: str | Path,
    config_path: str | Path | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    allow_unsafe: bool = False,
    precision: PrecisionPlan | None = None,
) -> StableDiffusionModel:
    """Load a checkpoint in the original LDM layout into a StableDiffusionModel.

    With `precision` each component gets the plan's dtype (`dtype` then unused): a bfloat16 UNet is
    converted once here from the float32 tensors read from the file (each in memory of its own, see
    ``safe_load``), which are freed with the state dict.

    The config is `config_path`, else ``<name>.yaml`` beside the checkpoint, else detected from the
    weights.  ``.ckpt`` pickles are read with torch's allow-list unpickler unless `allow_unsafe`.
    """
    checkpoint_path = Path(checkpoint_path)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    sd = ckpt_io.read_state_dict(checkpoint_path, allow_unsafe=allow_unsafe, cast=_cast_on_read(precision))
    timings["read"] = time.perf_counter() - t0
    config, source = resolve_config(checkpoint_path, sd, config_path)
    model_config.check_matches(config, sd)
    model = build_model(config, sd, device=device, dtype=dtype, timings=timings, precision=precision)
    if precision is not None and model.dtype != torch.float32 and model.device.type == "cpu":
        # With a mapped file (mmap=True) the converted UNet's float32 pages leave the resident set now (the
        # rest stays mapped); read into memory (the default), they are freed with `sd` below.
        cast = _cast_on_read(precision)
        converted = [t for k, t in sd.items() if cast is not None and cast(k) and t.dtype == torch.float32]
        freed = release_file_pages(converted, checkpoint_path)
        if freed:
            log.info("%s: %d MiB of float32 pages released after the %s conversion", checkpoint_path.name,
                     freed >> 20, str(model.dtype).removeprefix("torch."))  # fmt: skip
    if source.startswith("detected") and config.family == "sd2":
        t1 = time.perf_counter()
        if looks_like_v_prediction(model.unet):
            v_config = model_config.load_config(model_config.CONFIGS_DIR / model_config.V_PREDICTION_CONFIG)
            model.config = v_config
            model.parameterization = "v"
            source += " (v-prediction)"
        timings["v-prediction test"] = time.perf_counter() - t1
    del sd
    if precision is not None and model.dtype != torch.float32:
        memory.release_freed_memory()  # the float32 UNet's freed tensors back to the OS, not kept in the heap
    log.info("%s: config %s (%s)", checkpoint_path.name, config.path.name, source)
    log.info("%s", model.report.summary())
    return model
