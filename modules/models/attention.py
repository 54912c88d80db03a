"""Attention in float32 for half-precision models: A1111's "Upcast cross attention layer to float32".

LDM computes SD2's attention scores in float32 (``_ATTN_PRECISION = "fp32"``) because in float16 the
product of queries and keys can overflow and turn the image into NaN (black). diffusers' UNet config
has ``upcast_attention`` for it, but its SDPA processor ignores the flag, so this processor does what
LDM does: the projections stay in the model's dtype, queries, keys and values go to float32 for
``scaled_dot_product_attention`` (outside autocast), and the result goes back to the model's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0


class UpcastAttnProcessor:
    """diffusers' SDPA attention with the attention itself in float32 when the model is in float16/bfloat16."""

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, **_) -> torch.Tensor:  # fmt: skip
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        image_shape = hidden_states.shape if hidden_states.ndim == 4 else None
        if image_shape is not None:  # [B, C, H, W] -> [B, HW, C]
            hidden_states = hidden_states.flatten(2).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch, context_len = context.shape[:2]
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, context_len, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
            context = hidden_states if encoder_hidden_states is None else context
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)

        def heads(x: torch.Tensor) -> torch.Tensor:  # [B, N, heads * d] -> [B, heads, N, d]
            return x.unflatten(-1, (attn.heads, -1)).transpose(1, 2)

        q, k, v = heads(attn.to_q(hidden_states)), heads(attn.to_k(context)), heads(attn.to_v(context))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        dtype = q.dtype
        if attention_mask is not None and attention_mask.is_floating_point():
            attention_mask = attention_mask.float()
        scale = None if attn.scale_qk else attn.scale  # None: SDPA's own 1/sqrt(d), as diffusers' processor
        with torch.autocast(q.device.type, enabled=False):
            out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=attention_mask, scale=scale)
        out = out.transpose(1, 2).flatten(2).to(dtype)
        out = attn.to_out[1](attn.to_out[0](out))  # projection, dropout
        if image_shape is not None:
            out = out.transpose(1, 2).reshape(image_shape)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def set_upcast(unet: torch.nn.Module, on: bool) -> int:
    """Every attention of `unet` upcast (on) or diffusers' SDPA processor again (off); returns how many."""
    modules = [m for m in unet.modules() if isinstance(m, Attention)]
    for module in modules:
        module.set_processor(UpcastAttnProcessor() if on else AttnProcessor2_0())
    return len(modules)
