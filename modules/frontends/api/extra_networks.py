"""A1111's refresh routes for what users bring: ``POST /sdapi/v1/refresh-loras``, ``refresh-vae``,
``refresh-embeddings`` (the listings themselves are in ``a1111_lists``).  Each rescans its folders
through the Service's ``extra_networks`` and answers nothing, as A1111 does."""

from __future__ import annotations

from fastapi import APIRouter

from modules.app.service import Service


def add_routes(router: APIRouter, service: Service) -> None:
    def refresh_loras() -> None:
        """Rescan models/Lora (and --lora-dir)."""
        service.extra_networks.refresh_loras()

    def refresh_vae() -> None:
        """Rescan models/VAE (and --vae-dir, and *.vae.* files beside the checkpoints)."""
        service.extra_networks.refresh_vae()

    def refresh_embeddings() -> None:
        """Read the embeddings folder again for the current model."""
        service.extra_networks.refresh_embeddings()

    for path, fn in (("/refresh-loras", refresh_loras), ("/refresh-vae", refresh_vae),
                     ("/refresh-embeddings", refresh_embeddings)):  # fmt: skip
        router.add_api_route(path, fn, methods=["POST"], name=fn.__name__)
