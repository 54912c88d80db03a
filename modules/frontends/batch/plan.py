"""Planning a folder batch: the input images, each paired by name with its mask and depth map, and
the output paths (``<output>/<name>.png``, ``-2.png`` ... for more images per input).

Pairing: the same name, ``name-depth`` / ``name_mask`` ..., or the same frame number (Blender's
``Image0001.png`` with ``Depth0001.png``); a folder with one file uses it for every image.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from modules.core.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")

PARTNER_TAGS = ("depth", "mask", "z", "zdepth")  # "frame-depth.png" pairs with "frame.png"



@dataclass
class BatchOptions:
    """Where the files are and how outputs are written (the generation options are the template request)."""

    input_dir: Path
    output_dir: Path
    mask_dir: Path | None = None
    depth_dir: Path | None = None
    overwrite: bool = False
    size_from_input: bool = True  # width/height follow each input (multiples of 8) instead of the request's



@dataclass
class BatchItem:
    image: Path
    output: Path
    mask: Path | None = None
    depth: Path | None = None
    problem: str | None = None  # a pairing problem: the item fails with this message



def list_images(folder: Path) -> list[Path]:
    """Image files directly in `folder`, sorted by name (hidden files left out)."""
    return sorted(
        (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")),
        key=lambda p: p.name.lower(),
    )  # fmt: skip



def find_partner(image: Path, candidates: list[Path]) -> Path | None:
    """The file in `candidates` that belongs to `image`: same name; name + -depth/_mask...; same frame number."""
    if len(candidates) == 1:
        return candidates[0]  # one mask / depth map for every image (as A1111's batch mask folder)
    stem = image.stem.lower()
    by_stem = {c.stem.lower(): c for c in candidates}
    if stem in by_stem:
        return by_stem[stem]
    for tag in PARTNER_TAGS:
        for sep in ("-", "_", ".", " "):
            if f"{stem}{sep}{tag}" in by_stem:
                return by_stem[f"{stem}{sep}{tag}"]
    number = re.search(r"(\d+)$", stem)
    if number:
        same = [c for c in candidates if re.search(r"(?<!\d)" + number.group(1) + r"$", c.stem)]
        if len(same) == 1:
            return same[0]
    return None



def plan_batch(options: BatchOptions) -> list[BatchItem]:
    """The inputs with their masks, depth maps and output paths; a missing partner marks that item failed."""
    input_dir, output_dir = Path(options.input_dir), Path(options.output_dir)
    for name, folder in (("--input", input_dir), ("--mask-dir", options.mask_dir), ("--depth-dir", options.depth_dir)):
        if folder is not None and not Path(folder).is_dir():
            raise UserError(f"{name}: {folder} is not a folder")
    if output_dir.exists() and output_dir.resolve() == input_dir.resolve():
        raise UserError("--output must be another folder than --input (outputs would replace the inputs)")
    inputs = list_images(input_dir)
    if not inputs:
        raise UserError(f"--input: no images ({', '.join(IMAGE_SUFFIXES)}) in {input_dir}")
    masks = list_images(Path(options.mask_dir)) if options.mask_dir else []
    depths = list_images(Path(options.depth_dir)) if options.depth_dir else []
    items, seen = [], {}
    for path in inputs:
        item = BatchItem(path, output_dir / f"{path.stem}.png")
        problems = []
        if options.mask_dir:
            item.mask = find_partner(path, masks)
            if item.mask is None:
                problems.append(f"no mask for it in {options.mask_dir}")
        if options.depth_dir:
            item.depth = find_partner(path, depths)
            if item.depth is None:
                problems.append(f"no depth map for it in {options.depth_dir} (PNG/TIFF, 8 or 16 bit)")
        key = item.output.name.lower()
        if key in seen:
            problems.append(f"same name as {seen[key].name}: both would be written to {item.output.name}")
        seen.setdefault(key, path)
        item.problem = "; ".join(problems) or None
        items.append(item)
    return items



def fit_size(w: int, h: int, max_pixels: int) -> tuple[int, int]:
    """Output size for a w x h input: its own, scaled down to `max_pixels` if needed, in multiples of 8 (min 64)."""
    scale = min(1.0, (max_pixels / (w * h)) ** 0.5)
    return max(64, int(w * scale) // 8 * 8), max(64, int(h * scale) // 8 * 8)



def output_paths(item: BatchItem, count: int) -> list[Path]:
    """<name>.png, then <name>-2.png, <name>-3.png ... for the further images of one input."""
    return [item.output] + [item.output.with_name(f"{item.output.stem}-{i}.png") for i in range(2, count + 1)]
