"""One network file read for one loaded model: its modules, what each changes, and the checks.

``load_network`` maps every key to a module of the model (``keys``), sorts each module's tensors
into a LoRA / LoHa / LoKr / full-diff patch (``formulas``), lists unknown and unsupported keys in a
warning, and refuses a file made for another architecture (SD1's 768-wide or SDXL's 2048-wide text
conditioning, SDXL's second text encoder) with a message saying what it is for.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import torch

from modules.core.errors import CheckpointError, UnsupportedModelError
from modules.models.networks import formulas, keys
from modules.models.networks.files import NetworkFile, read_network_state_dict
from modules.models.networks.keys import TEXT, ModuleNames, Target

log = logging.getLogger(__name__)

ARCHITECTURE_BY_WIDTH = {768: "SD1.x", 1024: "SD2.x", 1280: "SDXL", 2048: "SDXL"}
_WIDTH_EVIDENCE = ("attn2.to_k", "attn2.to_v", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")


@dataclass
class ModulePatch:
    """The tensors a network holds for one module, and the change they stand for."""

    kind: str  # lora | loha | lokr | full
    tensors: formulas.Tensors
    alpha: float | None = None

    @property
    def scale(self) -> float:
        return formulas.scale(self.kind, self.tensors, self.alpha)

    def change(self, device: torch.device | str = "cpu", multiplier: float = 1.0) -> torch.Tensor:
        """The weight change times ``multiplier * alpha / rank``, float32, unshaped (a new tensor)."""
        w = {k: v.to(device, torch.float32) for k, v in self.tensors.items()}
        return formulas.scaled_change(self.kind, w, multiplier * self.scale)

    def change_shape(self) -> torch.Size:
        """The shape of :meth:`change`, computed on the meta device (no arithmetic)."""
        w = {k: torch.empty(v.shape, device="meta") for k, v in self.tensors.items()}
        return formulas.weight_change(self.kind, w).shape

    def bias_change(self, device: torch.device | str = "cpu") -> torch.Tensor | None:
        diff_b = self.tensors.get("diff_b")
        return None if diff_b is None else diff_b.to(device, torch.float32)


@dataclass
class Network:
    file: NetworkFile
    patches: dict[Target, ModulePatch]
    unknown: list[str] = field(default_factory=list)
    unsupported: dict[Target, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.file.name


def load_network(file: NetworkFile, model, names: ModuleNames, *, allow_unsafe: bool = False) -> Network:
    """`file` read and matched against `model` (whose name table is `names`); raises with a reason."""
    sd = read_network_state_dict(file.path, allow_unsafe=allow_unsafe)
    refuse_sdxl(file, sd, model)
    groups, unknown = keys.group_keys(sd, names)
    default_alpha = _peft_alphas(file)
    net = Network(file, {}, unknown)
    for target, w in groups.items():
        kind = keys.module_kind(w)
        if kind is None:
            net.unsupported[target] = ", ".join(sorted(w))
            continue
        alpha = w.pop("alpha", None)
        alpha_value = float(alpha) if alpha is not None else default_alpha.get(target[0])
        net.patches[target] = ModulePatch(kind, w, alpha_value)
    if not net.patches:
        example = ", ".join(list(sd)[:3])
        raise CheckpointError(
            f"{file.path.name}: none of its {len(sd)} keys names a module of this model (e.g. {example})"
        )
    check_fits(net, names, model)
    _warn_leftovers(net)
    return net


def _peft_alphas(file: NetworkFile) -> dict[str, float]:
    """``lora_alpha`` per component from diffusers' ``lora_adapter_metadata`` (PEFT files keep no alpha keys)."""
    meta = file.metadata.get("lora_adapter_metadata")
    if not isinstance(meta, dict):
        return {}
    out = {}
    for component in (keys.UNET, TEXT):
        value = meta.get(f"{component}.lora_alpha")
        if isinstance(value, (int, float)):
            out[component] = float(value)
    return out


def _warn_leftovers(net: Network) -> None:
    if net.unknown:
        shown = ", ".join(net.unknown[:10])
        log.warning(
            "LoRA %s: %d keys match no module of the model and are ignored: %s", net.name, len(net.unknown), shown
        )
    if net.unsupported:
        shown = "; ".join(f"{path} ({roles})" for (_, path), roles in list(net.unsupported.items())[:5])
        log.warning("LoRA %s: %d modules of unsupported types (DoRA, OFT, IA3, norm) skipped: %s",
                    net.name, len(net.unsupported), shown)  # fmt: skip


def describe_model(model) -> str:
    context = keys.components(model)[keys.UNET].config.cross_attention_dim
    return f"{model.config.family} (text conditioning {context} wide)"


def refuse_sdxl(file: NetworkFile, sd: formulas.Tensors, model) -> None:
    marker = keys.sdxl_marker(list(sd))
    if marker is not None:
        raise UnsupportedModelError(
            f"{file.path.name} is a LoRA for SDXL (it has keys for SDXL's second text encoder or added "
            f"embeddings, e.g. {marker}); the loaded model is {describe_model(model)}, so it cannot be applied"
        )


def check_fits(net: Network, names: ModuleNames, model) -> None:
    """Every patch's change must fit its module's weight; otherwise say which architecture the file is for."""
    for target, patch in net.patches.items():
        weight = names.modules[target].weight
        shape = patch.change_shape()
        try:
            formulas.fit_to(torch.empty(shape, device="meta"), weight.shape)
        except ValueError:
            raise _mismatch(net, names, model, target, shape, weight.shape) from None


def _mismatch(net: Network, names: ModuleNames, model, target: Target, shape, wanted) -> UnsupportedModelError:
    file = net.file.path.name
    width = _conditioning_width(net)
    arch = ARCHITECTURE_BY_WIDTH.get(width) if width is not None else None
    if arch is not None:
        return UnsupportedModelError(
            f"{file} is a LoRA for {arch} (its text conditioning is {width} wide); the loaded model is "
            f"{describe_model(model)}, so it cannot be applied"
        )
    return UnsupportedModelError(
        f"{file} does not fit the loaded model {describe_model(model)}: {target[0]} module {target[1]} has a weight "
        f"of shape {tuple(wanted)}, the file changes one of shape {tuple(shape)}"
    )


def _conditioning_width(net: Network) -> int | None:
    """The most common input width of the modules that read the text conditioning (cross-attention k/v,
    text-encoder attention), which tells SD1 (768), SD2 (1024) and SDXL (2048) apart."""
    widths = Counter()
    for (component, path), patch in net.patches.items():
        if path.endswith(_WIDTH_EVIDENCE) and (component == TEXT or "attn2" in path):
            shape = patch.change_shape()
            widths[int(shape[1])] += 1
    return widths.most_common(1)[0][0] if widths else None
