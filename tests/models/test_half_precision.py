"""Half precision safety nets: upcast_attn (modules.attention: attention in float32, nothing else
changed) and auto_vae_precision (a VAE that overflows in float16 runs again in float32)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from modules.core.hooks import Hooks
from modules.core.progress import JobControl
from modules.core.request import GenerationRequest
from modules.core.settings import Settings
from modules.generation.processing import ProcessingContext, process
from modules.models import attention, optimizations
from modules.models.checkpoints import load_model
from tests.generation.test_engine import H, W, picture, png
from tests.models.test_offload import manager
from tests.models.test_optimizations import unet_out

UPCAST = Settings().override({"upcast_attn": True})


@pytest.fixture()
def model(depth_ckpt):
    return load_model(depth_ckpt.path)


@pytest.fixture()
def sdpa_dtypes(monkeypatch) -> list[torch.dtype]:
    """The dtype of every query given to scaled_dot_product_attention."""
    seen, real = [], F.scaled_dot_product_attention
    monkeypatch.setattr(
        F, "scaled_dot_product_attention", lambda q, *a, **kw: seen.append(q.dtype) or real(q, *a, **kw)
    )
    return seen


def test_float32_models_give_the_same_output(model):
    ref = unet_out(model)
    applied = optimizations.apply(model, UPCAST)
    assert applied["upcast_attn"]
    processors = model.unet.attn_processors.values()
    assert processors and all(isinstance(p, attention.UpcastAttnProcessor) for p in processors)
    assert torch.equal(unet_out(model), ref)
    optimizations.apply(model, Settings())
    assert all(isinstance(p, AttnProcessor2_0) for p in model.unet.attn_processors.values())
    assert torch.equal(unet_out(model), ref)


def test_half_precision_unet_attends_in_float32_and_stays_in_its_dtype(model, sdpa_dtypes):
    model.to("cpu", torch.bfloat16)
    plain = unet_out(model)  # apply_model returns the input's dtype: float32
    assert set(sdpa_dtypes) == {torch.bfloat16}
    sdpa_dtypes.clear()
    optimizations.apply(model, UPCAST)
    upcast = unet_out(model)
    assert set(sdpa_dtypes) == {torch.float32} and len(sdpa_dtypes) == len(model.unet.attn_processors)
    assert model.unet.dtype == torch.bfloat16 and torch.isfinite(upcast).all()
    assert (upcast - plain).abs().max() < 0.1 * plain.abs().max()  # bfloat16 rounding, not another model


def test_autocast_does_not_cast_the_attention_back_down(model, sdpa_dtypes):
    optimizations.apply(model, UPCAST)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        unet_out(model)
    assert sdpa_dtypes and set(sdpa_dtypes) == {torch.float32}


def _reference(attn: Attention, x: torch.Tensor, context: torch.Tensor | None, mask: torch.Tensor | None):
    """Attention written out in float64 from the module's own (half-precision) projections."""
    shape = x.shape
    h = x.flatten(2).transpose(1, 2) if x.ndim == 4 else x
    if attn.group_norm is not None:
        h = attn.group_norm(h.transpose(1, 2)).transpose(1, 2)
    ctx = h if context is None else context
    q, k, v = (t.unflatten(-1, (attn.heads, -1)).transpose(1, 2).double()
               for t in (attn.to_q(h), attn.to_k(ctx), attn.to_v(ctx)))  # fmt: skip
    scores = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    if mask is not None:
        scores = scores + attn.prepare_attention_mask(mask, ctx.shape[1], ctx.shape[0]).view(
            ctx.shape[0], attn.heads, -1, ctx.shape[1]).double()  # fmt: skip
    out = (scores.softmax(-1) @ v).transpose(1, 2).flatten(2).to(x.dtype)
    out = attn.to_out[0](out)
    if x.ndim == 4:
        out = out.transpose(1, 2).reshape(shape)
    return (out + x if attn.residual_connection else out) / attn.rescale_output_factor


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", ["cross-attention with a mask", "VAE-style image attention"])
def test_every_attention_form_matches_attention_written_out(kind, dtype):
    torch.manual_seed(0)
    if kind == "VAE-style image attention":  # [B, C, H, W] input, group norm, residual (AutoencoderKL's mid-block)
        attn = Attention(32, heads=1, dim_head=32, norm_num_groups=8, residual_connection=True, bias=True,
                         upcast_softmax=True, _from_deprecated_attn_block=True)  # fmt: skip
        x, context, mask = torch.randn(2, 32, 6, 5), None, None
    else:
        attn = Attention(32, cross_attention_dim=24, heads=4, dim_head=8)
        x, context = torch.randn(2, 7, 32), torch.randn(2, 9, 24)
        mask = torch.zeros(2, 1, 9)
        mask[:, :, -3:] = -10_000.0  # the last three context tokens hidden
    attn = attn.to(dtype).eval()
    x, context = x.to(dtype), None if context is None else context.to(dtype)
    mask = None if mask is None else mask.to(dtype)
    attn.set_processor(attention.UpcastAttnProcessor())
    with torch.no_grad():
        got = attn(x, encoder_hidden_states=context, attention_mask=mask)
        want = _reference(attn, x, context, mask)
    assert got.dtype == dtype and got.shape == x.shape
    tol = 2e-2 if dtype == torch.bfloat16 else 2e-3
    assert torch.allclose(got.float(), want.float(), rtol=tol, atol=tol)


@pytest.mark.parametrize("auto", [True, False])
def test_a_vae_that_overflows_in_float16_runs_again_in_float32(auto, depth_ckpt, tmp_path, caplog):
    mm = manager(tmp_path, depth_ckpt, "none", dtype=torch.float16)
    model = mm.load("tiny-depth").model
    with torch.no_grad():  # activations past float16's 65504 after the decoder's first conv; weights representable
        model.vae.decoder.conv_in.weight.fill_(30000.0)
    assert torch.isfinite(model.vae.decoder.conv_in.weight).all()
    settings = Settings().override({"auto_vae_precision": auto})
    request = GenerationRequest(prompt="x", init_images=[png(picture())], width=W, height=H, steps=2, seed=3,
                                save_images=False)  # fmt: skip
    with caplog.at_level("WARNING"):
        image = process(request, ProcessingContext(mm, settings, tmp_path, hooks=Hooks(), control=JobControl())).images[
            0
        ]
    if auto:
        assert model.vae.dtype == torch.float32 and "runs in float32 from now on" in caplog.text
        assert image.std() > 0  # not a black square
        model.to("cpu", torch.float16)  # e.g. parked in RAM and back on a GPU
        assert model.vae.dtype == torch.float32 and model.unet.dtype == torch.float16
    else:
        assert model.vae.dtype == torch.float16 and image.max() == 0  # what A1111 says: a black image
