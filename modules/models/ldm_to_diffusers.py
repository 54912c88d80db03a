"""LDM checkpoint keys -> diffusers / transformers modules, built on the meta device and filled in place.

* UNet and VAE: diffusers' ``single_file_utils`` converters and config builders.
* Text encoder: diffusers' OpenCLIP converter (SD2) or its CLIP prefix strip (SD1) into a
  transformers ``CLIPTextModel`` (SD2: the penultimate layer, then ``ln_final``).
* MiDaS DPT-Hybrid (``depth_model.model.*``): our own mapping onto transformers'
  ``DPTForDepthEstimation`` (no library converts timm's MiDaS layout).

Modules are created with empty (meta) parameters and loaded with ``assign=True``, so the
checkpoint's (memory-mapped) tensors become the parameters: no second copy of the weights.
Every builder loads strictly: a missing or surplus key is an error, not a silent default.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders import single_file_utils as sfu
from transformers import CLIPTextConfig, CLIPTextModel, DPTConfig, DPTForDepthEstimation

from modules.core.errors import CheckpointError
from modules.models.ldm_config import (
    CLIP_PREFIX,
    DEPTH_PREFIX,
    OPEN_CLIP_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    ModelConfig,
)

SCHEDULE_KEYS = frozenset(
    [
        "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
        "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
        "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
        "lvlb_weights", "logvar",
    ]
)  # fmt: skip
MIDAS_HEAD_PREFIX = DEPTH_PREFIX + "pretrained.model.head."
_RESBLOCK = re.compile(re.escape(OPEN_CLIP_PREFIX) + r"transformer\.resblocks\.(\d+)\.")


@dataclass
class KeyPlan:
    """Which checkpoint keys feed which component, and which are deliberately left out (and why)."""

    components: dict[str, list[str]] = field(default_factory=dict)
    ignored: dict[str, list[str]] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)

    def summary(self) -> str:
        used = ", ".join(f"{name} {len(keys)}" for name, keys in self.components.items())
        ignored = "; ".join(f"{len(keys)} {reason}" for reason, keys in self.ignored.items() if keys)
        text = f"keys loaded: {used}"
        if ignored:
            text += f"; deliberately ignored: {ignored}"
        if self.unexpected:
            text += f"; UNEXPECTED (not used): {len(self.unexpected)} e.g. {', '.join(self.unexpected[:5])}"
        return text


def plan_keys(config: ModelConfig, sd: dict[str, torch.Tensor]) -> KeyPlan:
    """Sort every checkpoint key into a component, an ignored group with its reason, or unexpected."""
    plan = KeyPlan(components={"unet": [], "vae": [], "text_encoder": []})
    if config.has_depth:
        plan.components["depth_model"] = []
    ignored: dict[str, list[str]] = {
        "DDPM schedule buffers (recomputed from the yaml)": [],
        "EMA copies (model_ema.*; the model's own weights are used, as LDM inference does)": [],
        "text-encoder parts the model does not use": [],
        "MiDaS classifier head (timm ImageNet head, unused for depth)": [],
    }
    buffers, ema, text_unused, midas_head = ignored.values()
    text_prefix = OPEN_CLIP_PREFIX if config.text_encoder == "open_clip" else CLIP_PREFIX
    last_block = _last_resblock(sd) if config.text_encoder == "open_clip" else -1
    for key in sd:
        if key in SCHEDULE_KEYS:
            buffers.append(key)
        elif key.startswith("model_ema."):
            ema.append(key)
        elif key.startswith(UNET_PREFIX):
            plan.components["unet"].append(key)
        elif key.startswith(VAE_PREFIX) and not key.startswith(VAE_PREFIX + "loss."):
            plan.components["vae"].append(key)
        elif key.startswith(text_prefix):
            if _text_key_unused(config, key, last_block):
                text_unused.append(key)
            else:
                plan.components["text_encoder"].append(key)
        elif key.startswith(MIDAS_HEAD_PREFIX) and config.has_depth:
            midas_head.append(key)
        elif key.startswith(DEPTH_PREFIX) and config.has_depth:
            plan.components["depth_model"].append(key)
        else:
            plan.unexpected.append(key)
    plan.ignored = ignored
    return plan


def _last_resblock(sd: dict[str, torch.Tensor]) -> int:
    blocks = [int(m.group(1)) for k in sd if (m := _RESBLOCK.match(k))]
    return max(blocks) if blocks else -1


def _text_key_unused(config: ModelConfig, key: str, last_block: int) -> bool:
    rest = key[len(OPEN_CLIP_PREFIX) :] if config.text_encoder == "open_clip" else key[len(CLIP_PREFIX) :]
    if config.text_encoder == "clip":
        return rest.endswith("position_ids")  # a rebuilt buffer, stored by old transformers versions
    if rest in ("text_projection", "logit_scale", "attn_mask"):
        return True
    m = _RESBLOCK.match(key)
    return config.text_layer == "penultimate" and m is not None and int(m.group(1)) == last_block


def _subset(sd: dict[str, torch.Tensor], keys: list[str]) -> dict[str, torch.Tensor]:
    return {k: sd[k] for k in keys}


def _load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Load into meta parameters with assign=True; a key or shape mismatch is a CheckpointError."""
    try:
        module.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        msg = str(e).split("\n\t")
        detail = "; ".join(m.strip() for m in msg[1:4]) or msg[0]
        raise CheckpointError(f"the {what} weights do not match the config: {detail[:600]}") from e
    if any(t.is_meta for t in state.values()):
        return  # a shape-only dry run (tests build the full-size modules on the meta device)
    leftover = [n for n, p in module.named_parameters() if p.is_meta]
    if leftover:
        raise CheckpointError(f"the {what} is missing weights: {', '.join(leftover[:5])}")


def _original_config(config: ModelConfig) -> dict:
    return config.raw


# --- UNet -------------------------------------------------------------------------------------------


def build_unet(config: ModelConfig, sd: dict[str, torch.Tensor]) -> UNet2DConditionModel:
    """diffusers UNet2DConditionModel from ``model.diffusion_model.*``."""
    unet_cfg = sfu.create_unet_diffusers_config_from_ldm(_original_config(config), sd)
    unet_cfg["sample_size"] = config.latent_size
    # LDM runs SD2's attention in float32. diffusers' SDPA processor ignores this flag; the
    # upcast_attn setting (models.attention) is what does it.
    unet_cfg["upcast_attention"] = config.text_encoder == "open_clip"
    converted = sfu.convert_ldm_unet_checkpoint(sd, unet_cfg)
    with init_empty_weights():
        unet = UNet2DConditionModel(**unet_cfg)
    _load_strict(unet, converted, "UNet")
    return unet


# --- VAE --------------------------------------------------------------------------------------------


def build_vae(config: ModelConfig, sd: dict[str, torch.Tensor]) -> AutoencoderKL:
    """diffusers AutoencoderKL from ``first_stage_model.*`` (attention 1x1 convs become linears)."""
    vae_cfg = sfu.create_vae_diffusers_config_from_ldm(_original_config(config), sd, scaling_factor=config.scale_factor)
    vae_cfg["sample_size"] = config.image_size
    converted = sfu.convert_ldm_vae_checkpoint(sd, vae_cfg)
    with init_empty_weights():
        vae = AutoencoderKL(**vae_cfg)
    _load_strict(vae, converted, "VAE")
    return vae


# --- text encoder -----------------------------------------------------------------------------------


def text_encoder_config(config: ModelConfig, sd: dict[str, torch.Tensor], text_keys: list[str]) -> CLIPTextConfig:
    """CLIPTextConfig read off the weights' shapes (heads = width / 64, CLIP's rule)."""
    if config.text_encoder == "open_clip":
        token = sd[OPEN_CLIP_PREFIX + "token_embedding.weight"]
        positions = sd[OPEN_CLIP_PREFIX + "positional_embedding"]
        fc = sd[OPEN_CLIP_PREFIX + "transformer.resblocks.0.mlp.c_fc.weight"]
        layers = len(_indices(dict.fromkeys(text_keys), _RESBLOCK.pattern))
        act = "gelu"
    else:
        p = CLIP_PREFIX + "text_model."
        token = sd[p + "embeddings.token_embedding.weight"]
        positions = sd[p + "embeddings.position_embedding.weight"]
        fc = sd[p + "encoder.layers.0.mlp.fc1.weight"]
        layers = len(_indices(dict.fromkeys(text_keys), re.escape(p) + r"encoder\.layers\.(\d+)\."))
        act = "quick_gelu"
    width = int(token.shape[1])
    return CLIPTextConfig(
        vocab_size=int(token.shape[0]),
        hidden_size=width,
        intermediate_size=int(fc.shape[0]),
        num_hidden_layers=layers,
        num_attention_heads=max(1, width // 64),
        max_position_embeddings=int(positions.shape[0]),
        hidden_act=act,
        layer_norm_eps=1e-5,
        projection_dim=width,
    )


def build_text_encoder(config: ModelConfig, sd: dict[str, torch.Tensor], text_keys: list[str]) -> CLIPTextModel:
    """transformers CLIPTextModel holding exactly the layers the LDM encoder uses."""
    text_cfg = text_encoder_config(config, sd, text_keys)
    subset = _subset(sd, text_keys)
    if config.text_encoder == "open_clip":
        # the converter only reads the width off its first argument's config
        converted = sfu.convert_open_clip_checkpoint(SimpleNamespace(config=text_cfg), subset, prefix=OPEN_CLIP_PREFIX)
    else:
        converted = sfu.convert_ldm_clip_checkpoint(subset)
    state = {k.removeprefix("text_model."): v for k, v in converted.items()}
    with init_empty_weights():
        model = CLIPTextModel(text_cfg)
    _load_strict(model, state, "text encoder")
    return model


# --- MiDaS DPT-Hybrid -------------------------------------------------------------------------------


def _indices(sd: dict[str, torch.Tensor], pattern: str) -> set[int]:
    """The distinct integers captured by `pattern` at the start of the keys."""
    rx = re.compile(pattern)
    return {int(m.group(1)) for k in sd if (m := rx.match(k))}


def midas_config(sd: dict[str, torch.Tensor]) -> DPTConfig:
    """transformers DPTConfig of a MiDaS DPT-Hybrid, read off the weights' shapes.

    For 512-depth-ema this gives DPT-Hybrid as MiDaS v3 built it: BiT-R50 stem (depths [3, 4, 9],
    'same' padding), ViT-B/16 (768 wide, 12 layers, 12 heads), neck [256, 512, 768, 768], fusion 256,
    reassemble factors [1, 1, 1, 0.5], readout 'project', ViT outputs of blocks 8 and 11.
    """
    p = DEPTH_PREFIX + "pretrained.model."
    backbone = p + "patch_embed.backbone."
    pos = sd[p + "pos_embed"]
    hidden = int(pos.shape[2])
    grid = int(round((pos.shape[1] - 1) ** 0.5))
    if grid * grid != pos.shape[1] - 1:
        raise CheckpointError(f"MiDaS position embedding of {pos.shape[1] - 1} patches is not a square grid")
    n_layers = len(_indices(sd, re.escape(p) + r"blocks\.(\d+)\."))
    stages = sorted(_indices(sd, re.escape(backbone) + r"stages\.(\d+)\."))
    depths = [len(_indices(sd, re.escape(f"{backbone}stages.{s}.") + r"blocks\.(\d+)\.")) for s in stages]
    stage_out = [int(sd[f"{backbone}stages.{s}.blocks.0.conv3.weight"].shape[0]) for s in stages]
    scratch = DEPTH_PREFIX + "scratch."
    neck = [int(sd[f"{scratch}layer{i}_rn.weight"].shape[1]) for i in range(1, 5)]
    backbone_cfg = {
        "global_padding": "same",
        "layer_type": "bottleneck",
        "depths": depths,
        "hidden_sizes": stage_out,
        "embedding_size": int(sd[backbone + "stem.conv.weight"].shape[0]),
        "out_features": [f"stage{i + 1}" for i in range(len(stages))],
        "embedding_dynamic_padding": True,
        "num_groups": 32,
    }
    cfg = DPTConfig(
        is_hybrid=True,
        hidden_size=hidden,
        num_hidden_layers=n_layers,
        num_attention_heads=max(1, hidden // 64),
        intermediate_size=int(sd[p + "blocks.0.mlp.fc1.weight"].shape[0]),
        hidden_act="gelu",
        layer_norm_eps=1e-6,  # timm ViT; transformers' default 1e-12 is wrong for MiDaS
        image_size=grid * 16,
        patch_size=16,
        qkv_bias=True,
        backbone_out_indices=[0, 1, (3 * n_layers) // 4 - 1, n_layers - 1],
        readout_type="project",
        reassemble_factors=[1, 1, 1, 0.5],
        neck_hidden_sizes=neck,
        fusion_hidden_size=int(sd[f"{scratch}layer1_rn.weight"].shape[0]),
        head_in_index=-1,
        use_batch_norm_in_fusion_residual=False,
        add_projection=False,
        backbone_featmap_shape=[1, stage_out[-1], grid, grid],
        neck_ignore_stages=[0, 1],
        backbone_config=backbone_cfg,
    )
    cfg._attn_implementation = "eager"  # BiT has no SDPA path; eager attention is what matches MiDaS
    return cfg


_MIDAS_RULES: list[tuple[str, str]] = [
    (r"pretrained\.model\.cls_token", "dpt.embeddings.cls_token"),
    (r"pretrained\.model\.pos_embed", "dpt.embeddings.position_embeddings"),
    (r"pretrained\.model\.patch_embed\.backbone\.stem\.conv\.", "dpt.embeddings.backbone.bit.embedder.convolution."),
    (r"pretrained\.model\.patch_embed\.backbone\.stem\.norm\.", "dpt.embeddings.backbone.bit.embedder.norm."),
    (
        r"pretrained\.model\.patch_embed\.backbone\.stages\.(\d+)\.blocks\.(\d+)\.",
        r"dpt.embeddings.backbone.bit.encoder.stages.\1.layers.\2.",
    ),
    (r"pretrained\.model\.patch_embed\.proj\.", "dpt.embeddings.projection."),
    (r"pretrained\.model\.blocks\.(\d+)\.norm1\.", r"dpt.encoder.layer.\1.layernorm_before."),
    (r"pretrained\.model\.blocks\.(\d+)\.norm2\.", r"dpt.encoder.layer.\1.layernorm_after."),
    (r"pretrained\.model\.blocks\.(\d+)\.attn\.proj\.", r"dpt.encoder.layer.\1.attention.output.dense."),
    (r"pretrained\.model\.blocks\.(\d+)\.mlp\.fc1\.", r"dpt.encoder.layer.\1.intermediate.dense."),
    (r"pretrained\.model\.blocks\.(\d+)\.mlp\.fc2\.", r"dpt.encoder.layer.\1.output.dense."),
    (r"pretrained\.model\.norm\.", "dpt.layernorm."),
    (r"pretrained\.act_postprocess([34])\.0\.project\.0\.", "neck.reassemble_stage.readout_projects.{n}.0."),
    (r"pretrained\.act_postprocess([34])\.3\.", "neck.reassemble_stage.layers.{n}.projection."),
    (r"pretrained\.act_postprocess4\.4\.", "neck.reassemble_stage.layers.3.resize."),
    (r"scratch\.layer([1-4])_rn\.", "neck.convs.{n}."),
    (r"scratch\.refinenet([1-4])\.out_conv\.", "neck.fusion_stage.layers.{r}.projection."),
    (r"scratch\.refinenet([1-4])\.resConfUnit([12])\.conv([12])\.", "neck.fusion_stage.layers.{r}.residual_layer{u}.convolution{c}."),
    (r"scratch\.output_conv\.([024])\.", r"head.head.\1."),
]  # fmt: skip
_QKV = re.compile(r"pretrained\.model\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)$")


def _midas_target(rest: str) -> str | None:
    """transformers key for one MiDaS key (without the depth_model.model. prefix)."""
    for pattern, target in _MIDAS_RULES:
        m = re.match(pattern, rest)
        if not m:
            continue
        groups = m.groups()
        if "{n}" in target:
            # act_postprocess3/4 -> stage 2/3; layerN_rn -> conv N-1
            n = int(groups[0]) - 1
            target = target.replace("{n}", str(n))
        elif "{r}" in target:
            # refinenetN fuses from the deepest level: refinenet4 is fusion layer 0
            target = target.replace("{r}", str(4 - int(groups[0])))
            if len(groups) == 3:
                target = target.replace("{u}", groups[1]).replace("{c}", groups[2])
        else:
            target = m.expand(target)
        return target + rest[m.end() :]
    return None


def midas_state_dict(sd: dict[str, torch.Tensor], keys: list[str], hidden: int) -> dict[str, torch.Tensor]:
    """MiDaS keys -> transformers DPT keys; timm's fused qkv split into query/key/value (views, no copy)."""
    out: dict[str, torch.Tensor] = {}
    for key in keys:
        rest = key[len(DEPTH_PREFIX) :]
        m = _QKV.match(rest)
        if m:
            layer, kind = m.groups()
            for i, name in enumerate(("query", "key", "value")):
                out[f"dpt.encoder.layer.{layer}.attention.attention.{name}.{kind}"] = sd[key][
                    i * hidden : (i + 1) * hidden
                ]
            continue
        target = _midas_target(rest)
        if target is None:
            raise CheckpointError(f"unknown MiDaS key {key}")
        out[target] = sd[key]
    return out


def build_depth_model(sd: dict[str, torch.Tensor], depth_keys: list[str]) -> DPTForDepthEstimation:
    """transformers DPTForDepthEstimation (DPT-Hybrid) from ``depth_model.model.*``."""
    cfg = midas_config(sd)
    state = midas_state_dict(sd, depth_keys, cfg.hidden_size)
    with init_empty_weights():
        model = DPTForDepthEstimation(cfg)
    _load_strict(model, state, "MiDaS depth model")
    return model
