"""``POST /sdapi/v1/extra-single-image`` and ``/extra-batch-images``: A1111's Extras (upscaling) over HTTP.

Request and response shapes are A1111's (``ExtrasSingleImageRequest`` / ``ExtrasBatchImagesRequest``,
``imageList`` of ``{data, name}``).  Face restoration is not available here: a visibility above 0 is
refused (422).  The images come back as base64 PNGs with their own ``parameters`` infotext kept and a
``postprocessing`` text added; nothing is saved (as A1111's API).
"""

from __future__ import annotations

import base64
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from modules.app.service import Service
from modules.core.errors import ValidationError

from . import payloads


class ExtrasBaseRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    resize_mode: int = Field(0, description="0: resize by upscaling_resize, 1: resize to upscaling_resize_w x _h.")
    show_extras_results: bool = Field(True, description="Return the images.")
    gfpgan_visibility: float = Field(0.0, description="Face restoration: not available here (must be 0).")
    codeformer_visibility: float = Field(0.0, description="Face restoration: not available here (must be 0).")
    codeformer_weight: float = 0.0
    upscaling_resize: float = Field(2.0, description="Resize by this factor (resize_mode 0).")
    upscaling_resize_w: int = Field(512, description="Target width (resize_mode 1).")
    upscaling_resize_h: int = Field(512, description="Target height (resize_mode 1).")
    upscaling_crop: bool = Field(True, description="Resize to: crop to exactly w x h (centred).")
    upscaler_1: str = Field("None", description="Upscaler (see /sdapi/v1/upscalers); None: no upscaling.")
    upscaler_2: str = Field("None", description="Second upscaler, blended in with extras_upscaler_2_visibility.")
    extras_upscaler_2_visibility: float = 0.0
    upscale_first: bool = False


class ExtrasSingleImageRequest(ExtrasBaseRequest):
    image: str = Field("", description="Base64 image.")


class FileData(BaseModel):
    data: str = Field(description="Base64 image.")
    name: str = Field("", description="File name.")


class ExtrasBatchImagesRequest(ExtrasBaseRequest):
    imageList: list[FileData] = Field(default_factory=list, description="Images as {data, name}.")  # noqa: N815


class ExtrasSingleImageResponse(BaseModel):
    html_info: str = Field(description="The postprocessing text, as HTML.")
    image: str | None = Field(default=None, description="The upscaled image, base64 PNG.")


class ExtrasBatchImagesResponse(BaseModel):
    html_info: str
    images: list[str] = Field(default_factory=list)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _values(body: ExtrasBaseRequest) -> dict[str, Any]:
    """A1111's field names -> the extras parameters (face restoration refused)."""
    for name in ("gfpgan_visibility", "codeformer_visibility"):
        if getattr(body, name):
            raise ValidationError(name, "face restoration is not available here; send 0")
    values = body.model_dump(exclude={"image", "imageList"})
    values["extras_upscaler_1"], values["extras_upscaler_2"] = body.upscaler_1, body.upscaler_2
    return values


def add_routes(router: APIRouter, service: Service) -> None:
    """Register the Extras routes on the /sdapi/v1 router."""

    def single(body: ExtrasSingleImageRequest) -> dict[str, Any]:
        """Upscale one image (A1111's extras single image)."""
        values = _values(body)
        data = payloads.decode_base64(body.image, "image")
        if not data:
            raise ValidationError("image", "no image given")
        result = service.extras([("", data)], values)
        image = result.images[0]
        return {"html_info": result.html_info, "image": _b64(image.png) if body.show_extras_results else None}

    def batch(body: ExtrasBatchImagesRequest) -> dict[str, Any]:
        """Upscale several images given as imageList [{data, name}] (A1111's extras batch)."""
        values = _values(body)
        items = []
        for i, f in enumerate(body.imageList):
            data = payloads.decode_base64(f.data, f"imageList[{i}].data")
            if not data:
                raise ValidationError(f"imageList[{i}].data", "no image given")
            items.append((f.name, data))
        if not items:
            raise ValidationError("imageList", "no images given")
        result = service.extras(items, values)
        send = body.show_extras_results
        return {"html_info": result.html_info, "images": [_b64(x.png) for x in result.images] if send else []}

    router.add_api_route("/extra-single-image", single, methods=["POST"], response_model=ExtrasSingleImageResponse)
    router.add_api_route("/extra-batch-images", batch, methods=["POST"], response_model=ExtrasBatchImagesResponse)
