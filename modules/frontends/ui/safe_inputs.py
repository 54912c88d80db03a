"""Image inputs that never fail in Gradio's own preprocessing, and the app's words for an unreadable upload.

Gradio decodes an upload before our handler runs (``gr.Image`` opens it, ``gr.ImageMask`` converts it);
a corrupt or truncated file then raises inside Gradio, which shows its own toast with a traceback and the
temp path.  These subclasses (same Svelte components: ``get_block_name`` is the parent's) hand such a
value over as ``Unreadable`` instead, and ``read_image_bytes`` turns it, or bytes that do not decode, into
a ``UserError`` naming the input ("the init image could not be read: truncated PNG").
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image, UnidentifiedImageError

from modules.core.errors import UserError

log = logging.getLogger(__name__)
_FAILURES = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)


@dataclass(frozen=True)
class Unreadable:
    """An upload Gradio could not decode: where it was and why, in words."""

    path: str | None
    reason: str


def reason_of(error: BaseException, path: str | Path | None = None) -> str:
    """A short reason without a traceback or a temp path: "truncated PNG", "not an image file"."""
    fmt = _format_of(path)
    text = str(error).lower()
    if isinstance(error, UnidentifiedImageError) or "cannot identify" in text:
        return "not an image file (PNG, JPEG, WebP, BMP or TIFF)"
    if "truncat" in text or "broken data stream" in text or "premature end" in text:
        return f"truncated {fmt}".strip() if fmt else "the file is truncated"
    if isinstance(error, Image.DecompressionBombError):
        return "the picture is too large"
    if isinstance(error, FileNotFoundError):
        return "the uploaded file is gone (upload it again)"
    return f"{type(error).__name__}: {str(error).split(chr(10))[0][:120]}".replace(str(path or "\0"), "<file>")


def _format_of(path: str | Path | None) -> str:
    if not path:
        return ""
    try:
        with Image.open(path) as img:
            return img.format or ""
    except _FAILURES:
        return Path(path).suffix.lstrip(".").upper()


class SafeImage(gr.Image):
    """``gr.Image`` whose value is ``Unreadable`` (not a Gradio error) when the upload does not open."""

    def get_block_name(self) -> str:
        return "image"

    def preprocess(self, payload: Any) -> Any:
        try:
            return super().preprocess(payload)
        except _FAILURES as e:
            path = getattr(payload, "path", None)
            log.info("unreadable upload %s: %s", path, e)
            return Unreadable(path, reason_of(e, path))


def _unreadable_canvas(payload: Any, error: BaseException) -> Unreadable:
    background = getattr(payload, "background", None)
    path = getattr(background, "path", None)
    log.info("unreadable canvas upload %s: %s", path, error)
    return Unreadable(path, reason_of(error, path))


class SafeImageEditor(gr.ImageEditor):
    """``gr.ImageEditor`` (Sketch, Inpaint sketch) that hands an undecodable canvas over as ``Unreadable``."""

    def get_block_name(self) -> str:
        return "imageeditor"

    def preprocess(self, payload: Any) -> Any:
        try:
            return super().preprocess(payload)
        except _FAILURES as e:
            return _unreadable_canvas(payload, e)


class SafeImageMask(gr.ImageMask):
    """``gr.ImageMask`` (the Inpaint canvas) likewise."""

    def get_block_name(self) -> str:
        return "imageeditor"

    def preprocess(self, payload: Any) -> Any:
        try:
            return super().preprocess(payload)
        except _FAILURES as e:
            return _unreadable_canvas(payload, e)


def read_image_bytes(value: Any, what: str) -> bytes | None:
    """The bytes of an uploaded picture (a path), checked to decode; None when nothing is there.

    An ``Unreadable`` value or a file that does not decode is a ``UserError`` naming `what`."""
    if value is None or value == "":
        return None
    if isinstance(value, Unreadable):
        raise UserError(f"{what} could not be read: {value.reason}")
    path = Path(value)
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as img:
            img.load()
    except _FAILURES as e:
        raise UserError(f"{what} could not be read: {reason_of(e, path)}") from None
    return data


def check_pil(value: Any, what: str) -> Any:
    """An editor's PIL image as it is, or the ``UserError`` for an ``Unreadable`` one."""
    if isinstance(value, Unreadable):
        raise UserError(f"{what} could not be read: {value.reason}")
    return value
