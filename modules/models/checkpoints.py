"""Checkpoints on disk: scanning, hashing, config pairing, and loading into a model.

``CheckpointRegistry`` lists ``*.ckpt`` / ``*.safetensors`` under the model folders (recursively,
``*.vae.*`` excluded, sorted), each titled ``name [shorthash]`` with the file's sha256 (cached by
path + mtime in a JSON file, so each file is hashed once).  ``load_model`` is the one way a
checkpoint file becomes a ``StableDiffusionModel``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from modules.core.errors import CheckpointNotFoundError
from modules.core.fileio import atomic_write_text
from modules.models import ldm_config as model_config
from modules.models import safe_load as ckpt_io
from modules.models.precision import PrecisionPlan
from modules.models.sd_model import StableDiffusionModel, build_model, looks_like_v_prediction

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".ckpt", ".safetensors")
SHORTHASH_LEN = 10


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint file, named as A1111 names it."""

    filename: str  # absolute path
    name: str  # path relative to its model folder, e.g. "sd2/512-depth-ema.safetensors"
    model_name: str  # name without extension, "/" replaced by "_"
    sha256: str | None
    config: str | None  # the <name>.yaml beside the file, if any

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
    """sha256 of files, cached in a JSON file keyed by path and invalidated by mtime and size."""

    def __init__(self, path: Path | None):
        self.path = path
        self._lock = threading.Lock()
        self._data: dict[str, dict] = {}
        if path is not None and path.is_file():
            try:
                self._data = json.loads(path.read_text("utf-8")).get("hashes", {})
            except (OSError, ValueError) as e:
                log.warning("ignoring unreadable hash cache %s: %s", path, e)

    def sha256(self, file: Path) -> str:
        st = file.stat()
        key = f"checkpoint/{file.resolve()}"
        with self._lock:
            hit = self._data.get(key)
            if hit and hit.get("mtime") == st.st_mtime and hit.get("size") == st.st_size:
                return hit["sha256"]
        t0 = time.perf_counter()
        digest = sha256_file(file)
        log.info("Calculated sha256 of %s: %s (%.1fs)", file.name, digest[:SHORTHASH_LEN], time.perf_counter() - t0)
        with self._lock:
            self._data[key] = {"mtime": st.st_mtime, "size": st.st_size, "sha256": digest}
            self._save()
        return digest

    def _save(self) -> None:
        if self.path is None:
            return
        try:
            atomic_write_text(self.path, json.dumps({"hashes": self._data}, indent=1))
        except OSError as e:
            log.warning("could not write hash cache %s: %s", self.path, e)


def sha256_file(path: Path, block: int = 1 << 20) -> str:
    """Full-file sha256, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


class CheckpointRegistry:
    """The checkpoints found in the model folders; ``refresh()`` rescans."""

    def __init__(self, folders: list[Path], hash_cache: HashCache | None = None, *, hashing: bool = True):
        self.folders = [Path(f) for f in folders]
        self.hash_cache = hash_cache or HashCache(None)
        self.hashing = hashing
        self._items: list[CheckpointInfo] = []
        self._lock = threading.Lock()

    def refresh(self) -> list[CheckpointInfo]:
        found: dict[str, CheckpointInfo] = {}
        for folder in self.folders:
            if not folder.is_dir():
                continue
            for root, dirs, files in os.walk(folder, followlinks=True):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for fname in files:
                    path = Path(root) / fname
                    if not _is_checkpoint(fname):
                        continue
                    info = self._info(folder, path)
                    found.setdefault(info.filename, info)
        items = sorted(found.values(), key=lambda i: i.name.lower())
        with self._lock:
            self._items = items
        return list(items)

    def _info(self, folder: Path, path: Path) -> CheckpointInfo:
        name = path.relative_to(folder).as_posix()
        model_name = os.path.splitext(name.replace("/", "_"))[0]
        sha = self.hash_cache.sha256(path) if self.hashing else None
        cfg = model_config.sibling_config(path)
        return CheckpointInfo(str(path.resolve()), name, model_name, sha, str(cfg) if cfg else None)

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
    converted once here from the memory-mapped float32 tensors, which are dropped with the state dict.

    The config is `config_path`, else ``<name>.yaml`` beside the checkpoint, else detected from the
    weights.  ``.ckpt`` pickles are read with torch's allow-list unpickler unless `allow_unsafe`.
    """
    checkpoint_path = Path(checkpoint_path)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    sd = ckpt_io.read_state_dict(checkpoint_path, allow_unsafe=allow_unsafe)
    timings["read"] = time.perf_counter() - t0
    config, source = resolve_config(checkpoint_path, sd, config_path)
    model_config.check_matches(config, sd)
    model = build_model(config, sd, device=device, dtype=dtype, timings=timings, precision=precision)
    if source.startswith("detected") and config.family == "sd2":
        t1 = time.perf_counter()
        if looks_like_v_prediction(model.unet):
            v_config = model_config.load_config(model_config.CONFIGS_DIR / model_config.V_PREDICTION_CONFIG)
            model.config = v_config
            model.parameterization = "v"
            source += " (v-prediction)"
        timings["v-prediction test"] = time.perf_counter() - t1
    del sd
    log.info("%s: config %s (%s)", checkpoint_path.name, config.path.name, source)
    log.info("%s", model.report.summary())
    return model
