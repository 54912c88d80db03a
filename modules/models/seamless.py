"""Seamless tiling (A1111's ``tiling``): circular padding in the UNet's and the VAE's convolutions.

Within ``circular_padding(model)`` every ``Conv2d`` of the UNet and the VAE pads by wrapping around
(``padding_mode="circular"``), so the left edge continues the right one and the top the bottom: the
picture tiles without a seam.  A1111 sets the same mode on the same convolutions.  Convolutions whose
forward was replaced by a faster path (``optimizations``: pre-packed or Winograd, which pad with zeros)
take PyTorch's own forward meanwhile.  Everything is put back when the block ends, also on an error.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


def _convolutions(model) -> list[nn.Conv2d]:
    unet = getattr(model.unet, "_orig_mod", model.unet)  # a compiled UNet: its modules
    return [m for part in (unet, model.vae) for m in part.modules() if isinstance(m, nn.Conv2d)]


@contextmanager
def circular_padding(model, enabled: bool = True) -> Iterator[int]:
    """Within: the model's UNet and VAE convolutions pad circularly (yields how many); a no-op if not `enabled`."""
    if not enabled:
        yield 0
        return
    saved = []
    for conv in _convolutions(model):
        saved.append((conv, conv.padding_mode, conv.__dict__.pop("forward", None)))
        conv.padding_mode = "circular"
    try:
        yield len(saved)
    finally:
        for conv, mode, forward in saved:
            conv.padding_mode = mode
            if forward is not None:
                conv.forward = forward
