"""Which module of OUR loaded model each key of a LoRA / LyCORIS file changes.

Trainers name a module by its path with ``.`` replaced by ``_`` after a prefix: kohya-ss writes
``lora_unet_down_blocks_0_attentions_0_proj_in`` (diffusers UNet names) and
``lora_te_text_model_encoder_layers_0_self_attn_q_proj`` (transformers 4 CLIP names, ``text_model.``
included; transformers 5 dropped that level, so both spellings are accepted); some LyCORIS files use
the LDM UNet's names (``lora_unet_input_blocks_1_1_proj_in``).  So, as A1111 does, the names are
derived from the model's own ``named_modules()`` (written here by hand); the LDM names come from
running diffusers' own LDM -> diffusers UNet key converter (the one the model was loaded with,
``single_file_utils.convert_ldm_unet_checkpoint``) over the checkpoint's UNet keys.

diffusers / PEFT files (``unet.<path>.lora_A.weight``, ``text_encoder.<path>.lora_B.weight``, the
older ``...processor.to_q_lora.down.weight`` and ``lora_linear_layer`` forms) are first renamed with
diffusers' ``state_dict_utils`` converters, then looked up by module path.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from diffusers.loaders import single_file_utils as sfu
from diffusers.utils import state_dict_utils as sdu
from torch import nn

from modules.models.ldm_config import UNET_PREFIX

UNET, TEXT = "unet", "text_encoder"
Target = tuple[str, str]  # (component, module path in it)
Tensors = dict[str, torch.Tensor]

# key endings -> the tensor's role (PEFT's lora_A/lora_B and diffusers' lora.down/up are LoRA's down/up)
_ROLES = {
    "lora_down.weight": "lora_down.weight", "lora_A.weight": "lora_down.weight", "lora.down.weight": "lora_down.weight",
    "lora_up.weight": "lora_up.weight", "lora_B.weight": "lora_up.weight", "lora.up.weight": "lora_up.weight",
    "lora_mid.weight": "lora_mid.weight", "alpha": "alpha",
    **{n: n for n in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")},
    **{n: n for n in ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t1", "lokr_t2")},
    "diff": "diff", "diff_b": "diff_b",
    # recognised so that the module is reported as unsupported, not its keys as unknown
    "dora_scale": "dora_scale", "lora_magnitude_vector": "dora_scale", "lora_magnitude_vector.weight": "dora_scale",
    "oft_blocks": "oft", "oft_diag": "oft", "w_norm": "norm", "b_norm": "norm", "on_input": "ia3",
}  # fmt: skip
_ENDINGS = sorted(_ROLES, key=len, reverse=True)
SDXL_MARKERS = ("lora_te1_", "lora_te2_", "text_encoder_2.", "lora_unet_label_emb", "lora_unet_add_embedding",
                "unet.add_embedding")  # fmt: skip
_BARE_UNET = ("down_blocks.", "mid_block.", "up_blocks.")
_OLD_ATTENTION = re.compile(r"\.to_(q|k|v|out)_lora\.")


@dataclass
class ModuleNames:
    """Every name a file may use for a module of one model, and the modules themselves."""

    by_name: dict[str, Target] = field(default_factory=dict)
    modules: dict[Target, nn.Module] = field(default_factory=dict)

    def add(self, names: list[str], target: Target) -> None:
        for name in names:
            self.by_name.setdefault(name, target)


def components(model) -> dict[str, nn.Module]:
    """The parts networks change: the UNet (unwrapped from torch.compile) and the text encoder."""
    return {UNET: getattr(model.unet, "_orig_mod", model.unet), TEXT: model.text_encoder}


def weighted_modules(root: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for path, module in root.named_modules():
        if path and isinstance(getattr(module, "weight", None), nn.Parameter):
            yield path, module


def kohya(prefix: str, path: str) -> str:
    return prefix + path.replace(".", "_")


def module_names(model) -> ModuleNames:
    """The name table of `model`: kohya, LDM-style kohya, diffusers and PEFT spellings."""
    names = ModuleNames()
    parts = components(model)
    for path, module in weighted_modules(parts[UNET]):
        names.modules[(UNET, path)] = module
        names.add([kohya("lora_unet_", path), f"unet.{path}", path], (UNET, path))
    for ldm_path, path in ldm_unet_paths(model).items():
        if (UNET, path) in names.modules:
            names.add([kohya("lora_unet_", ldm_path)], (UNET, path))
    nested = hasattr(parts[TEXT], "text_model")  # transformers 4 has text_model.encoder..., 5 has encoder...
    for path, module in weighted_modules(parts[TEXT]):
        names.modules[(TEXT, path)] = module
        trained = path if nested else f"text_model.{path}"
        spellings = [
            kohya("lora_te_", trained),
            kohya("lora_te_", path),
            f"text_encoder.{trained}",
            f"text_encoder.{path}",
        ]
        names.add(spellings, (TEXT, path))
    return names


def ldm_unet_paths(model) -> dict[str, str]:
    """LDM UNet module path -> diffusers module path, by diffusers' converter run over the checkpoint's keys.

    Each key gets a distinct integer as its 'tensor'; the converter only moves tensors between keys,
    so the integer found under a diffusers key says which LDM key it came from.  Empty when the model
    was not loaded from an LDM checkpoint (no key plan)."""
    report = getattr(model, "report", None)
    keys = list(report.plan.components.get("unet", [])) if report is not None else []
    if not keys:
        return {}
    probe = {key: torch.tensor(i) for i, key in enumerate(keys)}
    converted = sfu.convert_ldm_unet_checkpoint(probe, dict(components(model)[UNET].config))
    out: dict[str, str] = {}
    for diffusers_key, index in converted.items():
        ldm_key = keys[int(index)][len(UNET_PREFIX) :]
        out[ldm_key.rsplit(".", 1)[0]] = diffusers_key.rsplit(".", 1)[0]
    return out


def sdxl_marker(keys: list[str]) -> str | None:
    """The first key that only SDXL networks have (second text encoder, added embeddings), if any."""
    return next((k for k in keys if k.startswith(SDXL_MARKERS)), None)


def normalize_diffusers(sd: Tensors) -> Tensors:
    """diffusers' older LoRA spellings renamed to PEFT's (``<module>.lora_A.weight``) by diffusers' converters."""
    unet = {k: v for k, v in sd.items() if k.startswith(("unet.", *_BARE_UNET))}
    text = {k: v for k, v in sd.items() if k.startswith("text_encoder.")}
    rest = {k: v for k, v in sd.items() if k not in unet and k not in text}
    if unet:
        unet = sdu.convert_unet_state_dict_to_peft(unet)
    if any(_OLD_ATTENTION.search(k) for k in text):
        text = sdu.convert_state_dict_to_peft(text, original_type=sdu.StateDictType.DIFFUSERS_OLD)
    elif any("lora_linear_layer" in k for k in text):
        text = sdu.convert_state_dict_to_peft(text, original_type=sdu.StateDictType.DIFFUSERS)
    text = {k.replace(".lora.down.", ".lora_A.").replace(".lora.up.", ".lora_B."): v for k, v in text.items()}
    return {**rest, **unet, **text}


def split_key(key: str) -> tuple[str, str] | None:
    """``module name, tensor role`` of a key, or None when its ending is no known tensor role."""
    for ending in _ENDINGS:
        if key.endswith("." + ending):
            return key[: -len(ending) - 1], _ROLES[ending]
    return None


def group_keys(sd: Tensors, names: ModuleNames) -> tuple[dict[Target, Tensors], list[str]]:
    """The file's tensors per target module ({role: tensor}), and the keys that match no module."""
    groups: dict[Target, Tensors] = {}
    unknown: list[str] = []
    for key, tensor in normalize_diffusers(sd).items():
        split = split_key(key)
        target = names.by_name.get(split[0]) if split else None
        if target is None:
            unknown.append(key)
            continue
        groups.setdefault(target, {})[split[1]] = tensor
    return groups, unknown


def module_kind(w: Tensors) -> str | None:
    """'lora', 'loha', 'lokr' or 'full' from the tensors present; None for what is not supported."""
    if not {"dora_scale", "oft", "norm", "ia3"}.isdisjoint(w):
        return None
    if {"lora_up.weight", "lora_down.weight"} <= w.keys():
        return "lora"
    if {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"} <= w.keys():
        return "loha"
    factors = [f"lokr_w{n}" in w or {f"lokr_w{n}_a", f"lokr_w{n}_b"} <= w.keys() for n in (1, 2)]
    if all(factors):
        return "lokr"
    return "full" if "diff" in w else None
