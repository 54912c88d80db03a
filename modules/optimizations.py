"""Speed options applied to a loaded model, each measured in benchmarks/ (BENCHMARKS.md).

Model-level (applied when a model is loaded and when the settings change):
* ``opt_channels_last``: UNet and VAE in channels-last memory format (the layout GPU tensor cores
  want); results change only in the last float bits. Off by default: on a 2-core AVX2 CPU it measured
  no faster, and converting weights that are memory-mapped from a ``.safetensors`` file keeps the
  file's pages resident beside the converted copies (+2.4 GB for the full-size model).
* ``opt_torch_compile``: ``torch.compile`` the UNet (slow first run, recompiles per resolution).
* ``token_merging_ratio``: token merging (the ``tomesd`` package) in the UNet's self-attention; lossy.
Per job (see ``pipeline.Guidance``): ``s_min_uncond`` (A1111's negative guidance minimum sigma)
and ``cpu_bf16_autocast``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from modules.sd_model import StableDiffusionModel

log = logging.getLogger(__name__)


def wanted(settings: Any) -> dict[str, Any]:
    return {
        "channels_last": bool(settings.opt_channels_last),
        "compile": bool(settings.opt_torch_compile),
        "tome": float(settings.token_merging_ratio),
    }


def apply(model: StableDiffusionModel, settings: Any) -> dict[str, Any]:
    """Bring the model's optimisations in line with `settings` (idempotent); returns what is applied."""
    target = wanted(settings)
    current = model.optimizations
    for key, off in (("channels_last", False), ("tome", 0.0), ("compile", False)):
        current.setdefault(key, off)  # a freshly loaded model has none of them
    if target["channels_last"] != current.get("channels_last", False):
        fmt = torch.channels_last if target["channels_last"] else torch.contiguous_format
        model.unet.to(memory_format=fmt)
        model.vae.to(memory_format=fmt)
        current["channels_last"] = target["channels_last"]
    if target["tome"] != current.get("tome", 0.0):
        _set_token_merging(model, target["tome"])
        current["tome"] = target["tome"]
    if target["compile"] != current.get("compile", False):
        _set_compile(model, target["compile"])
        current["compile"] = target["compile"]
    return dict(current)


def _set_token_merging(model: StableDiffusionModel, ratio: float) -> None:
    import tomesd

    unet = _plain_unet(model)
    tomesd.remove_patch(unet)
    if ratio > 0:
        tomesd.apply_patch(unet, ratio=ratio)
        log.info("Token merging on (ratio %.2f)", ratio)


def _set_compile(model: StableDiffusionModel, on: bool) -> None:
    plain = _plain_unet(model)
    model.unet = torch.compile(plain) if on else plain
    log.info("torch.compile for the UNet %s (the first generation at each size compiles)", "on" if on else "off")


def _plain_unet(model: StableDiffusionModel):
    return getattr(model.unet, "_orig_mod", model.unet)
