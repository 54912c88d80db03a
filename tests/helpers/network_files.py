"""LoRA / LyCORIS / embedding / VAE files as trainers write them, for the tiny models (test helper).

Module names are derived as kohya-ss' sd-scripts derives them: the module's path in the diffusers
UNet or in transformers 4's ``CLIPTextModel`` (which had a ``text_model.`` level) with ``.`` -> ``_``.
Targets are sd-scripts' defaults: every Linear / 1x1 conv in the UNet's transformer blocks and in the
text encoder's attention and MLP; LoCon adds the ResNet, down- and up-sampler convolutions.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tests.helpers.ldm_layout import TinyCheckpoint, write_checkpoint


@dataclass(frozen=True)
class Target:
    kohya: str  # lora_unet_... / lora_te_...
    component: str  # "unet" | "text_encoder"
    path: str  # module path in our model
    module: nn.Module


def te_trained_path(text_encoder: nn.Module, path: str) -> str:
    """The module path as transformers 4 named it (trainers ran on transformers 4: ``text_model.`` first)."""
    return path if hasattr(text_encoder, "text_model") else f"text_model.{path}"


def lora_targets(model, *, conv: bool = False, text: bool = True) -> list[Target]:
    """sd-scripts' LoRA targets (LoCon's convolutions too with `conv`) in `model`."""
    out = []
    for path, module in model.unet.named_modules():
        in_attention = ".attentions." in path and isinstance(module, nn.Linear | nn.Conv2d)
        in_resnet = conv and isinstance(module, nn.Conv2d) and any(s in path for s in ("resnets", "samplers"))
        if in_attention or in_resnet:
            out.append(Target("lora_unet_" + path.replace(".", "_"), "unet", path, module))
    if text:
        for path, module in model.text_encoder.named_modules():
            if isinstance(module, nn.Linear) and (".self_attn." in path or ".mlp." in path):
                trained = te_trained_path(model.text_encoder, path)
                out.append(Target("lora_te_" + trained.replace(".", "_"), "text_encoder", path, module))
    return out


def lora_tensors(
    module: nn.Module, rank: int, gen: torch.Generator, *, tucker: bool = False
) -> dict[str, torch.Tensor]:
    """lora_down / lora_up (and lora_mid for a Tucker LoCon) for one module, small random values."""
    w = module.weight
    out_ch, in_ch = w.shape[:2]
    if w.dim() == 2:
        return {"lora_down.weight": randn((rank, in_ch), gen), "lora_up.weight": randn((out_ch, rank), gen)}
    k = w.shape[2:]
    if tucker and k != (1, 1):
        return {
            "lora_down.weight": randn((rank, in_ch, 1, 1), gen),
            "lora_mid.weight": randn((rank, rank, *k), gen),
            "lora_up.weight": randn((out_ch, rank, 1, 1), gen),
        }
    return {"lora_down.weight": randn((rank, in_ch, *k), gen), "lora_up.weight": randn((out_ch, rank, 1, 1), gen)}


def randn(shape: tuple[int, ...], gen: torch.Generator, std: float = 0.1) -> torch.Tensor:
    return torch.randn(shape, generator=gen) * std


def kohya_file(targets: list[Target], make, alpha: float | None) -> dict[str, torch.Tensor]:
    """{kohya name.role: tensor} with ``make(module) -> {role: tensor}`` and an optional alpha per module."""
    sd = {}
    for t in targets:
        for role, tensor in make(t.module).items():
            sd[f"{t.kohya}.{role}"] = tensor
        if alpha is not None:
            sd[f"{t.kohya}.alpha"] = torch.tensor(float(alpha))
    return sd


def write_fsynced_checkpoint(directory: Path, name: str, seed: int, family: str = "sd2-depth") -> TinyCheckpoint:
    """A tiny checkpoint whose pages are written back, so a later write into its mapping shows as dirty."""
    ckpt = write_checkpoint(directory, name, family, fmt="safetensors", seed=seed)
    with ckpt.path.open("rb") as f:
        os.fsync(f.fileno())
    return ckpt


def mapping_pages(path: Path) -> dict[str, int]:
    """kB of this process' mappings of `path` by kind (Rss, Private_Dirty, ...), from /proc/self/smaps."""
    totals: dict[str, int] = {}
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
            # " (deleted)": another pytest run may have cleaned up old basetemp folders meanwhile
            inside = line.removesuffix(" (deleted)").endswith(str(path))
        elif inside and line.endswith(" kB"):
            key, value = line.split(":", 1)
            totals[key] = totals.get(key, 0) + int(value.split()[0])
    return totals


class Exploit:
    """Unpickling this runs ``touch <marker>``: what a malicious checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def write_malicious(path: Path, marker: Path, payload: dict, *, zip_format: bool = True) -> Path:
    """A ``.pt`` holding `payload` plus an object that runs code when unpickled."""
    data = {**payload, "__evil__": Exploit(marker)}
    if zip_format:
        torch.save(data, path)
    else:
        with path.open("wb") as f:
            pickle.dump(data, f, protocol=2)
    return path
