"""Speed options applied to a loaded model, each measured in benchmarks/ (BENCHMARKS.md).

Model-level (applied when a model is loaded and when the settings change):
* ``opt_channels_last``: UNet and VAE in channels-last memory format (the layout GPU tensor cores
  want); results change only in the last float bits. Off by default: on a 2-core AVX2 CPU it measured
  no faster, and converting weights that are memory-mapped from a ``.safetensors`` file keeps the
  file's pages resident beside the converted copies (+2.4 GB for the full-size model).
* ``opt_prepack_conv``: the UNet's and VAE's convolution weights reordered once into oneDNN's blocked
  layout (per input shape), instead of on every call as eager PyTorch does on CPU; same images up to
  float rounding, ~5 % faster end to end here, costs a second copy of the conv weights (~3 GB
  for SD2). CPU float32 only; not combined with ``torch.compile`` (which packs weights itself).
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
        "prepack_conv": bool(settings.opt_prepack_conv) and not settings.opt_torch_compile,
        "compile": bool(settings.opt_torch_compile),
        "tome": float(settings.token_merging_ratio),
    }


def apply(model: StableDiffusionModel, settings: Any) -> dict[str, Any]:
    """Bring the model's optimisations in line with `settings` (idempotent); returns what is applied."""
    target = wanted(settings)
    current = model.optimizations
    for key, off in (("channels_last", False), ("prepack_conv", False), ("tome", 0.0), ("compile", False)):
        current.setdefault(key, off)  # a freshly loaded model has none of them
    if target["channels_last"] != current["channels_last"]:
        fmt = torch.channels_last if target["channels_last"] else torch.contiguous_format
        model.unet.to(memory_format=fmt)
        model.vae.to(memory_format=fmt)
        current["channels_last"] = target["channels_last"]
    if target["prepack_conv"] != current["prepack_conv"]:
        current["prepack_conv"] = _set_prepack(model, target["prepack_conv"])
    if target["tome"] != current["tome"]:
        _set_token_merging(model, target["tome"])
        current["tome"] = target["tome"]
    if target["compile"] != current["compile"]:
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


class PackedConv:
    """A ``Conv2d.forward`` that reorders the weight for oneDNN once per input shape, not every call.

    Eager PyTorch on CPU hands oneDNN the plain (O, I, kH, kW) weight and oneDNN reorders it into its
    blocked layout on every call: for SD2's UNet that is ~2.7 GB rewritten per step. Here the reordered
    weight is kept per input shape (oneDNN's layout choice depends on it; a weight packed for another
    shape can be slower than none). Two shapes are kept, so steps that alternate between a batch of 2
    and 1 (negative guidance minimum sigma) do not repack every step. A change of the weight's storage
    or in-place version (an extension editing weights) repacks. Anything else (GPU, non-float32,
    autocast, autograd) takes the module's own path.
    """

    KEEP = 2

    def __init__(self, conv: torch.nn.Conv2d):
        self.conv = conv
        self.packed: dict[tuple, torch.Tensor] = {}  # (input shape, weight ptr, weight version) -> packed

    @staticmethod
    def supports(conv: torch.nn.Conv2d) -> bool:
        return (
            type(conv) is torch.nn.Conv2d
            and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str)
            and conv.weight.device.type == "cpu"
            and conv.weight.dtype == torch.float32
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        w = conv.weight
        if (
            x.device.type != "cpu"
            or x.dtype != torch.float32
            or w.dtype != torch.float32
            or x.dim() != 4
            or torch.is_autocast_enabled("cpu")
            or (torch.is_grad_enabled() and (w.requires_grad or x.requires_grad))
        ):
            return conv._conv_forward(x, w, conv.bias)
        key = (tuple(x.shape), w.data_ptr(), w._version)
        packed = self.packed.pop(key, None)
        if packed is None:
            self.packed = {k: v for k, v in self.packed.items() if k[1:] == key[1:]}  # not of an edited weight
            while len(self.packed) >= self.KEEP:
                self.packed.pop(next(iter(self.packed)))  # the least recently used
            packed = torch.ops.mkldnn._reorder_convolution_weight(
                w.detach(), list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups, list(x.shape)
            )
        self.packed[key] = packed  # most recently used last
        return torch.ops.mkldnn._convolution_pointwise(
            x, packed, conv.bias, list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups,
            "none", [], "",
        )  # fmt: skip


def prepack_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


def _set_prepack(model: StableDiffusionModel, on: bool) -> bool:
    """Patch (or unpatch) the convolutions; returns whether pre-packing is now on."""
    if on and not prepack_available():
        log.warning("Pre-packed convolutions need PyTorch built with oneDNN (mkldnn); option ignored")
        return False
    count = 0
    for module in (_plain_unet(model), model.vae):
        for conv in module.modules():
            if not isinstance(conv, torch.nn.Conv2d):
                continue
            if on and PackedConv.supports(conv):
                conv.forward = PackedConv(conv)
                count += 1
            elif not on and isinstance(conv.__dict__.get("forward"), PackedConv):
                del conv.forward
    log.info("Pre-packed oneDNN convolutions %s%s", "on" if on else "off", f" ({count} layers)" if on else "")
    return on


def _plain_unet(model: StableDiffusionModel):
    return getattr(model.unet, "_orig_mod", model.unet)
