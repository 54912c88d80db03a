"""LDM yaml configs (read as data, never as imports) and model-family detection from weights.

Order of precedence for a checkpoint's config (as A1111): an explicit path, then
``<checkpoint name>.yaml`` beside the file, then detection from the state dict's shapes:

=====================================================  ===============================
what the weights show                                  config
=====================================================  ===============================
``depth_model.*`` keys and a 5-channel UNet input      ``configs/v2-midas-inference.yaml``
4-channel UNet, cross-attention context 1024 (SD2)     ``configs/v2-inference.yaml``, or
                                                       ``v2-inference-v.yaml`` when the UNet
                                                       answers as a v-prediction model (see
                                                       ``sd_model.looks_like_v_prediction``)
4-channel UNet, context 768 (SD1.x)                    ``configs/v1-inference.yaml``
anything else (9-channel inpainting, SDXL, ...)        a clear "not supported" error
=====================================================  ===============================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from modules.core.errors import ConfigError, UnsupportedModelError

CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"

Family = Literal["sd2-depth", "sd2", "sd1"]
FAMILY_CONFIG = {"sd2-depth": "v2-midas-inference.yaml", "sd2": "v2-inference.yaml", "sd1": "v1-inference.yaml"}
V_PREDICTION_CONFIG = "v2-inference-v.yaml"

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
OPEN_CLIP_PREFIX = "cond_stage_model.model."
CLIP_PREFIX = "cond_stage_model.transformer."
DEPTH_PREFIX = "depth_model.model."
DEPTH_DETECT_KEY = "depth_model.model.pretrained.act_postprocess3.0.project.0.bias"
UNET_IN_KEY = UNET_PREFIX + "input_blocks.0.0.weight"

_TEXT_ENCODERS = {
    "ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder": "open_clip",
    "ldm.modules.encoders.modules.FrozenCLIPEmbedder": "clip",
}


@dataclass(frozen=True)
class ModelConfig:
    """What an LDM yaml says about a model, validated."""

    path: Path
    family: Family
    parameterization: Literal["eps", "v"]
    linear_start: float
    linear_end: float
    timesteps: int
    scale_factor: float
    conditioning_key: Literal["crossattn", "hybrid"]
    latent_size: int
    text_encoder: Literal["open_clip", "clip"]
    text_layer: Literal["last", "penultimate"]
    unet: dict[str, Any]
    ddconfig: dict[str, Any]
    raw: dict[str, Any] = field(repr=False)

    @property
    def has_depth(self) -> bool:
        return self.family == "sd2-depth"

    @property
    def image_size(self) -> int:
        """Native image size in pixels (512 for SD1/SD2-base/depth, 768 for SD2-v)."""
        return self.latent_size * 2 ** (len(self.ddconfig["ch_mult"]) - 1)


def _get(tree: dict, dotted: str, kind: type | tuple[type, ...], path: Path, default: Any = ...) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            if default is not ...:
                return default
            raise ConfigError(f"{path.name}: missing `{dotted}`")
        node = node[part]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(node, kinds) or (isinstance(node, bool) and bool not in kinds):
        raise ConfigError(f"{path.name}: `{dotted}` should be {getattr(kind, '__name__', kind)}, found {node!r}")
    return node


MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_DEPTH = 32  # the LDM configs nest 6 deep


def check_yaml_shape(path: Path) -> None:
    """Refuse a yaml too large or nested too deeply before it is built (deep nesting overflows the stack)."""
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path.name} is {path.stat().st_size} bytes; an LDM config is a few KiB")
    depth = 0
    with path.open("rb") as f:
        for event in yaml.parse(f, Loader=yaml.SafeLoader):  # a flat event stream: no recursion
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_CONFIG_DEPTH:
                    raise ConfigError(f"{path.name} is nested more than {MAX_CONFIG_DEPTH} levels deep")
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1


def load_config(path: str | Path) -> ModelConfig:
    """Parse and validate an LDM yaml. Nothing in it is imported or instantiated."""
    path = Path(path)
    try:
        check_yaml_shape(path)
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except (OSError, OmegaConfBaseException, ValueError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read config {path.name}: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path.name}: not a yaml mapping")
    p = "model.params"
    unet = _get(raw, f"{p}.unet_config.params", dict, path)
    ddconfig = _get(raw, f"{p}.first_stage_config.params.ddconfig", dict, path)
    for key, kind in (("in_channels", int), ("out_channels", int), ("model_channels", int), ("num_res_blocks", int)):
        _get(unet, key, kind, path)
    for key in ("channel_mult", "attention_resolutions"):
        _get(unet, key, list, path)
    _get(unet, "context_dim", int, path)
    for key, kind in (("ch", int), ("ch_mult", list), ("num_res_blocks", int), ("z_channels", int)):
        _get(ddconfig, key, kind, path)
    check_numbers(raw, path)

    cond_target = _get(raw, f"{p}.cond_stage_config.target", str, path)
    text_encoder = _TEXT_ENCODERS.get(cond_target)
    if text_encoder is None:
        raise ConfigError(f"{path.name}: text encoder {cond_target!r} is not supported (SD1 CLIP or SD2 OpenCLIP only)")
    default_layer = "penultimate" if text_encoder == "open_clip" else "last"
    text_layer = _get(raw, f"{p}.cond_stage_config.params.layer", str, path, default_layer)
    if text_layer not in ("last", "penultimate"):
        raise ConfigError(f"{path.name}: text encoder layer {text_layer!r} is not supported (last or penultimate)")

    has_depth = isinstance(_get(raw, f"{p}.depth_stage_config", dict, path, None), dict)
    in_channels = unet["in_channels"]
    if has_depth:
        family: Family = "sd2-depth"
        if in_channels != 5:
            raise ConfigError(f"{path.name}: a depth model needs a 5-channel UNet, the config says {in_channels}")
    elif in_channels == 4:
        family = "sd2" if text_encoder == "open_clip" else "sd1"
    else:
        raise UnsupportedModelError(
            f"{path.name}: a {in_channels}-channel UNet ({_channel_meaning(in_channels)}) is not supported; "
            "supported are SD2 depth (5 channels) and SD1/SD2 text-to-image (4 channels)"
        )
    conditioning_key = _get(raw, f"{p}.conditioning_key", str, path, "crossattn")
    parameterization = _get(raw, f"{p}.parameterization", str, path, "eps")
    if parameterization not in ("eps", "v"):
        raise ConfigError(f"{path.name}: parameterization {parameterization!r} is not supported (eps or v)")
    return ModelConfig(
        path=path,
        family=family,
        parameterization=parameterization,
        linear_start=float(_get(raw, f"{p}.linear_start", (int, float), path, 0.00085)),
        linear_end=float(_get(raw, f"{p}.linear_end", (int, float), path, 0.0120)),
        timesteps=int(_get(raw, f"{p}.timesteps", int, path, 1000)),
        scale_factor=float(_get(raw, f"{p}.scale_factor", (int, float), path, 0.18215)),
        conditioning_key="hybrid" if has_depth else conditioning_key,
        latent_size=int(_get(raw, f"{p}.image_size", int, path, 64)),
        text_encoder=text_encoder,
        text_layer=text_layer,
        unet=unet,
        ddconfig=ddconfig,
        raw=raw,
    )


GROUP_NORM_GROUPS = 32  # every GroupNorm of the LDM UNet and VAE (and of diffusers' ones) has 32 groups
_UNET = "model.params.unet_config.params"
_DD = "model.params.first_stage_config.params.ddconfig"


def check_numbers(raw: dict, path: Path) -> None:
    """Refuse numbers no model can be built from, naming the key (instead of the library's error on building)."""
    unet = _get(raw, _UNET, dict, path)
    dd = _get(raw, _DD, dict, path)
    for key in ("in_channels", "out_channels", "model_channels", "num_res_blocks", "context_dim"):
        _positive(_get(raw, f"{_UNET}.{key}", int, path), f"{_UNET}.{key}", path)
    _positive(_get(raw, f"{_UNET}.transformer_depth", int, path), f"{_UNET}.transformer_depth", path)
    mults = _positive_list(unet["channel_mult"], f"{_UNET}.channel_mult", path)
    for r in unet["attention_resolutions"]:
        _positive(r, f"{_UNET}.attention_resolutions", path)
    channels = [unet["model_channels"] * m for m in mults]
    _divides(GROUP_NORM_GROUPS, channels, f"{_UNET}.model_channels", "the 32 GroupNorm groups", path)
    heads, head_channels = unet.get("num_heads", -1), unet.get("num_head_channels", -1)
    if head_channels != -1:
        _positive(head_channels, f"{_UNET}.num_head_channels", path)
        _divides(head_channels, [unet["model_channels"], *channels], f"{_UNET}.num_head_channels",
                 "channels per attention head", path, divisor_named=True)  # fmt: skip
    elif heads != -1:
        _positive(heads, f"{_UNET}.num_heads", path)
        _divides(heads, channels, f"{_UNET}.num_heads", "attention heads", path, divisor_named=True)
    else:
        raise ConfigError(f"{path.name}: `{_UNET}` needs `num_heads` or `num_head_channels`")
    for key in ("ch", "num_res_blocks", "z_channels", "in_channels", "out_ch"):
        _positive(_get(raw, f"{_DD}.{key}", int, path), f"{_DD}.{key}", path)
    dd_channels = [dd["ch"] * m for m in _positive_list(dd["ch_mult"], f"{_DD}.ch_mult", path)]
    _divides(GROUP_NORM_GROUPS, dd_channels, f"{_DD}.ch", "the 32 GroupNorm groups", path)
    _positive(_get(raw, "model.params.first_stage_config.params.embed_dim", int, path),
              "model.params.first_stage_config.params.embed_dim", path)  # fmt: skip
    _check_schedule(raw, path)


def _check_schedule(raw: dict, path: Path) -> None:
    p = "model.params"
    start = _get(raw, f"{p}.linear_start", (int, float), path, 0.00085)
    end = _get(raw, f"{p}.linear_end", (int, float), path, 0.0120)
    if not 0 < start < end < 1:
        raise ConfigError(f"{path.name}: `{p}.linear_start` ({start}) and `{p}.linear_end` ({end}) must satisfy "
                          "0 < linear_start < linear_end < 1")  # fmt: skip
    _positive(_get(raw, f"{p}.timesteps", int, path, 1000), f"{p}.timesteps", path, most=100_000)
    _positive(_get(raw, f"{p}.image_size", int, path, 64), f"{p}.image_size", path, most=4096)
    scale = _get(raw, f"{p}.scale_factor", (int, float), path, 0.18215)
    if not 0 < scale < 1e6:
        raise ConfigError(f"{path.name}: `{p}.scale_factor` must be a positive number, found {scale!r}")


def _positive(value: Any, key: str, path: Path, most: int = 1 << 20) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= most:
        raise ConfigError(f"{path.name}: `{key}` must be a whole number from 1 to {most}, found {value!r}")
    return value


def _positive_list(values: list, key: str, path: Path) -> list[int]:
    if not values:
        raise ConfigError(f"{path.name}: `{key}` is empty")
    return [_positive(v, key, path) for v in values]


def _divides(n: int, channels: list[int], key: str, what: str, path: Path, *, divisor_named: bool = False) -> None:
    bad = next((c for c in channels if c % n), None)
    if bad is None:
        return
    if divisor_named:
        raise ConfigError(f"{path.name}: `{key}` = {n} does not divide {bad} channels (the {what} must split every "
                          f"block's channels {channels} evenly)")  # fmt: skip
    raise ConfigError(f"{path.name}: `{key}` gives blocks of {channels} channels; {bad} is not divisible by {what} "
                      f"(use a multiple of {n})")  # fmt: skip


def _channel_meaning(n: int) -> str:
    return {9: "an inpainting model", 8: "an instruct-pix2pix model", 7: "an upscaler"}.get(n, "an unknown model type")


@dataclass(frozen=True)
class Detection:
    family: Family
    in_channels: int
    context_dim: int | None


def detect(state_dict: dict[str, torch.Tensor]) -> Detection:
    """The model family from the weights' keys and shapes, or UnsupportedModelError naming what was found."""
    if any(k.startswith("conditioner.embedders.") for k in state_dict):
        raise UnsupportedModelError("this is an SDXL checkpoint (conditioner.embedders.* keys); SDXL is not supported")
    if UNET_IN_KEY not in state_dict:
        prefixes = sorted({k.split(".", 1)[0] for k in state_dict})[:6]
        raise UnsupportedModelError(
            f"not a Stable Diffusion checkpoint: no {UNET_IN_KEY} (top-level prefixes found: {', '.join(prefixes)})"
        )
    in_channels = int(state_dict[UNET_IN_KEY].shape[1])
    context_dim = next(
        (
            int(v.shape[-1])
            for k, v in state_dict.items()
            if k.startswith(UNET_PREFIX) and k.endswith("attn2.to_k.weight")
        ),
        None,
    )
    has_depth = DEPTH_DETECT_KEY in state_dict or any(k.startswith(DEPTH_PREFIX) for k in state_dict)
    if in_channels == 5 and has_depth:
        return Detection("sd2-depth", in_channels, context_dim)
    if in_channels == 5:
        raise UnsupportedModelError(
            "a 5-channel UNet without depth_model.* (MiDaS) weights; the checkpoint is incomplete"
        )
    if in_channels != 4:
        raise UnsupportedModelError(
            f"a {in_channels}-channel UNet ({_channel_meaning(in_channels)}) is not supported; "
            "supported are SD2 depth (5 channels) and SD1/SD2 text-to-image (4 channels)"
        )
    if context_dim == 1024:
        return Detection("sd2", in_channels, context_dim)
    if context_dim == 768:
        return Detection("sd1", in_channels, context_dim)
    raise UnsupportedModelError(
        f"a 4-channel UNet with cross-attention width {context_dim} (neither SD1's 768 nor SD2's 1024)"
    )


def sibling_config(checkpoint_path: str | Path) -> Path | None:
    """``<name>.yaml`` next to the checkpoint, if present (A1111's rule)."""
    p = Path(checkpoint_path)
    for candidate in (p.with_suffix(".yaml"), p.with_suffix(".yml")):
        if candidate.is_file():
            return candidate
    return None


def check_matches(config: ModelConfig, state_dict: dict[str, torch.Tensor]) -> None:
    """Refuse a config that does not fit the weights, before building anything."""
    if UNET_IN_KEY not in state_dict:
        detect(state_dict)  # raises the descriptive error
    in_channels = int(state_dict[UNET_IN_KEY].shape[1])
    if in_channels != config.unet["in_channels"]:
        raise ConfigError(
            f"{config.path.name} describes a {config.unet['in_channels']}-channel UNet but the checkpoint's has "
            f"{in_channels} channels ({_channel_meaning(in_channels) if in_channels not in (4, 5) else 'a different model'});"
            " remove or fix the yaml beside the checkpoint"
        )
    has_depth_weights = any(k.startswith(DEPTH_PREFIX) for k in state_dict)
    if config.has_depth and not has_depth_weights:
        raise ConfigError(f"{config.path.name} is a depth config but the checkpoint has no depth_model.* weights")
    prefix = OPEN_CLIP_PREFIX if config.text_encoder == "open_clip" else CLIP_PREFIX
    if not any(k.startswith(prefix) for k in state_dict):
        raise ConfigError(
            f"{config.path.name} expects a {'SD2 OpenCLIP' if config.text_encoder == 'open_clip' else 'SD1 CLIP'} text "
            f"encoder ({prefix}*) that the checkpoint does not have"
        )
