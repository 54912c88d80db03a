"""Device and dtype choice (--device, --precision, --no-half, --medvram, --lowvram)."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda, else mps, else cpu; an explicit device that is not available is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available (use --device cpu or auto)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise SystemExit("--device mps: Apple MPS is not available (use --device cpu or auto)")
    return torch.device(name)


def resolve_dtype(device: torch.device, precision: str = "autocast", no_half: bool = False) -> torch.dtype:
    """float16 on GPUs unless --precision full / --no-half; always float32 on CPU (the depth model too)."""
    if device.type == "cpu" or no_half or precision == "full":
        return torch.float32
    return torch.float16


def describe(device: torch.device, dtype: torch.dtype) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return f"{name}, {str(dtype).removeprefix('torch.')}"


def offload_mode(device: torch.device, medvram: bool = False, lowvram: bool = False) -> str:
    """models.offload's mode for the flags: 'low', 'med' or 'none' (on CPU the weights are in RAM already)."""
    mode = "low" if lowvram else "med" if medvram else "none"
    if mode != "none" and device.type == "cpu":
        log.warning("--%svram has no effect on the CPU: the model computes where its weights are, in RAM", mode)
        return "none"
    return mode
