"""One registry of upscalers for the Extras tab, hires. fix and SD upscale.

Names, as A1111 lists them: ``None``, ``Lanczos``, ``Nearest``, then one entry per model file (named
by its file stem) under ``<data>/models/{ESRGAN,RealESRGAN,SwinIR,DAT}/`` and any extra folders
(``--upscaler-dir``), searched recursively.  The latent modes (``Latent``, ``Latent (bicubic)``, ...)
are not upscalers of images; see ``modules.models.upscaling.latent``.

Models are loaded on first use and cached, one at a time, in float32 on the registry's device.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from modules.models.upscaling import latent, loading, tiling
from modules.models.upscaling.errors import UnknownUpscalerError

log = logging.getLogger(__name__)

NONE, LANCZOS, NEAREST = "None", "Lanczos", "Nearest"
BUILTIN_UPSCALERS = (NONE, LANCZOS, NEAREST)
MODEL_FOLDERS = ("ESRGAN", "RealESRGAN", "SwinIR", "DAT")
A1111_DEFAULT_SCALE = 4.0  # what A1111 reports for an upscaler whose scale it does not know
_SCALE_IN_NAME = re.compile(r"(?:^|[^a-z0-9])(?:([1-8])x|x([1-8]))(?![0-9])")


@dataclass(frozen=True)
class UpscalerInfo:
    """One entry of the upscaler list."""

    name: str
    kind: str  # "None" / "Lanczos" / "Nearest", or the model folder's name ("ESRGAN", ...)
    path: Path | None = None  # the model file; None for the built-ins

    @property
    def is_model(self) -> bool:
        return self.path is not None


def target_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """A1111's destination for "upscale by": each side times ``scale``, rounded down to a multiple of 8."""
    return max(8, int(width * scale) // 8 * 8), max(8, int(height * scale) // 8 * 8)


def scale_from_name(name: str) -> float | None:
    """The scale a file name announces (``4x_foolhardy_Remacri``, ``RealESRGAN_x2plus``), if any."""
    m = _SCALE_IN_NAME.search(name.lower())
    return float(m.group(1) or m.group(2)) if m else None


def _model_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    files = [p for p in folder.rglob("*") if p.suffix.lower() in loading.MODEL_SUFFIXES and p.is_file()]
    return sorted(files, key=lambda p: str(p.relative_to(folder)).lower())


def scan_folders(folders: Sequence[tuple[str, Path]]) -> list[UpscalerInfo]:
    """Built-ins, then each ``(kind, folder)``'s model files; a repeated stem gets its kind appended."""
    found = [UpscalerInfo(name, name) for name in BUILTIN_UPSCALERS]
    taken = set(BUILTIN_UPSCALERS) | set(latent.LATENT_UPSCALE_MODES)
    for kind, folder in folders:
        for path in _model_files(folder):
            name = path.stem
            if name in taken:
                name = f"{path.stem} ({kind})"
            if name in taken:
                name = f"{path.stem} ({path.relative_to(folder).as_posix()})"
            taken.add(name)
            found.append(UpscalerInfo(name, kind, path.resolve()))
    return found


class UpscalerRegistry:
    """The upscalers on disk plus the built-ins; loads and caches the model of the last one used."""

    def __init__(
        self,
        data_dir: Path | None = None,
        extra_dirs: Sequence[Path] = (),
        *,
        device: torch.device | str = "cpu",
        allow_unsafe: bool = False,
    ):
        models = Path(data_dir) / "models" if data_dir is not None else None
        self.folders: list[tuple[str, Path]] = [(k, models / k) for k in MODEL_FOLDERS] if models else []
        self.folders += [(Path(d).name or str(d), Path(d)) for d in extra_dirs]
        self.device = torch.device(device)
        self.allow_unsafe = allow_unsafe
        self._lock = threading.Lock()
        self._entries: list[UpscalerInfo] | None = None
        self._loaded: tuple[tuple[Path, int, int], Any] | None = None
        self._scales: dict[Path, float] = {}

    # --- the list ------------------------------------------------------------------------------
    def refresh(self) -> list[UpscalerInfo]:
        """Scan the folders again (new or removed files)."""
        entries = scan_folders(self.folders)
        with self._lock:
            self._entries = entries
        return entries

    def upscalers(self) -> list[UpscalerInfo]:
        return list(self._entries) if self._entries is not None else self.refresh()

    def names(self) -> list[str]:
        return [u.name for u in self.upscalers()]

    def hires_names(self) -> list[str]:
        """Choices for hires. fix's upscaler, as A1111 offers them: the latent modes, then the upscalers."""
        return [*latent.LATENT_UPSCALE_MODES, *self.names()]

    def get(self, name: str) -> UpscalerInfo:
        for entry in self.upscalers():
            if entry.name == name:
                return entry
        hint = " (a latent mode: use upscale_latent on latents)" if latent.is_latent_mode(name) else ""
        raise UnknownUpscalerError(f"unknown upscaler {name!r}{hint}; choose one of {', '.join(self.names())}")

    def scale_of(self, entry: UpscalerInfo) -> float | None:
        """The model's native scale once loaded, else what its file name says; None if unknown."""
        if entry.path is None:
            return A1111_DEFAULT_SCALE
        return self._scales.get(entry.path) or scale_from_name(entry.path.stem)

    def listing(self) -> list[dict[str, Any]]:
        """The body of ``GET /sdapi/v1/upscalers`` (A1111's ``UpscalerItem`` fields)."""
        return [
            {
                "name": u.name,
                "model_name": u.kind if u.is_model else None,
                "model_path": str(u.path) if u.path else None,
                "model_url": None,
                "scale": self.scale_of(u) or A1111_DEFAULT_SCALE,
            }
            for u in self.upscalers()
        ]

    # --- models --------------------------------------------------------------------------------
    def load(self, name: str) -> Any:
        """The spandrel ``ImageModelDescriptor`` of a model upscaler (cached while it stays the last used)."""
        entry = self.get(name)
        if entry.path is None:
            raise UnknownUpscalerError(f"{name!r} is a built-in upscaler; it has no model")
        stat = entry.path.stat() if entry.path.exists() else None
        key = (entry.path, stat.st_mtime_ns if stat else 0, stat.st_size if stat else 0)
        with self._lock:
            if self._loaded is not None and self._loaded[0] == key:
                return self._loaded[1]
            self._loaded = None  # free the previous model before building the next one
            log.info("Loading upscaler %s from %s", name, entry.path)
            descriptor = loading.load_descriptor(entry.path, self.device, allow_unsafe=self.allow_unsafe)
            self._loaded = (key, descriptor)
            self._scales[entry.path] = float(descriptor.scale)
            return descriptor

    def unload(self) -> None:
        with self._lock:
            self._loaded = None

    # --- images --------------------------------------------------------------------------------
    def upscale(
        self,
        image: Image.Image | np.ndarray,
        name: str,
        *,
        scale: float | None = None,
        size: tuple[int, int] | None = None,
        tile: int = tiling.DEFAULT_TILE,
        overlap: int = tiling.DEFAULT_TILE_OVERLAP,
        progress: tiling.ProgressFn | None = None,
        interrupted: tiling.InterruptFn | None = None,
    ) -> Image.Image:
        """``image`` upscaled by ``name`` to ``size`` = (width, height), or to ``target_size(.., scale)``.

        ``None`` and ``Lanczos`` resize with Lanczos (as A1111 does for the ``None`` upscaler once it
        is called; the Extras tab skips it before), ``Nearest`` with nearest neighbour; a model runs
        at its native scale as often as needed (at most 3 passes), in tiles of ``tile`` pixels with
        ``overlap`` pixels of context (0: no tiling), then Lanczos gives the exact size.
        ``progress(done, total)`` is called after each tile; ``interrupted()`` is checked between
        tiles and raises ``UpscaleInterrupted``.  Returns an RGB image.
        """
        entry = self.get(name)
        img = _as_rgb(image)
        dest = _destination(img, scale, size)
        if entry.path is None:
            resample = Image.Resampling.NEAREST if entry.name == NEAREST else Image.Resampling.LANCZOS
            return tiling.resize(img, dest, resample)
        descriptor = self.load(name)
        return tiling.upscale_with_model(
            descriptor, int(descriptor.scale), img, dest, device=self.device, tile=max(0, int(tile)),
            overlap=max(0, int(overlap)), progress=progress, interrupted=interrupted,
        )  # fmt: skip


def _as_rgb(image: Image.Image | np.ndarray) -> Image.Image:
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise ValueError(f"expected an (H, W) or (H, W, C) uint8 array, got {image.dtype} {image.shape}")
        image = Image.fromarray(image)
    return image if image.mode == "RGB" else image.convert("RGB")


def _destination(image: Image.Image, scale: float | None, size: tuple[int, int] | None) -> tuple[int, int]:
    if (scale is None) == (size is None):
        raise ValueError("give exactly one of scale and size")
    if size is not None:
        width, height = int(size[0]), int(size[1])
        if width < 1 or height < 1:
            raise ValueError(f"target size must be positive, got {size}")
        return width, height
    if not scale or scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    return target_size(image.width, image.height, scale)
