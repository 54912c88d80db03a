"""Batch img2img / inpainting over a folder: ``python launch.py batch --input DIR --output DIR [options]``.

Each input image is paired by name with a mask (``--mask-dir``) and a depth map (``--depth-dir``),
e.g. a Blender render's colour and depth passes, and goes through the same ``process`` as the web
UI and the API (``Service.generate``).  ``<output>/<input name>.png`` gets the image with its
infotext (``-2.png``, ``-3.png`` ... for more images per input) and ``<name>-depth.png`` the 16-bit
depth map that was used.  An input whose output exists is skipped, so an interrupted batch resumes
where it stopped (``--overwrite`` redoes everything).  The exit status is 0 when every file was done
or skipped, 1 (with a list) when some failed, 2 for a usage error, 130 when interrupted.

The web UI's Batch tab uses the same pieces: ``plan_batch`` pairs the files and ``run_batch`` runs
them with a Service, a template request and a progress callback.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import logging
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from modules.errors import UserError, ValidationError
from modules.fileio import atomic_write_bytes
from modules.request import (
    INPAINT_AREA_LABELS,
    MASK_MODE_LABELS,
    MASKED_CONTENT_LABELS,
    RESIZE_MODE_LABELS,
    GenerationRequest,
)

log = logging.getLogger(__name__)

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


@dataclass
class ItemOutcome:
    item: BatchItem
    status: str  # "done", "skipped" or "failed" ("interrupted" only inside run_batch)
    message: str = ""
    outputs: list[Path] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class BatchReport:
    outcomes: list[ItemOutcome] = field(default_factory=list)
    interrupted: bool = False
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def failed(self) -> list[ItemOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    def summary(self, total: int | None = None) -> str:
        total = len(self.outcomes) if total is None else total
        head = (
            f"{self.count('done')} done, {self.count('skipped')} skipped (already done), "
            f"{self.count('failed')} failed, of {total} in {self.seconds:.1f}s"
        )
        if self.interrupted:
            head += f"; interrupted: {total - len(self.outcomes)} not started (run again to resume)"
        lines = [head] + [f"  FAILED {o.item.image.name}: {o.message}" for o in self.failed]
        return "\n".join(lines)


# --- pairing ----------------------------------------------------------------------------------------


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


# --- running ----------------------------------------------------------------------------------------


def fit_size(w: int, h: int, max_pixels: int) -> tuple[int, int]:
    """Output size for a w x h input: its own, scaled down to `max_pixels` if needed, in multiples of 8 (min 64)."""
    scale = min(1.0, (max_pixels / (w * h)) ** 0.5)
    return max(64, int(w * scale) // 8 * 8), max(64, int(h * scale) // 8 * 8)


def _image_size(path: Path, data: bytes) -> tuple[int, int]:
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValidationError(path.name, f"could not read the image ({e.__class__.__name__}: {e})") from e


def output_paths(item: BatchItem, count: int) -> list[Path]:
    """<name>.png, then <name>-2.png, <name>-3.png ... for the further images of one input."""
    return [item.output] + [item.output.with_name(f"{item.output.stem}-{i}.png") for i in range(2, count + 1)]


def process_item(service, template: GenerationRequest, item: BatchItem, options: BatchOptions) -> ItemOutcome:
    """Generate one input and write its outputs (depth map first, the main image last: it marks "done")."""
    from modules import depth, images  # torch & co.: imported when there is work, so --help stays quick

    t0 = time.perf_counter()
    data = item.image.read_bytes()
    request = dataclasses.replace(
        template,
        init_images=[data],
        mask=item.mask.read_bytes() if item.mask else None,
        depth_map=item.depth.read_bytes() if item.depth else template.depth_map,
        save_images=False,
        save_grid=False,
    )
    if options.size_from_input:
        w, h = _image_size(item.image, data)
        request.width, request.height = fit_size(w, h, service.settings.max_output_pixels)
    result = service.generate(request)
    if result.interrupted:
        return ItemOutcome(item, "interrupted", "stopped before it finished", seconds=time.perf_counter() - t0)
    if not result.images:
        return ItemOutcome(
            item, "failed", "skipped while generating: no image was made", seconds=time.perf_counter() - t0
        )
    written = []
    if result.depth_maps:
        path = item.output.with_name(f"{item.output.stem}-depth.png")
        written.append(atomic_write_bytes(path, depth.depth_png16(result.depth_maps[0])))
    paths = output_paths(item, len(result.images))
    order = list(range(1, len(paths))) + [0]  # the main file last
    for i in order:
        written.append(atomic_write_bytes(paths[i], images.encode_image(result.images[i], result.infotexts[i], "png")))
    note = "; ".join(result.warnings)
    return ItemOutcome(item, "done", note, written, time.perf_counter() - t0)


def run_batch(
    service,
    template: GenerationRequest,
    options: BatchOptions,
    progress: Callable[[int, int, ItemOutcome], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    items: list[BatchItem] | None = None,
) -> BatchReport:
    """Run every planned item through ``service.generate``; ``progress(done, total, outcome)`` after each.

    Failures are recorded and the batch goes on; an interrupted job (or `should_stop`) ends the batch
    with that item not done, so the next run resumes there.
    """
    items = plan_batch(options) if items is None else items
    Path(options.output_dir).mkdir(parents=True, exist_ok=True)
    report = BatchReport()
    t0 = time.perf_counter()
    try:
        for item in items:
            if should_stop is not None and should_stop():
                report.interrupted = True
                break
            outcome = _run_one(service, template, item, options)
            if outcome.status == "interrupted":
                report.interrupted = True
                break
            report.outcomes.append(outcome)
            if progress is not None:
                progress(len(report.outcomes), len(items), outcome)
    except KeyboardInterrupt:
        service.interrupt()
        report.interrupted = True
    report.seconds = time.perf_counter() - t0
    return report


def _run_one(service, template: GenerationRequest, item: BatchItem, options: BatchOptions) -> ItemOutcome:
    if item.output.exists() and not options.overwrite:
        return ItemOutcome(item, "skipped", "output exists")
    if item.problem:
        return ItemOutcome(item, "failed", item.problem)
    try:
        return process_item(service, template, item, options)
    except UserError as e:
        return ItemOutcome(item, "failed", str(e))
    except OSError as e:
        return ItemOutcome(item, "failed", f"{e.strerror or e}: {e.filename or ''}".rstrip(": "))
    except Exception as e:  # a bug: reported with its traceback, the other files still run
        log.exception("batch: %s failed", item.image.name)
        return ItemOutcome(item, "failed", f"internal error {type(e).__name__}: {e}")


# --- command line -----------------------------------------------------------------------------------


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
    g.add_argument("--scheduler", default=d.scheduler, help="schedule type: Automatic, Uniform, Karras, Exponential")
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
    g.add_argument("--ckpt", default=None, help="checkpoint (name, title or hash); default: the web UI's last one")

    s = p.add_argument_group("setup (as for the web UI)")
    s.add_argument("--data-dir", type=Path, default=None, help="where models/ and config.json live")
    s.add_argument("--ckpt-dir", type=Path, default=None, help="extra folder scanned for checkpoints")
    s.add_argument("--no-hashing", action="store_true")
    s.add_argument("--disable-safe-unpickle", action="store_true", help="full unpickler for .ckpt: trusted files only")
    s.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"])
    s.add_argument("--precision", default="autocast", choices=["full", "autocast"])
    s.add_argument("--no-half", action="store_true")
    vram = s.add_mutually_exclusive_group()
    vram.add_argument("--medvram", action="store_true", help="weights in RAM, each part on the GPU while it runs")
    vram.add_argument("--lowvram", action="store_true", help="as --medvram with smaller parts: least VRAM, slowest")
    s.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
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
    from modules import samplers

    spec = samplers.find_sampler(req.sampler_name)
    req.sampler_name = spec.name
    samplers.resolve_schedule(spec, req.scheduler)
    probe = dataclasses.replace(req, init_images=[b"probe"])
    probe.validate(max_pixels=2**62, max_images=2**31)
    return dataclasses.replace(probe, init_images=[])


def webui_args(args: argparse.Namespace) -> argparse.Namespace:
    """The web UI's flags for the same setup, so the Service is built exactly as webui builds it."""
    from modules import cmd_args

    argv = ["--skip-install", "--device", args.device, "--precision", args.precision, "--log-level", args.log_level]
    if args.data_dir is not None:
        argv += ["--data-dir", str(args.data_dir)]
    if args.ckpt_dir is not None:
        argv += ["--ckpt-dir", str(args.ckpt_dir)]
    for flag in ("no_hashing", "disable_safe_unpickle", "no_half", "medvram", "lowvram"):
        if getattr(args, flag):
            argv.append("--" + flag.replace("_", "-"))
    return cmd_args.parse_args(argv)


def main(argv: list[str]) -> int:
    """``python launch.py batch ...``; returns the exit status."""
    args = build_parser().parse_args(argv)
    import webui  # the composition root: the Service is built the way the web UI builds it

    webui.configure_logging(args.log_level)
    options = BatchOptions(args.input, args.output, args.mask_dir, args.depth_dir, args.overwrite,
                           size_from_input=not (args.width or args.height))  # fmt: skip
    try:
        template = request_from_args(args)
        items = plan_batch(options)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import torch

    torch.set_grad_enabled(False)
    service = webui.create_service(webui_args(args))
    try:
        if args.ckpt:
            service.registry.get(args.ckpt)
        report = _run_with_bar(service, template, options, items)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        service.worker.stop()
    print(f"Batch: {report.summary(len(items))}\nOutputs in {options.output_dir}", file=sys.stderr)
    if report.failed:
        return 1
    return 130 if report.interrupted else 0


def _run_with_bar(service, template: GenerationRequest, options: BatchOptions, items: list[BatchItem]) -> BatchReport:
    """run_batch with a tqdm progress bar (ETA), failures printed as they happen."""
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
        return run_batch(service, template, options, progress, items=items)
    finally:
        bar.close()
