"""Step 7 of a request: outputs. After-image hooks, infotext, the images saved atomically (with their
16-bit depth maps) and the grid."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from modules.core import depthmaps, images, infotext
from modules.core.fileio import atomic_write_bytes
from modules.core.hooks import ImageInfo
from modules.core.request import GenerationRequest, GenerationResult
from modules.core.settings import Settings
from modules.generation.job import Job

log = logging.getLogger(__name__)


def collect(job: Job, idx: list[int], seeds: list[int], subseeds: list[int], imgs: list[np.ndarray],
            depth_maps: list[np.ndarray | None]) -> None:  # fmt: skip
    """One finished batch: after-image hooks, infotext, saving, into the job's result."""
    request, result, hooks = job.request, job.result, job.ctx.hooks
    for j, (img, dmap) in enumerate(zip(imgs, depth_maps, strict=True)):
        info = ImageInfo(img, idx[j], seeds[j], request.prompt, request, dmap)
        replaced = hooks.after_image(info)
        img = info.image if replaced is None else replaced
        text = infotext.build(
            request, prompt=request.prompt, negative_prompt=request.negative_prompt, seed=seeds[j],
            subseed=subseeds[j], sampler=job.sampler.name, schedule=job.schedule, model_name=result.model_name,
            model_hash=result.model_hash or None, clip_skip=job.settings.CLIP_stop_at_last_layers,
            depth_source=job.inputs.depth_label,
            extra={**precision_field(job), **job.infotext, **hooks.infotext_fields(request)},
        )  # fmt: skip
        result.images.append(img)
        result.infotexts.append(text)
        result.seeds.append(seeds[j])
        result.subseeds.append(subseeds[j])
        result.prompts.append(request.prompt)
        result.negative_prompts.append(request.negative_prompt)
        if dmap is not None:
            result.depth_maps.append(dmap)
        save(result, request, job.settings, job.ctx.data_dir, img, dmap, seeds[j], text)


def precision_field(job: Job) -> dict[str, str]:
    """``Precision: bf16`` (or ``bf16 UNet``) when the model does not run in plain float32 (float32 infotext unchanged)."""
    label = job.model.precision_label
    return {} if label == "fp32" else {"Precision": label}


def outdirs(request: GenerationRequest, settings: Settings, data_dir: Path) -> tuple[Path, Path]:
    """(samples folder, grids folder) for the request's tab."""
    if request.is_img2img:
        return data_dir / settings.outdir_img2img_samples, data_dir / settings.outdir_img2img_grids
    return data_dir / settings.outdir_txt2img_samples, data_dir / settings.outdir_txt2img_grids


def save(result: GenerationResult, request: GenerationRequest, settings: Settings, data_dir: Path,
         img: np.ndarray, dmap: np.ndarray | None, seed: int, text: str) -> None:  # fmt: skip
    """Save one image (and its depth map) when saving is on; a failure becomes a warning, not an error."""
    if not (request.save_images and settings.samples_save):
        return
    folder, _ = outdirs(request, settings, data_dir)
    subdir = settings.directories_filename_pattern if settings.save_to_dirs else None
    try:
        path = images.save_image(img, folder, seed=seed, prompt=request.prompt, infotext=text,
                                 fmt=settings.samples_format, pattern=settings.samples_filename_pattern,
                                 subdir_pattern=subdir)  # fmt: skip
        result.saved_paths.append(str(path))
        if dmap is not None and settings.save_depth_maps:
            depth_path = path.with_name(path.stem + "-depth.png")
            atomic_write_bytes(depth_path, depthmaps.depth_png16(dmap))
            result.saved_paths.append(str(depth_path))
    except OSError as e:
        msg = f"could not save the image to {folder}: {e.strerror or e}"
        log.error(msg)
        if msg not in result.warnings:
            result.warnings.append(msg)


def save_grid(result: GenerationResult, request: GenerationRequest, settings: Settings, data_dir: Path) -> None:
    """The grid of a job's images (all of one size, two or more) into the result, and saved when saving is on."""
    if len(result.images) < 2 or not (request.save_grid and settings.grid_save):
        return
    if len({im.shape for im in result.images}) != 1:
        return
    result.grid = images.image_grid(result.images)
    path = write_grid(result.grid, request, settings, data_dir, seed=result.seeds[0], text=result.infotexts[0],
                      warnings=result.warnings)  # fmt: skip
    if path:
        result.saved_paths.append(path)


def write_grid(grid: np.ndarray, request: GenerationRequest, settings: Settings, data_dir: Path, *, seed: int,
               text: str, warnings: list[str]) -> str | None:  # fmt: skip
    """Save a grid image into the grids folder (when saving is on); returns its path."""
    if not (request.save_images and settings.samples_save and settings.grid_save):
        return None
    _, folder = outdirs(request, settings, data_dir)
    subdir = settings.directories_filename_pattern if settings.save_to_dirs else None
    try:
        path = images.save_image(grid, folder, seed=seed, prompt=request.prompt, infotext=text,
                                 fmt=settings.samples_format, subdir_pattern=subdir, suffix="-grid")  # fmt: skip
        return str(path)
    except OSError as e:
        warnings.append(f"could not save the grid to {folder}: {e.strerror or e}")
        return None
