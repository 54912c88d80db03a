"""The img2img "Batch" sub-tab: every image of a folder on the server machine, through ``frontends.batch.runner.run_folder``.

The folders are typed paths on the machine the server runs on (as in A1111).  The generation
parameters are the img2img tab's; inputs pair with masks and depth maps by name (see
``frontends.batch.plan``).  Nothing here touches Gradio components: plain values in, plain values out.
"""

from __future__ import annotations

import io
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from modules.core import images
from modules.core.errors import ValidationError
from modules.core.request import GenerationRequest
from modules.frontends.batch.plan import IMAGE_SUFFIXES, BatchOptions, list_images
from modules.frontends.batch.runner import BatchReport, ItemOutcome
from modules.frontends.ui import forms
from modules.frontends.ui.outputs import OutputStore, ShownResult

LABELS = {
    "batch_input_dir": "Input directory",
    "batch_output_dir": "Output directory",
    "batch_mask_dir": "Inpaint batch mask directory",
    "batch_depth_dir": "Depth map directory",
}
log = logging.getLogger(__name__)

GALLERY_LIMIT = 32  # the gallery shows the last outputs of a long batch, not thousands of files


def _folder(values: dict[str, Any], name: str, *, required: bool, must_exist: bool = True) -> Path | None:
    """A typed folder path (~ expanded, made absolute), checked on the server's file system."""
    text = str(values.get(name) or "").strip()
    if not text:
        if required:
            raise ValidationError(name, f"type the {LABELS[name]} (a folder on the machine the server runs on)")
        return None
    path = Path(text).expanduser().absolute()
    if (must_exist or path.exists()) and not path.is_dir():
        raise ValidationError(name, f"{LABELS[name]}: {path} is not a folder on the server")
    return path


def batch_options(values: dict[str, Any]) -> BatchOptions:
    """The folders and file options from the Batch sub-tab, checked before anything runs."""
    input_dir = _folder(values, "batch_input_dir", required=True)
    output_dir = _folder(values, "batch_output_dir", required=True, must_exist=False)
    if output_dir.exists() and output_dir.resolve() == input_dir.resolve():
        raise ValidationError("batch_output_dir", "use another folder than the Input directory "
                                                  "(the outputs would replace the inputs)")  # fmt: skip
    if not list_images(input_dir):
        raise ValidationError("batch_input_dir", f"no images ({', '.join(IMAGE_SUFFIXES)}) in {input_dir}")
    return BatchOptions(
        input_dir,
        output_dir,
        mask_dir=_folder(values, "batch_mask_dir", required=False),
        depth_dir=_folder(values, "batch_depth_dir", required=False),
        overwrite=bool(values.get("batch_overwrite")),
        size_from_input=bool(values.get("batch_size_from_input")),
    )


def batch_tab(options: BatchOptions) -> str:
    """The extension tab a batch runs as: "inpaint" with a mask folder, else "img2img"."""
    return forms.script_tab("batch", inpaint=options.mask_dir is not None)


def batch_template(
    values: dict[str, Any], options: BatchOptions, *, scripts: list[str] | None = None
) -> GenerationRequest:
    """The request every input is run with (its image, mask and depth map are filled in per file), validated."""
    inpaint = options.mask_dir is not None
    fields = forms.generation_fields(values)
    if inpaint:
        fields.update(forms.inpaint_fields(values))
    if options.depth_dir is not None:
        fields["depth_invert"] = bool(values.get("batch_depth_invert"))
    else:  # MiDaS, or one uploaded depth map for every input
        fields.update(forms.depth_fields(values, required=True))
    fields.update(forms.img2img_fields(values))
    fields.update(forms.script_fields(values, scripts))
    fields["extension_args"] = forms.extension_args(values, batch_tab(options))
    return GenerationRequest(**fields).validate(template=True)


class BatchTracker:
    """The outcomes so far: ``run_folder`` calls it from its thread, the UI's poll reads a copy."""

    def __init__(self, total: int):
        self.total = total
        self._outcomes: list[ItemOutcome] = []
        self._lock = threading.Lock()

    def __call__(self, done: int, total: int, outcome: ItemOutcome) -> None:
        with self._lock:
            self._outcomes.append(outcome)

    def outcomes(self) -> list[ItemOutcome]:
        with self._lock:
            return list(self._outcomes)

    def counts(self) -> dict[str, int]:
        counts = {"done": 0, "skipped": 0, "failed": 0}
        for outcome in self.outcomes():
            counts[outcome.status] = counts.get(outcome.status, 0) + 1
        return counts


def _depth01(data: bytes) -> np.ndarray | None:
    """A written 16-bit depth PNG back to [0, 1] for the "Depth map used" preview."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            arr = np.asarray(img).astype(np.float32)
    except (UnidentifiedImageError, OSError, ValueError) as e:  # removed or replaced meanwhile: no preview
        log.warning("could not read a written depth map back: %s", e)
        return None
    if arr.ndim == 3:
        arr = arr[..., 0]
    return arr / (65535.0 if arr.max() > 255 else 255.0)


def _written(report: BatchReport) -> list[tuple[Path, Path | None]]:
    """(image, its depth map or None) for every image the batch wrote, main image of each input first."""
    out = []
    for outcome in (o for o in report.outcomes if o.status == "done"):
        depth_files = [p for p in outcome.outputs if p.name.endswith("-depth.png")]
        pictures = sorted((p for p in outcome.outputs if p not in depth_files), key=lambda p: p != outcome.item.output)
        out += [(picture, depth_files[0] if depth_files else None) for picture in pictures]
    return out


def shown_outputs(store: OutputStore, report: BatchReport, limit: int = GALLERY_LIMIT) -> ShownResult:
    """The last `limit` images the batch wrote, each with its infotext and the depth map used."""
    shown = ShownResult()
    previews: dict[Path, str] = {}
    for picture, depth_file in _written(report)[-limit:]:
        data = picture.read_bytes()
        if depth_file is not None and depth_file not in previews:
            depth01 = _depth01(depth_file.read_bytes())
            previews[depth_file] = store.depth(depth01) if depth01 is not None else None
        shown.images.append(store.write(data, picture.stem))
        shown.infotexts.append(images.read_infotext(data) or "")
        shown.depth_maps.append(previews.get(depth_file) if depth_file is not None else None)
    return shown
