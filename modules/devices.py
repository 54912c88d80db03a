"""Device and dtype choice (--device, --precision, --no-half)."""

from __future__ import annotations

import torch


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
