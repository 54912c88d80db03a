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
* ``opt_winograd_conv`` (on by default): the UNet's and VAE's 3x3 convolutions computed with
  Winograd F(2x2, 3x3) (``models.winograd``: 2.25x fewer multiplications) where the input is at
  least 16x16; as exact as the direct convolution in float32, ~1.4-2.5x faster per convolution here,
  0.72-0.78x diffusers' time end to end (BENCHMARKS.md 1d). The UNet's transformed weights (16/9 of each such weight:
  1.8 GB for SD2 at 512x512) are kept while RAM allows (``KeepWhileRoom``), else made per call; the
  VAE's are made per call. CPU float32 only (elsewhere nothing changes); not with ``torch.compile``.
  Where it does not apply, pre-packing (if on) or the module's own path runs.
* ``opt_torch_compile``: ``torch.compile`` the UNet (slow first run, recompiles per resolution).
* ``token_merging_ratio``: token merging (the ``tomesd`` package) in the UNet's self-attention; lossy.
* ``upcast_attn``: the UNet's attention in float32 for float16/bfloat16 models (``models.attention``),
  as LDM computes SD2's; a precision option (against NaN/black images), no change in float32.
Per job (see ``generation.sampling.Guidance``): ``s_min_uncond`` (A1111's negative guidance minimum sigma).
bfloat16 on the CPU is not an option here but the precision plan (``models.precision``: bfloat16 UNet
weights where a start-up probe measures bfloat16 fast); the per-op autocast option it replaced is gone.

Pre-packing and Winograd take float32 CPU weights only: with a CPU bf16 plan (``precision``) the
UNet's bfloat16 convolutions keep PyTorch's own (oneDNN bfloat16) path and only the float32 VAE's
are replaced.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from modules.core import memory
from modules.models import attention, winograd
from modules.models.sd_model import StableDiffusionModel

log = logging.getLogger(__name__)


def wanted(settings: Any) -> dict[str, Any]:
    return {
        "channels_last": bool(settings.opt_channels_last),
        "prepack_conv": bool(settings.opt_prepack_conv) and not settings.opt_torch_compile,
        "winograd_conv": bool(settings.opt_winograd_conv) and not settings.opt_torch_compile,
        "compile": bool(settings.opt_torch_compile),
        "upcast_attn": bool(settings.upcast_attn),
        "tome": float(settings.token_merging_ratio),
    }


def apply(model: StableDiffusionModel, settings: Any) -> dict[str, Any]:
    """Bring the model's optimisations in line with `settings` (idempotent); returns what is applied."""
    target = wanted(settings)
    current = model.optimizations
    for key, off in (("channels_last", False), ("prepack_conv", False), ("winograd_conv", False), ("tome", 0.0),
                     ("compile", False), ("upcast_attn", False)):  # fmt: skip
        current.setdefault(key, off)  # a freshly loaded model has none of them
    if target["channels_last"] != current["channels_last"]:
        fmt = torch.channels_last if target["channels_last"] else torch.contiguous_format
        model.unet.to(memory_format=fmt)
        model.vae.to(memory_format=torch.channels_last if model.vae_channels_last else fmt)
        current["channels_last"] = target["channels_last"]
    convs = ("prepack_conv", "winograd_conv")
    if any(target[k] != current[k] for k in convs):
        on = _set_conv_paths(model, target["prepack_conv"], target["winograd_conv"])
        current.update(zip(convs, on, strict=True))
    if target["tome"] != current["tome"]:
        _set_token_merging(model, target["tome"])
        current["tome"] = target["tome"]
    if target["upcast_attn"] != current["upcast_attn"]:
        count = attention.set_upcast(_plain_unet(model), target["upcast_attn"])
        log.info("Attention in float32: %s (%d layers)", "on" if target["upcast_attn"] else "off", count)
        current["upcast_attn"] = target["upcast_attn"]
    if target["compile"] != current["compile"]:
        current["compile"] = _set_compile(model, target["compile"])
    return dict(current)


def _set_token_merging(model: StableDiffusionModel, ratio: float) -> None:
    import tomesd

    unet = _plain_unet(model)
    tomesd.remove_patch(unet)
    if ratio > 0:
        tomesd.apply_patch(unet, ratio=ratio)
        log.info("Token merging on (ratio %.2f)", ratio)


def _set_compile(model: StableDiffusionModel, on: bool) -> bool:
    plain = _plain_unet(model)
    if on and model.offloader is not None:
        log.warning(
            "torch.compile is not used with --medvram/--lowvram: moving weights between calls breaks its graphs"
        )
        on = False
    model.unet = torch.compile(plain) if on else plain
    log.info("torch.compile for the UNet %s (the first generation at each size compiles)", "on" if on else "off")
    return on


def _cpu_inference(x: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether a convolution call may take a CPU float32 inference path (else the module's own)."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and w.dtype == torch.float32
        and x.dim() == 4
        and not torch.is_autocast_enabled("cpu")
        and not (torch.is_grad_enabled() and (w.requires_grad or x.requires_grad))
    )


def _own_forward(conv: torch.nn.Conv2d):
    return lambda x: conv._conv_forward(x, conv.weight, conv.bias)


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
        if not _cpu_inference(x, w):
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


class KeepWhileRoom:
    """Whether a transformed Winograd weight is kept between calls: while the RAM to spare
    (``memory.spare_bytes``) after keeping it stays above a reserve, a quarter of the machine's RAM
    and at least 2 GiB, left for activations and for later, larger jobs.

    A weight that is not kept is transformed on every call and freed after it: ~20 ms for one of
    SD2's 1280x1280 kernels, on a convolution that then still takes 0.7x the direct one's time instead
    of 0.55x (BENCHMARKS.md, section 6). So a machine short of RAM gets most of the speed and none of
    the memory cost; one with room gets all of it for 16/9 of those weights (1.8 GB for SD2's UNet).
    """

    MIN_RESERVE = 2 << 30

    def __init__(self, spare: Callable[[], int | None] | None = None, reserve: int | None = None):
        self.spare = spare or memory.spare_bytes
        if reserve is None:
            reserve = max(self.MIN_RESERVE, (memory.total_bytes() or 0) // 4)
        self.reserve = reserve
        self.refused = 0  # calls that transformed without keeping

    def __call__(self, nbytes: int) -> bool:
        spare = self.spare()
        if spare is not None and spare - nbytes >= self.reserve:
            return True
        if not self.refused:
            log.info(
                "Winograd convolutions: RAM is short (%s MiB to spare, %d MiB kept in reserve), so a transformed "
                "weight of %d MiB is made for each call instead of kept",
                "unknown" if spare is None else spare >> 20, self.reserve >> 20, nbytes >> 20,
            )  # fmt: skip
        self.refused += 1
        return False


def _keep_always(_nbytes: int) -> bool:
    return True


def _keep_never(_nbytes: int) -> bool:
    return False


class WinogradConv:
    """A ``Conv2d.forward`` for 3x3 stride-1 convolutions that uses Winograd F(2x2, 3x3) (``models.winograd``).

    The transformed weight (16/9 the size of the weight) is made at each call until `keep` (given its
    size in bytes, from the second call on) says to keep it; a kept one is remade when the weight's
    storage or in-place version changes. Inputs smaller than 16x16 (fewer than
    ``MIN_TILES`` 2x2 output tiles per sample) take `fallback` (a ``PackedConv`` or the module's own
    path) and transform nothing: there the GEMMs are too thin (measured no faster than a pre-packed
    direct convolution) and SD2's 8x8 level alone would need 2 GB of transformed weights. So do calls
    that are not CPU float32 inference (GPU, autocast, autograd).
    """

    MIN_TILES = 64  # per sample: a 16x16 input
    MIN_CHANNELS = 64  # in and out: fewer makes GEMMs too thin to pay for the transforms

    def __init__(self, conv: torch.nn.Conv2d, fallback=None, keep: Callable[[int], bool] = _keep_always):
        self.conv = conv
        self.fallback = fallback or _own_forward(conv)
        self.keep = keep
        self.u: torch.Tensor | None = None  # the kept transformed weight
        self.key: tuple | None = None  # (weight ptr, weight version) that `u` was made from
        self.seen: tuple | None = None  # the key of the last call's weight

    @classmethod
    def supports(cls, conv: torch.nn.Conv2d) -> bool:
        return (
            PackedConv.supports(conv)
            and conv.kernel_size == (3, 3)
            and conv.stride == (1, 1)
            and tuple(conv.padding) == (1, 1)
            and conv.dilation == (1, 1)
            and conv.groups == 1
            and min(conv.in_channels, conv.out_channels) >= cls.MIN_CHANNELS
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        w = conv.weight
        if not _cpu_inference(x, w) or ((x.shape[-2] + 1) // 2) * ((x.shape[-1] + 1) // 2) < self.MIN_TILES:
            return self.fallback(x)
        key = (w.data_ptr(), w._version)
        u = self.u if self.key == key else None
        if u is None:
            # Asked from the second call with this weight on: by then every layer of the model has run
            # once, so the memory-mapped weights the model needs are resident and counted.
            keep = self.seen == key and self.keep(16 * w.shape[0] * w.shape[1] * w.element_size())
            self.u, self.key, self.seen = None, None, key  # the old one goes before the new one is made
            u = winograd.transform_weight(w.detach())
            if keep:
                self.u, self.key = u, key
        return winograd.conv3x3(x, u, None if conv.bias is None else conv.bias.detach())


def prepack_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


def _set_conv_paths(model: StableDiffusionModel, prepack: bool, winograd_on: bool) -> tuple[bool, bool]:
    """Give every UNet and VAE convolution the forward the options ask for; returns (prepack, winograd) now on."""
    if prepack and not prepack_available():
        log.warning("Pre-packed convolutions need PyTorch built with oneDNN (mkldnn); option ignored")
        prepack = False
    counts = {"pre-packed": 0, "Winograd": 0}
    # The UNet's transformed weights are kept while RAM allows (it is called at every step); the VAE's
    # are made per call (each of its convolutions runs once or twice per job, on large inputs).
    unet_keep = KeepWhileRoom()
    for module, keep in ((_plain_unet(model), unet_keep), (model.vae, _keep_never)):
        for conv in module.modules():
            if not isinstance(conv, torch.nn.Conv2d):
                continue
            if isinstance(conv.__dict__.get("forward"), (PackedConv, WinogradConv)):
                del conv.forward  # back to the module's own, then set anew
            packed = PackedConv(conv) if prepack and PackedConv.supports(conv) else None
            if winograd_on and WinogradConv.supports(conv):
                conv.forward = WinogradConv(conv, fallback=packed, keep=keep)
                counts["Winograd"] += 1
            elif packed is not None:
                conv.forward = packed
                counts["pre-packed"] += 1
    skipped = sum(
        1 for conv in _plain_unet(model).modules() if isinstance(conv, torch.nn.Conv2d) and conv.weight.dtype != torch.float32
    )
    note = f"; {skipped} UNet convolutions not float32, left to PyTorch" if skipped and (prepack or winograd_on) else ""
    log.info("Convolutions: %s", ", ".join(f"{n} {k}" for k, n in counts.items()) + f" (the rest as PyTorch does{note})")
    return prepack, winograd_on


def _plain_unet(model: StableDiffusionModel):
    return getattr(model.unet, "_orig_mod", model.unet)
