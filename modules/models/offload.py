"""Weights in RAM, only the part that runs on the GPU: A1111's ``--medvram`` and ``--lowvram``.

``med``: each component (text encoder, depth model, VAE, UNet) is moved to the GPU when it runs and
the one there before goes back to RAM, so one component's weights are on the GPU at a time.
``low``: the same with smaller parts: the UNet's down, mid and up blocks one by one, the text
encoder's layers one by one, the VAE's encoder and decoder apart; the rest of the UNet, VAE and text
encoder (a few MB) stays on the GPU.  Slower, since the UNet's weights cross the bus at every step.

Built on accelerate's module hooks (as diffusers' ``enable_model_cpu_offload``), so diffusers'
``AutoencoderKL.encode/decode`` move the VAE too.  An :class:`Offloader` owns the moves: which part
is on the GPU, how many bytes went there, and the most weight bytes that were there at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from accelerate.hooks import ModelHook, add_hook_to_module, remove_hook_from_module
from accelerate.utils import send_to_device
from torch import nn

log = logging.getLogger(__name__)

MODES = ("none", "med", "low")
UNET_BLOCKS = ("down_blocks", "mid_block", "up_blocks")
VAE_BLOCKS = ("encoder", "decoder")


def nbytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def leaves(module: nn.Module) -> list[nn.Module]:
    """The modules that hold parameters themselves: every computation with weights goes through one."""
    return [m for m in module.modules() if any(True for _ in m.parameters(recurse=False))]


@dataclass(eq=False)
class Unit:
    """Weights that move together (`module`) and the modules whose call brings them (`entries`)."""

    name: str
    module: nn.Module
    entries: list[nn.Module]
    nbytes: int = field(init=False)

    def __post_init__(self):
        self.nbytes = nbytes(self.module)


class _Bring(ModelHook):
    """Before an entry runs: its unit onto the execution device, the tensors it is given too."""

    def __init__(self, offloader: Offloader, unit: Unit):
        self.offloader = offloader
        self.unit = unit

    def pre_forward(self, module, *args, **kwargs):
        self.offloader.bring(self.unit)
        device = self.offloader.device
        return send_to_device(args, device), send_to_device(kwargs, device)


class Offloader:
    """Keeps `units` in `storage` and moves the one that is called to `device`; `shell` stays there."""

    def __init__(self, units: list[Unit], shell: list[nn.Module], device: torch.device, storage: str = "cpu"):
        self.units = units
        self.shell = shell
        self.device = torch.device(device)
        self.storage = torch.device(storage)
        self.current: Unit | None = None
        self.moves = 0
        self.bytes_moved = 0
        self.shell_bytes = sum(nbytes(m) for m in shell)
        self.peak_bytes = self.shell_bytes
        for module in shell:
            module.to(self.device)
        for unit in units:
            unit.module.to(self.storage)
            for entry in unit.entries:
                add_hook_to_module(entry, _Bring(self, unit))

    def bring(self, unit: Unit) -> None:
        if self.current is unit:
            return
        self.release()
        unit.module.to(self.device)
        self.current = unit
        self.moves += 1
        self.bytes_moved += unit.nbytes
        self.peak_bytes = max(self.peak_bytes, self.shell_bytes + unit.nbytes)

    def release(self) -> None:
        """Back to storage with the unit on the device (when another model becomes current)."""
        if self.current is not None:
            self.current.module.to(self.storage)
            self.current = None

    def resident(self) -> list[nn.Module]:
        """The modules whose weights are on the execution device now."""
        return [*self.shell, *([self.current.module] if self.current else [])]

    def remove(self) -> None:
        """Hooks off; every part back in storage."""
        self.release()
        for unit in self.units:
            for entry in unit.entries:
                remove_hook_from_module(entry)
        for module in self.shell:
            module.to(self.storage)

    @property
    def most_bytes(self) -> int:
        """Weight bytes on the device with the largest unit there."""
        return self.shell_bytes + max((u.nbytes for u in self.units), default=0)

    @property
    def total_bytes(self) -> int:
        return self.shell_bytes + sum(u.nbytes for u in self.units)

    def stats(self) -> dict[str, float]:
        return {"moves": self.moves, "bytes_moved": self.bytes_moved, "peak_bytes": self.peak_bytes}


def plan(model, mode: str) -> tuple[list[Unit], list[nn.Module]]:
    """The units and the always-resident shell of `model` (a StableDiffusionModel) for `mode`."""
    if mode not in ("med", "low"):
        raise ValueError(f"unknown offload mode {mode!r}; expected one of {MODES}")
    if mode == "med":
        # the text encoder and MiDaS are called part by part (clip skip, DPT at any size): every leaf
        # brings them; diffusers' encode/decode call the VAE's hook themselves
        units = [Unit("text_encoder", model.text_encoder, leaves(model.text_encoder))]
        if model.depth_model is not None:
            units.append(Unit("depth_model", model.depth_model, leaves(model.depth_model)))
        return [*units, Unit("vae", model.vae, [model.vae]), Unit("unet", model.unet, [model.unet])], []
    # low: the text encoder layer by layer too (whole, at 0.68 GB in float16, it would be the largest part)
    text = getattr(model.text_encoder, "text_model", model.text_encoder)  # transformers 4 nests it
    units = [Unit("text_encoder.embeddings", text.embeddings, [text.embeddings])]
    units += [Unit(f"text_encoder.layers.{i}", layer, [layer]) for i, layer in enumerate(text.encoder.layers)]
    shell = [text.final_layer_norm]
    if model.depth_model is not None:
        units.append(Unit("depth_model", model.depth_model, leaves(model.depth_model)))
    for prefix, parent, blocks in (("vae", model.vae, VAE_BLOCKS), ("unet", model.unet, UNET_BLOCKS)):
        for name, child in parent.named_children():
            if name not in blocks:
                shell.append(child)
            elif isinstance(child, nn.ModuleList):
                units += [Unit(f"{prefix}.{name}.{i}", block, [block]) for i, block in enumerate(child)]
            else:
                units.append(Unit(f"{prefix}.{name}", child, [child]))
    return units, shell


def enable(model, mode: str, device: torch.device | str) -> Offloader | None:
    """Offload `model` (on CPU) in `mode` with `device` as where it computes; 'none' does nothing."""
    disable(model)
    if mode == "none":
        return None
    units, shell = plan(model, mode)
    offloader = Offloader(units, shell, torch.device(device))
    model.offloader = offloader
    model.execution_device = offloader.device
    log.info(
        "--%svram: %d parts move to %s when they run; at most %.2f of %.2f GB of weights there at once",
        mode,
        len(units),
        offloader.device,
        offloader.most_bytes / 1e9,
        offloader.total_bytes / 1e9,
    )
    return offloader


def disable(model) -> None:
    """Undo :func:`enable`: hooks off, the whole model back in storage (the caller moves it on)."""
    offloader = getattr(model, "offloader", None)
    if offloader is not None:
        offloader.remove()
    model.offloader = None
    model.execution_device = None
