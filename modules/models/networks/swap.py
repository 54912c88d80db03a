"""Swapping a parameter's tensor for another while keeping the original tensor for an exact restore.

A merged or replaced weight is a new tensor set as ``param.data``; the original tensor is kept
untouched and put back on restore.  So nothing is copied for a backup (A1111 copies each weight it
changes, then writes into it), and where the weights are views of a memory-mapped file
(``safe_load.read_state_dict(mmap=True)``) no page of the mapping is ever written (an in-place write
would copy every touched page into private memory).  If the model was moved (device, dtype,
memory format) in between, the original is converted as the move converted the weights, so the
restored weights are what the model would hold had nothing been swapped.

Convolution forwards that keep derived copies of a weight (``optimizations.PackedConv`` /
``WinogradConv``, keyed by the weight's storage address and version) are told to forget them at each
swap: a new tensor can be allocated at a freed tensor's address with the same version.
"""

from __future__ import annotations

import torch
from torch import nn

from modules.models.optimizations import PackedConv, WinogradConv


def like(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """`t` on `ref`'s device, in its dtype and memory layout (`t` itself when they already agree)."""
    if t.device == ref.device and t.dtype == ref.dtype and t.shape == ref.shape and t.stride() == ref.stride():
        return t
    out = torch.empty_like(ref)
    out.copy_(t)
    return out


def forget_derived_weights(module: nn.Module) -> None:
    """Drop the pre-packed / Winograd-transformed copies of `module`'s weight, if its forward keeps any."""
    forward = module.__dict__.get("forward")
    for wrapper in (forward, getattr(forward, "fallback", None)):
        if isinstance(wrapper, WinogradConv):
            wrapper.u = wrapper.key = wrapper.seen = None
        elif isinstance(wrapper, PackedConv):
            wrapper.packed = {}


class ParamBackup:
    """The original tensors of the parameters whose data was replaced, for restoring them exactly."""

    def __init__(self) -> None:
        self._saved: dict[int, tuple[nn.Module, nn.Parameter, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self._saved)

    def original(self, param: nn.Parameter) -> torch.Tensor:
        """The parameter's original tensor, where and as the parameter is now."""
        saved = self._saved.get(id(param))
        return param.data if saved is None else like(saved[2], param.data)

    @torch.no_grad()
    def replace(self, module: nn.Module, param: nn.Parameter, value: torch.Tensor) -> None:
        """``param.data = value``, the original kept (only the first replacement saves it)."""
        if value.shape != param.shape:
            raise ValueError(f"replacement of shape {tuple(value.shape)} for a parameter of {tuple(param.shape)}")
        self._saved.setdefault(id(param), (module, param, param.data))
        param.data = value
        forget_derived_weights(module)

    @torch.no_grad()
    def restore(self) -> int:
        """Every replaced parameter back to its original tensor; returns how many."""
        count = len(self._saved)
        for module, param, original in self._saved.values():
            param.data = like(original, param.data)
            forget_derived_weights(module)
        self._saved.clear()
        return count
