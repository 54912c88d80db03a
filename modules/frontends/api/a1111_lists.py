"""A1111's listing endpoints (``/sdapi/v1/upscalers``, ``sd-vae``, ``loras``, ...) and its option names.

Each listing is one ``Service`` method, answered in A1111's item shape (``modules/api/models.py``):
real content where the program has it (upscalers, latent modes, RealESRGAN files), empty where the
feature is not wired yet (VAE files, LoRA, embeddings: filled in by their Service methods) or out of
scope (face restoration, hypernetworks, prompt styles, separate UNet files).

Options: ``GET /options`` answers every A1111 option name (ours, then A1111's defaults overlaid with
what clients stored); ``POST /options`` applies our settings, stores A1111 names we have no setting
for (logged once each as having no effect) and refuses names in neither list with a 422.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from modules.app.service import Service
from modules.core.a1111_options import A1111_OPTIONS
from modules.core.errors import ValidationError
from modules.core.settings import Settings

log = logging.getLogger(__name__)


# --- A1111's item shapes ---------------------------------------------------------------------------


class UpscalerItem(BaseModel):
    name: str
    model_name: str | None = None
    model_path: str | None = None
    model_url: str | None = None
    scale: float | None = None


class LatentUpscalerModeItem(BaseModel):
    name: str


class SDVaeItem(BaseModel):
    model_name: str
    filename: str


class SDModuleItem(BaseModel):
    model_name: str
    filename: str


class HypernetworkItem(BaseModel):
    name: str
    path: str | None = None


class FaceRestorerItem(BaseModel):
    name: str
    cmd_dir: str | None = None


class RealesrganItem(BaseModel):
    name: str
    path: str | None = None
    scale: int | None = None


class PromptStyleItem(BaseModel):
    name: str
    prompt: str | None = None
    negative_prompt: str | None = None


class EmbeddingItem(BaseModel):
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    shape: int
    vectors: int


class EmbeddingsResponse(BaseModel):
    loaded: dict[str, EmbeddingItem] = Field(description="Embeddings loaded for the current model")
    skipped: dict[str, EmbeddingItem] = Field(description="Embeddings skipped for the current model")


class LoraItem(BaseModel):
    name: str
    alias: str
    path: str | None = None
    metadata: dict[str, Any] | None = None


LISTINGS: dict[str, tuple[str, Any]] = {  # path -> (Service method, A1111's response model)
    "/upscalers": ("upscalers", list[UpscalerItem]),
    "/latent-upscale-modes": ("latent_upscale_modes", list[LatentUpscalerModeItem]),
    "/sd-vae": ("vae_files", list[SDVaeItem]),
    "/sd-modules": ("unet_files", list[SDModuleItem]),
    "/hypernetworks": ("hypernetworks", list[HypernetworkItem]),
    "/face-restorers": ("face_restorers", list[FaceRestorerItem]),
    "/realesrgan-models": ("realesrgan_models", list[RealesrganItem]),
    "/prompt-styles": ("prompt_styles", list[PromptStyleItem]),
    "/embeddings": ("embeddings", EmbeddingsResponse),
    "/loras": ("loras", list[LoraItem]),
}


def add_routes(router: APIRouter, service: Service) -> None:
    """The listing routes on the /sdapi/v1 router, each answered by one Service method (looked up per request)."""
    for path, (method, model) in LISTINGS.items():
        router.add_api_route(path, _listing(service, method), methods=["GET"], response_model=model,
                             name=method)  # fmt: skip


def _listing(service: Service, method: str):
    def listing() -> Any:
        return getattr(service, method)()

    listing.__doc__ = getattr(Service, method).__doc__
    return listing


# --- options -------------------------------------------------------------------------------------


def options_view(settings: Settings) -> dict[str, Any]:
    """Every option by A1111's names: our settings, then A1111's (their defaults, or what a client stored)."""
    ours = settings.to_dict()
    stored = ours.pop("a1111_options", {})
    inert = {name: A1111_OPTIONS[name] for name in sorted(Settings.inert_option_names())}
    return {**inert, **stored, **ours}


class OptionWriter:
    """Splits a ``POST /options`` body into settings to apply and A1111 options to store (no effect here)."""

    def __init__(self) -> None:
        self.logged: set[str] = set()  # A1111 options already reported as having no effect

    def values(self, body: dict[str, Any], settings: Settings) -> dict[str, Any]:
        """What to hand to ``Service.update_settings``; a 422 naming the first option known to neither."""
        known = set(Settings.field_names()) - {"a1111_options"}
        inert = Settings.inert_option_names()
        unknown = sorted(set(body) - known - inert)
        if unknown:
            raise ValidationError(
                unknown[0], "unknown option: neither a setting here nor an AUTOMATIC1111 option (see GET /options)"
            )
        values = {k: v for k, v in body.items() if k in known}
        given = {k: v for k, v in body.items() if k in inert}
        if given:
            stored = dict(settings.a1111_options)
            for name, value in given.items():
                stored.pop(name, None)
                if value != A1111_OPTIONS[name]:  # only what differs from A1111's default is kept
                    stored[name] = value
            values["a1111_options"] = stored
            self._log(sorted(set(given) - self.logged))
        return values

    def _log(self, names: list[str]) -> None:
        if names:
            self.logged.update(names)
            log.info("A1111 options stored with no effect in this program: %s", ", ".join(names))
