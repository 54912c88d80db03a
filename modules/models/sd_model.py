"""A loaded Stable Diffusion model with LDM's method names (the model contract).

``StableDiffusionModel`` holds diffusers' UNet and VAE, transformers' CLIP text model and (for the
depth model) DPT-Hybrid, and exposes what the original ``LatentDiffusion`` /
``LatentDepth2ImageDiffusion`` exposed:

* ``get_learned_conditioning(prompts) -> [B, 77, C]``
* ``encode_first_stage(x) -> posterior`` (``.mean``, ``.logvar``, ``.sample(generator)``), unscaled
* ``decode_first_stage(z) -> [B, 3, H, W]`` in [-1, 1] from scaled latents
* ``depth_conditioning(x) -> [B, 1, H/8, W/8]`` in [-1, 1]
* ``apply_model(x_noisy, t, cond)`` with ``cond = {"c_concat": [depth], "c_crossattn": [context]}``
* ``parameterization``, ``betas``, ``alphas_cumprod``, ``scale_factor`` and the components.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel, DPTForDepthEstimation

from modules.core.errors import UserError
from modules.models import ldm_to_diffusers as convert
from modules.models import midas as depth
from modules.models import offload
from modules.models import precision as precisions
from modules.models.ldm_config import ModelConfig
from modules.models.tokenizer import ClipTokenizer

log = logging.getLogger(__name__)


def ldm_schedule(linear_start: float, linear_end: float, timesteps: int) -> tuple[np.ndarray, np.ndarray]:
    """LDM's 'linear' schedule in float64: betas = linspace(sqrt(start), sqrt(end), T)**2 and their cumprod."""
    betas = np.linspace(linear_start**0.5, linear_end**0.5, timesteps, dtype=np.float64) ** 2
    return betas, np.cumprod(1.0 - betas)


@dataclass
class LoadReport:
    """What loading did: keys per component, keys ignored with reasons, unexpected keys, seconds per stage."""

    plan: convert.KeyPlan
    timings: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        stages = ", ".join(f"{name} {sec:.2f}s" for name, sec in self.timings.items())
        return f"Model loaded in {sum(self.timings.values()):.1f}s ({stages}); {self.plan.summary()}"


class StableDiffusionModel:
    """The components of one checkpoint plus LDM's interface to them."""

    def __init__(
        self,
        config: ModelConfig,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: ClipTokenizer,
        depth_model: DPTForDepthEstimation | None,
        report: LoadReport | None = None,
        precision: precisions.PrecisionPlan | None = None,
    ):
        self.config = config
        self.unet = unet
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.depth_model = depth_model
        self.report = report
        self.precision = precision  # per-component dtypes kept through moves; None: `to`'s dtype for all but MiDaS
        self.optimizations: dict = {}  # what models.optimizations applied
        self.offloader = None  # models.offload: parts kept in RAM and moved to execution_device to run
        self.execution_device: torch.device | None = None
        self.vae_float32 = False  # set when the VAE gave NaN in half precision (auto_vae_precision)
        self.parameterization = config.parameterization
        self.scale_factor = config.scale_factor
        self.conditioning_key = config.conditioning_key
        self.num_timesteps = config.timesteps
        betas, alphas_cumprod = ldm_schedule(config.linear_start, config.linear_end, config.timesteps)
        self.betas_f64 = betas
        self.alphas_cumprod_f64 = alphas_cumprod
        # LDM registers its schedule buffers as float32
        self.betas = torch.tensor(betas, dtype=torch.float32)
        self.alphas_cumprod = torch.tensor(alphas_cumprod, dtype=torch.float32)

    # --- properties -------------------------------------------------------------------------------
    @property
    def family(self) -> str:
        return self.config.family

    @property
    def is_depth(self) -> bool:
        return self.depth_model is not None

    @property
    def device(self) -> torch.device:
        """Where the model computes (with offloading, not where its weights are between calls)."""
        return self.execution_device or next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The UNet's dtype (bfloat16 with a CPU bf16 plan; the sampler's latents stay float32 regardless)."""
        return next(self.unet.parameters()).dtype

    @property
    def precision_label(self) -> str:
        """What the weights are in now: 'fp32', 'fp16', 'bf16', 'bf16 UNet' (for infotext, settings, cmd-flags)."""

        def of(module) -> torch.dtype:
            return next(module.parameters()).dtype

        return precisions.label_of(of(self.unet), of(self.text_encoder), of(self.vae))

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def vae_scale(self) -> int:
        """Pixels per latent cell (8 for every SD VAE)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def to(self, device: torch.device | str, dtype: torch.dtype) -> StableDiffusionModel:
        """UNet, VAE and text encoder to `dtype`; the depth model stays float32 (OpenCV and DPT need it),
        and so does a VAE that was reverted to float32. With a precision plan (``self.precision``) each
        part takes the plan's dtype instead and `dtype` is not used (a CPU bf16 plan: bfloat16 UNet).

        A part already in its dtype on `device` is left alone (its tensors not copied again).
        Turns offloading off: every part goes to `device`.
        """
        offload.disable(self)
        device = torch.device(device)
        plan = self.precision
        unet_dtype, text_dtype, vae_dtype = (plan.unet, plan.text_encoder, plan.vae) if plan else (dtype,) * 3
        if self.vae_float32:
            vae_dtype = torch.float32
        targets = [
            (self.unet, unet_dtype),
            (self.vae, vae_dtype),
            (self.text_encoder, text_dtype),
            (self.depth_model, torch.float32),
        ]
        for module, wanted in targets:
            if module is not None and any(p.dtype != wanted or p.device != device for p in module.parameters()):
                module.to(device=device, dtype=wanted)
        if self.vae_channels_last:
            self.vae.to(memory_format=torch.channels_last)
        return self

    @property
    def vae_channels_last(self) -> bool:
        """A bfloat16 VAE on the CPU computes in channels-last memory format: oneDNN's bfloat16 convolutions
        run 1.2-1.3x faster in it than in NCHW (BENCHMARKS.md 9c); float32 keeps NCHW (its Winograd path)."""
        vae = next(self.vae.parameters())
        return vae.dtype == torch.bfloat16 and vae.device.type == "cpu"

    # --- text -------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_tokens(self, tokens: torch.Tensor, clip_skip: int = 1) -> torch.Tensor:
        """[B, 77] token ids -> [B, 77, C] context; clip_skip > 1 takes an earlier layer, then the final norm."""
        tokens = tokens.to(self.device)
        if clip_skip <= 1:
            z = self.text_encoder(input_ids=tokens).last_hidden_state
        else:
            out = self.text_encoder(input_ids=tokens, output_hidden_states=True)
            z = self.text_encoder.final_layer_norm(out.hidden_states[-clip_skip])
        return z.float() if z.dtype == torch.bfloat16 else z  # a CPU bf16 text encoder hands over float32

    def get_learned_conditioning(self, prompts: list[str]) -> torch.Tensor:
        """Cross-attention context of each prompt, as LDM's FrozenOpenCLIPEmbedder / FrozenCLIPEmbedder."""
        return self.encode_tokens(self.tokenizer(list(prompts)))

    # --- first stage ------------------------------------------------------------------------------
    def revert_vae_to_float32(self) -> None:
        """The VAE in float32 from now on, also through later moves (auto_vae_precision)."""
        self.vae_float32 = True
        self.vae.to(torch.float32, memory_format=torch.contiguous_format)

    @torch.no_grad()
    def encode_first_stage(self, x: torch.Tensor):
        """[B,3,H,W] in [-1,1] -> the VAE posterior (unscaled); ``.sample(generator)`` or ``.mean``."""
        x = x.to(self.device, self.vae.dtype)
        if self.vae_channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.vae.encode(x).latent_dist

    @torch.no_grad()
    def decode_first_stage(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> [B,3,H,W] in [-1,1] (unclamped, as LDM)."""
        z = (1.0 / self.scale_factor) * z.to(self.device, self.vae.dtype)
        if self.vae_channels_last:
            z = z.contiguous(memory_format=torch.channels_last)
        return self.vae.decode(z).sample

    # --- depth ------------------------------------------------------------------------------------
    def require_depth(self) -> DPTForDepthEstimation:
        if self.depth_model is None:
            raise UserError(
                f"{self.config.path.name} describes a model without depth input; load the SD2 depth checkpoint"
            )
        return self.depth_model

    @torch.no_grad()
    def raw_depth(self, x: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] in [-1,1] -> MiDaS' raw prediction [B,1,h,w] (float32, at MiDaS resolution)."""
        return depth.midas_depth(self.require_depth(), x, self.device)

    @torch.no_grad()
    def depth_conditioning(self, x: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] in [-1,1] -> MiDaS depth [B,1,H/8,W/8] in [-1,1] (LDM's AddMiDaS + depth2img demo)."""
        raw = self.raw_depth(x)
        latent_hw = (x.shape[-2] // self.vae_scale, x.shape[-1] // self.vae_scale)
        return depth.to_latent_conditioning(raw, latent_hw).to(x.device)

    # --- denoiser ---------------------------------------------------------------------------------
    @torch.no_grad()
    def apply_model(self, x_noisy: torch.Tensor, t: torch.Tensor, cond: dict[str, list[torch.Tensor]]) -> torch.Tensor:
        """The UNet's prediction (eps or v) for `x_noisy` at timesteps `t`; depth concatenated as channel 5.

        The model boundary: the input goes in the UNet's dtype (bfloat16 with a CPU bf16 plan) and the
        output comes back in `x_noisy`'s (float32), so the sampler's state never leaves float32.
        """
        x = x_noisy
        if self.conditioning_key == "hybrid":
            concat = cond.get("c_concat")
            if not concat:
                raise UserError("the depth model needs a depth map (c_concat) at every step")
            x = torch.cat([x_noisy, *(c.to(x_noisy.dtype) for c in concat)], dim=1)
        context = torch.cat(cond["c_crossattn"], dim=1)
        dtype = self.dtype
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        out = self.unet(x.to(dtype), t, encoder_hidden_states=context.to(x.device, dtype)).sample
        return out.to(x_noisy.dtype)


def looks_like_v_prediction(unet: UNet2DConditionModel) -> bool:
    """A1111's SD2 test: on constant input at t=999, a v-model's output minus input averages below -1."""
    with torch.no_grad():
        p = next(unet.parameters())
        x = torch.full((1, unet.config.in_channels, 8, 8), 0.5, device=p.device, dtype=p.dtype)
        ctx = torch.full((1, 2, unet.config.cross_attention_dim), 0.5, device=p.device, dtype=p.dtype)
        out = unet(x, torch.tensor([999], device=p.device), encoder_hidden_states=ctx).sample
        return float((out.float() - x.float()).mean()) < -1


def build_model(
    config: ModelConfig,
    state_dict: dict[str, torch.Tensor],
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    timings: dict[str, float] | None = None,
    precision: precisions.PrecisionPlan | None = None,
) -> StableDiffusionModel:
    """Every component from the checkpoint's tensors (assigned in place), then moved to device/dtype
    (or each to its dtype in `precision`: a bfloat16 UNet is made here, once, from the file's float32)."""
    timings = {} if timings is None else timings

    def timed(name: str, fn, *args):
        t0 = time.perf_counter()
        result = fn(*args)
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0
        return result

    plan = timed("plan keys", convert.plan_keys, config, state_dict)
    unet = timed("unet", convert.build_unet, config, state_dict)
    vae = timed("vae", convert.build_vae, config, state_dict)
    text = timed("text encoder", convert.build_text_encoder, config, state_dict, plan.components["text_encoder"])
    depth_model = None
    if config.has_depth:
        depth_model = timed("depth model", convert.build_depth_model, state_dict, plan.components["depth_model"])
    tokenizer = ClipTokenizer(config.text_encoder, context_length=text.config.max_position_embeddings)
    model = StableDiffusionModel(config, unet, vae, text, tokenizer, depth_model, LoadReport(plan, timings), precision)
    for module in (unet, vae, text, depth_model):
        if module is not None:
            module.eval().requires_grad_(False)
    timed("move to device", model.to, device, dtype)
    if plan.unexpected:
        log.warning(
            "%s: %d checkpoint keys were not used: %s", config.path.name, len(plan.unexpected), plan.unexpected[:10]
        )
    return model
