"""``python launch.py batch --input DIR --output DIR [options]``: img2img / inpainting over a folder.

Each input image is paired by name with a mask (``--mask-dir``) and a depth map (``--depth-dir``),
e.g. a Blender render's colour and depth passes, and goes through the same ``process`` as the web
UI and the API (``Service.generate``).  ``<output>/<input name>.png`` gets the image with its
infotext (``-2.png``, ``-3.png`` ... for more images per input) and ``<name>-depth.png`` the 16-bit
depth map that was used.  An input whose output exists is skipped, so an interrupted batch resumes
where it stopped (``--overwrite`` redoes everything).  The exit status is 0 when every file was done
or skipped, 1 (with a list) when some failed, 2 for a usage error, 130 when interrupted.

A thin command line over ``plan`` (pairing) and ``runner`` (``run_folder``); the Service is built by
the composition root (``app.bootstrap``) from the same setup flags as the web UI's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from modules.app.checks import check_request
from modules.app.options import LOG_LEVELS, Options, add_setup_flags
from modules.core import samplers
from modules.core.errors import UserError
from modules.core.request import (
    INPAINT_AREA_LABELS,
    MASK_MODE_LABELS,
    MASKED_CONTENT_LABELS,
    RESIZE_MODE_LABELS,
    GenerationRequest,
)
from modules.core.settings import Settings
from modules.frontends.batch.plan import BatchItem, BatchOptions, plan_batch
from modules.frontends.batch.runner import BatchReport, ItemOutcome, run_folder

if TYPE_CHECKING:
    from modules.app.service import Service

def build_parser() -> argparse.ArgumentParser:
    d = GenerationRequest()
    p = argparse.ArgumentParser(
        prog="launch.py batch",
        description="img2img / inpainting / depth-to-image over a folder, with the same engine as the web UI. "
        "Files are paired by name; existing outputs are skipped, so an interrupted batch resumes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    files = p.add_argument_group("files")
    files.add_argument("--input", required=True, type=Path, help="folder of input (colour) images")
    files.add_argument("--output", required=True, type=Path, help="folder for <name>.png (+ <name>-depth.png)")
    files.add_argument("--mask-dir", type=Path, help="inpainting masks, paired by name (one file: used for all)")
    files.add_argument(
        "--depth-dir", type=Path, help="depth maps (8/16-bit, white = near), paired by name or frame number"
    )
    files.add_argument("--overwrite", action="store_true", help="redo inputs whose output already exists")

    g = p.add_argument_group("generation (A1111 names)")
    g.add_argument("--prompt", default=d.prompt)
    g.add_argument("--negative-prompt", default=d.negative_prompt)
    g.add_argument("--steps", type=int, default=d.steps)
    g.add_argument("--cfg-scale", type=float, default=d.cfg_scale)
    g.add_argument("--denoising-strength", type=float, default=d.denoising_strength)
    g.add_argument("--sampler", default=d.sampler_name, help="sampler name, e.g. 'Euler a', 'DPM++ 2M'")
    g.add_argument("--scheduler", default=d.scheduler,
                   help=f"schedule type: {', '.join(samplers.SCHEDULE_TYPES)} (or A1111's names, e.g. sgm_uniform)")
    g.add_argument("--seed", type=int, default=d.seed, help="-1: a random seed per image; else the same for all")
    g.add_argument("--subseed", type=int, default=d.subseed)
    g.add_argument("--subseed-strength", type=float, default=d.subseed_strength)
    g.add_argument("--width", type=int, default=None, help="output width (default: each input's, multiple of 8)")
    g.add_argument("--height", type=int, default=None, help="output height (default: each input's)")
    g.add_argument("--batch-size", type=int, default=d.batch_size)
    g.add_argument("--n-iter", type=int, default=d.n_iter, help="batch count: images per input = n-iter x batch-size")
    g.add_argument("--resize-mode", default="0", help="index or label: " + ", ".join(RESIZE_MODE_LABELS))
    g.add_argument("--mask-blur", type=int, default=d.mask_blur_x)
    g.add_argument("--inpainting-fill", default=str(int(d.inpainting_fill)),
                   help="masked content, index or label: " + ", ".join(MASKED_CONTENT_LABELS))  # fmt: skip
    g.add_argument("--inpaint-full-res", action="store_true", help=f"inpaint area '{INPAINT_AREA_LABELS[1]}'")
    g.add_argument("--inpaint-full-res-padding", type=int, default=d.inpaint_full_res_padding)
    g.add_argument("--inpainting-mask-invert", action="store_true", help=f"'{MASK_MODE_LABELS[1]}'")
    g.add_argument("--depth-invert", action="store_true", help="depth maps are z-depth (far = larger, e.g. Blender Z)")

    add_setup_flags(p)  # the web UI's own flags for folders, checkpoints, device, precision and memory
    p.add_argument("--log-level", default="WARNING", choices=LOG_LEVELS)
    return p


def request_from_args(args: argparse.Namespace) -> GenerationRequest:
    """The template request (images are filled in per file), validated up front."""
    if bool(args.width) != bool(args.height):
        raise UserError("give both --width and --height, or neither (then each input's own size is used)")
    req = GenerationRequest(
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        steps=args.steps,
        cfg_scale=args.cfg_scale,
        denoising_strength=args.denoising_strength,
        sampler_name=args.sampler,
        scheduler=args.scheduler,
        seed=args.seed,
        subseed=args.subseed,
        subseed_strength=args.subseed_strength,
        width=args.width or 512,
        height=args.height or 512,
        batch_size=args.batch_size,
        n_iter=args.n_iter,
        resize_mode=args.resize_mode,
        mask_blur_x=args.mask_blur,
        mask_blur_y=args.mask_blur,
        inpainting_fill=args.inpainting_fill,
        inpaint_full_res=int(args.inpaint_full_res),
        inpaint_full_res_padding=args.inpaint_full_res_padding,
        inpainting_mask_invert=int(args.inpainting_mask_invert),
        depth_invert=args.depth_invert,
        override_settings={"sd_model_checkpoint": args.ckpt} if args.ckpt else {},
        override_settings_restore_afterwards=False,
    )
    req.sampler_name = samplers.find_sampler(req.sampler_name).name
    return check_request(req, Settings(max_output_pixels=2**62, max_batch_images=2**31), template=True)


def main(argv: list[str]) -> int:
    """``python launch.py batch ...``; returns the exit status."""
    args = build_parser().parse_args(argv)
    from modules.app import bootstrap  # torch & co.: imported when there is work, so --help stays quick

    bootstrap.prepare_process(args.log_level)
    options = BatchOptions(args.input, args.output, args.mask_dir, args.depth_dir, args.overwrite,
                           size_from_input=not (args.width or args.height))  # fmt: skip
    try:
        template = request_from_args(args)
        items = plan_batch(options)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    service = bootstrap.create_service(Options.from_namespace(args))
    try:
        if args.ckpt:
            service.find_checkpoint(args.ckpt)
        report = _run_with_bar(service, template, options, items)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        service.close()
    print(f"Batch: {report.summary(len(items))}\nOutputs in {options.output_dir}", file=sys.stderr)
    if report.failed:
        return 1
    return 130 if report.interrupted else 0


def _run_with_bar(service: Service, template: GenerationRequest, options: BatchOptions, items: list[BatchItem]) -> BatchReport:
    """run_folder with a tqdm progress bar (ETA), failures printed as they happen."""
    from tqdm import tqdm

    bar = tqdm(total=len(items), unit="img", desc="batch", dynamic_ncols=True, file=sys.stderr)
    counts = {"done": 0, "skipped": 0, "failed": 0}

    def progress(done: int, total: int, outcome: ItemOutcome) -> None:
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
        if outcome.status == "failed":
            tqdm.write(f"FAILED {outcome.item.image.name}: {outcome.message}", file=sys.stderr)
        bar.set_postfix(counts, refresh=False)
        bar.update(1)

    try:
        if service.jobs is not None:  # --ray: the items run on the cluster's workers, written here
            from modules.frontends.batch.ray_runner import run_folder_on_cluster

            return run_folder_on_cluster(service, template, options, items, progress,
                                         lambda line: tqdm.write(line, file=sys.stderr))  # fmt: skip
        return run_folder(service, template, options, progress, items=items)
    finally:
        bar.close()
