"""Result images as files the browser can show and download (PNG with the infotext inside).

The gallery shows files rather than arrays so that a downloaded image carries its "parameters"
chunk (PNG Info and A1111 read it back).  Files live in one folder owned by the UI (created by
``mount_ui``) and are pruned by age.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modules.core import depthmaps, images
from modules.core.request import GenerationResult

log = logging.getLogger(__name__)


@dataclass
class ShownResult:
    """What the UI keeps of the last result (in a gr.State): file paths and texts, plain data."""

    images: list[str] = field(default_factory=list)
    depth_maps: list[str | None] = field(default_factory=list)  # one per image; None: none for it (a grid)
    infotexts: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    subseeds: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    grid: bool = False  # the first image is a script's grid of the others

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> ShownResult:
        return cls(**data) if data else cls()


def grid_first(result: GenerationResult) -> bool:
    """Whether the first image is a script's grid (a plain batch's grid is saved to disk, not shown)."""
    grid = result.grid
    if grid is None or not result.images:
        return False
    first = result.images[0]
    return first is grid or (first.shape == grid.shape and np.array_equal(first, grid))


def depth_slots(count: int, depth_maps: list[str], *, grid: bool) -> list[str | None]:
    """One entry per image: a script's grid (the first image) has no depth map, its cells have theirs in order."""
    offset = 1 if grid else 0
    slots: list[str | None] = [None] * count
    for i, path in enumerate(depth_maps[: max(0, count - offset)]):
        slots[offset + i] = path
    return slots


class OutputStore:
    """Writes PNGs into `folder`; files older than `max_age_s` are deleted as new ones arrive."""

    def __init__(self, folder: Path, max_age_s: float = 6 * 3600):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_age_s = max_age_s

    def write(self, data: bytes, stem: str) -> str:
        path = self.folder / f"{stem}-{uuid.uuid4().hex[:12]}.png"
        path.write_bytes(data)
        return str(path)

    def image(self, arr: np.ndarray, infotext: str | None, stem: str = "image") -> str:
        return self.write(images.encode_image(arr, infotext, "png"), stem)

    def depth(self, depth01: np.ndarray) -> str:
        return self.image(np.asarray(depthmaps.depth_preview(depth01)), None, "depth")

    def save_result(self, result: GenerationResult) -> ShownResult:
        """Every image (with its infotext) and depth map of `result` as files, depth maps lined up with images."""
        self.prune()
        grid = grid_first(result)
        shown = ShownResult(seeds=list(result.seeds), subseeds=list(result.subseeds), infotexts=list(result.infotexts),
                            warnings=list(result.warnings), grid=grid)  # fmt: skip
        for i, arr in enumerate(result.images):
            text = result.infotexts[i] if i < len(result.infotexts) else None
            seed = result.seeds[i] if i < len(result.seeds) else i
            shown.images.append(self.image(arr, text, f"grid-{seed}" if grid and i == 0 else f"{seed}"))
        shown.depth_maps = depth_slots(len(result.images), [self.depth(d) for d in result.depth_maps], grid=grid)
        return shown

    def prune(self) -> None:
        cutoff = time.time() - self.max_age_s
        for path in self.folder.glob("*.png"):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
            except OSError as e:  # another request removed it first, or it is not ours to remove
                log.debug("could not prune %s: %s", path, e)
