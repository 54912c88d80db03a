"""Running a planned folder batch through a ``Service``: one item at a time, outputs written atomically
(the depth map first, the main image last: it marks the item done, so an interrupted batch resumes).

The batch command and the web UI's Batch tab both use ``run_folder``.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, UnidentifiedImageError

from modules.core import depthmaps, images
from modules.core.errors import UserError, ValidationError
from modules.core.fileio import atomic_write_bytes
from modules.core.request import GenerationRequest
from modules.frontends.batch.plan import BatchItem, BatchOptions, fit_size, output_paths, plan_batch

if TYPE_CHECKING:
    from modules.app.service import Service

log = logging.getLogger(__name__)

@dataclass
class ItemOutcome:
    item: BatchItem
    status: str  # "done", "skipped" or "failed" ("interrupted" only inside run_folder)
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


def _image_size(path: Path, data: bytes) -> tuple[int, int]:
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValidationError(path.name, f"could not read the image ({e.__class__.__name__}: {e})") from e


def process_item(service: Service, template: GenerationRequest, item: BatchItem, options: BatchOptions) -> ItemOutcome:
    """Generate one input and write its outputs (depth map first, the main image last: it marks "done")."""

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
        written.append(atomic_write_bytes(path, depthmaps.depth_png16(result.depth_maps[0])))
    paths = output_paths(item, len(result.images))
    order = list(range(1, len(paths))) + [0]  # the main file last
    for i in order:
        written.append(atomic_write_bytes(paths[i], images.encode_image(result.images[i], result.infotexts[i], "png")))
    note = "; ".join(result.warnings)
    return ItemOutcome(item, "done", note, written, time.perf_counter() - t0)


def run_folder(
    service: Service,
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


def _run_one(service: Service, template: GenerationRequest, item: BatchItem, options: BatchOptions) -> ItemOutcome:
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
