"""The original LDM checkpoint key layout, generated from model hyperparameters (test helper).

Written from the structure of LDM's modules (``openaimodel.UNetModel``, ``autoencoder``'s
Encoder/Decoder, open_clip's text tower, HF CLIP for SD1, MiDaS DPT-Hybrid with timm's
ResNetV2+ViT), independently of diffusers' converters, so that loading a checkpoint built here
tests the real conversion.  ``tests/test_layout.py`` checks that the full-size parameters give
exactly the keys and shapes of ``../shared/ref/keys.json`` (the real 512-depth-ema layout).

``write_checkpoint`` makes a tiny random model of a family as ``.ckpt`` or ``.safetensors`` plus
its yaml, and is what every loader test goes through.
"""

from __future__ import annotations

import math
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

Shape = tuple[int, ...]
Layout = "OrderedDict[str, Shape]"

SCHEDULE_KEYS = [
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
]  # fmt: skip


def _norm(out: OrderedDict, p: str, c: int) -> None:
    out[p + ".weight"] = (c,)
    out[p + ".bias"] = (c,)


def _linear(out: OrderedDict, p: str, o: int, i: int, bias: bool = True) -> None:
    out[p + ".weight"] = (o, i)
    if bias:
        out[p + ".bias"] = (o,)


def _conv(out: OrderedDict, p: str, o: int, i: int, k: int, bias: bool = True) -> None:
    out[p + ".weight"] = (o, i, k, k)
    if bias:
        out[p + ".bias"] = (o,)


# --- UNet (ldm.modules.diffusionmodules.openaimodel.UNetModel, legacy=False) -------------------------


def _resblock(out: OrderedDict, p: str, ch: int, out_ch: int, emb: int) -> None:
    _norm(out, p + ".in_layers.0", ch)
    _conv(out, p + ".in_layers.2", out_ch, ch, 3)
    _linear(out, p + ".emb_layers.1", out_ch, emb)
    _norm(out, p + ".out_layers.0", out_ch)
    _conv(out, p + ".out_layers.3", out_ch, out_ch, 3)
    if out_ch != ch:
        _conv(out, p + ".skip_connection", out_ch, ch, 1)


def _proj(out: OrderedDict, p: str, o: int, i: int, linear: bool) -> None:
    """SpatialTransformer's proj_in/proj_out: a Linear in SD2 (use_linear_in_transformer), a 1x1 conv in SD1."""
    if linear:
        _linear(out, p, o, i)
    else:
        _conv(out, p, o, i, 1)


def _spatial_transformer(out: OrderedDict, p: str, ch: int, heads: int, dim_head: int, ctx: int, linear: bool) -> None:
    inner = heads * dim_head
    _norm(out, p + ".norm", ch)
    _proj(out, p + ".proj_in", inner, ch, linear)
    b = p + ".transformer_blocks.0"
    for attn, kv in (("attn1", inner), ("ff", None), ("attn2", ctx)):
        if attn == "ff":
            _linear(out, b + ".ff.net.0.proj", inner * 4 * 2, inner)
            _linear(out, b + ".ff.net.2", inner, inner * 4)
            continue
        _linear(out, f"{b}.{attn}.to_q", inner, inner, bias=False)
        _linear(out, f"{b}.{attn}.to_k", inner, kv, bias=False)
        _linear(out, f"{b}.{attn}.to_v", inner, kv, bias=False)
        _linear(out, f"{b}.{attn}.to_out.0", inner, inner)
    for n in ("norm1", "norm2", "norm3"):
        _norm(out, f"{b}.{n}", inner)
    _proj(out, p + ".proj_out", ch, inner, linear)


def unet_layout(u: dict, prefix: str = "model.diffusion_model.") -> OrderedDict:
    out: OrderedDict = OrderedDict()
    mc, mult, nrb = u["model_channels"], u["channel_mult"], u["num_res_blocks"]
    emb = mc * 4
    attn_res, ctx, linear = u["attention_resolutions"], u["context_dim"], u.get("use_linear_in_transformer", False)

    def heads_for(ch: int) -> tuple[int, int]:
        if u.get("num_head_channels", -1) not in (-1, None):
            return ch // u["num_head_channels"], u["num_head_channels"]
        return u["num_heads"], ch // u["num_heads"]

    p = prefix
    _linear(out, p + "time_embed.0", emb, mc)
    _linear(out, p + "time_embed.2", emb, emb)
    _conv(out, p + "input_blocks.0.0", mc, u["in_channels"], 3)
    chans, ch, ds, i = [mc], mc, 1, 1
    for level, m in enumerate(mult):
        for _ in range(nrb):
            _resblock(out, f"{p}input_blocks.{i}.0", ch, m * mc, emb)
            ch = m * mc
            if ds in attn_res:
                _spatial_transformer(out, f"{p}input_blocks.{i}.1", ch, *heads_for(ch), ctx, linear)
            chans.append(ch)
            i += 1
        if level != len(mult) - 1:
            _conv(out, f"{p}input_blocks.{i}.0.op", ch, ch, 3)
            chans.append(ch)
            ds *= 2
            i += 1
    _resblock(out, p + "middle_block.0", ch, ch, emb)
    _spatial_transformer(out, p + "middle_block.1", ch, *heads_for(ch), ctx, linear)
    _resblock(out, p + "middle_block.2", ch, ch, emb)
    i = 0
    for level, m in list(enumerate(mult))[::-1]:
        for j in range(nrb + 1):
            _resblock(out, f"{p}output_blocks.{i}.0", ch + chans.pop(), mc * m, emb)
            ch = mc * m
            k = 1
            if ds in attn_res:
                _spatial_transformer(out, f"{p}output_blocks.{i}.1", ch, *heads_for(ch), ctx, linear)
                k = 2
            if level and j == nrb:
                _conv(out, f"{p}output_blocks.{i}.{k}.conv", ch, ch, 3)
                ds //= 2
            i += 1
    _norm(out, p + "out.0", ch)
    _conv(out, p + "out.2", u["out_channels"], mc, 3)
    return out


# --- VAE (ldm.models.autoencoder.AutoencoderKL) ------------------------------------------------------


def _vae_resblock(out: OrderedDict, p: str, cin: int, cout: int) -> None:
    _norm(out, p + ".norm1", cin)
    _conv(out, p + ".conv1", cout, cin, 3)
    _norm(out, p + ".norm2", cout)
    _conv(out, p + ".conv2", cout, cout, 3)
    if cin != cout:
        _conv(out, p + ".nin_shortcut", cout, cin, 1)


def _vae_attn(out: OrderedDict, p: str, c: int) -> None:
    _norm(out, p + ".norm", c)
    for n in ("q", "k", "v", "proj_out"):
        _conv(out, f"{p}.{n}", c, c, 1)


def vae_layout(dd: dict, embed_dim: int, prefix: str = "first_stage_model.") -> OrderedDict:
    out: OrderedDict = OrderedDict()
    ch, mult, nrb, z = dd["ch"], dd["ch_mult"], dd["num_res_blocks"], dd["z_channels"]
    e = prefix + "encoder."
    _conv(out, e + "conv_in", ch, dd["in_channels"], 3)
    in_mult = [1, *mult]
    for lvl in range(len(mult)):
        cin, cout = ch * in_mult[lvl], ch * mult[lvl]
        for b in range(nrb):
            _vae_resblock(out, f"{e}down.{lvl}.block.{b}", cin, cout)
            cin = cout
        if lvl != len(mult) - 1:
            _conv(out, f"{e}down.{lvl}.downsample.conv", cin, cin, 3)
    c = ch * mult[-1]
    _vae_resblock(out, e + "mid.block_1", c, c)
    _vae_attn(out, e + "mid.attn_1", c)
    _vae_resblock(out, e + "mid.block_2", c, c)
    _norm(out, e + "norm_out", c)
    _conv(out, e + "conv_out", 2 * z if dd.get("double_z", True) else z, c, 3)
    d = prefix + "decoder."
    _conv(out, d + "conv_in", c, z, 3)
    _vae_resblock(out, d + "mid.block_1", c, c)
    _vae_attn(out, d + "mid.attn_1", c)
    _vae_resblock(out, d + "mid.block_2", c, c)
    ups: dict[int, OrderedDict] = {}
    cin = c
    for lvl in reversed(range(len(mult))):
        block: OrderedDict = OrderedDict()
        cout = ch * mult[lvl]
        for b in range(nrb + 1):
            _vae_resblock(block, f"{d}up.{lvl}.block.{b}", cin, cout)
            cin = cout
        if lvl != 0:
            _conv(block, f"{d}up.{lvl}.upsample.conv", cin, cin, 3)
        ups[lvl] = block
    for lvl in range(len(mult)):
        out.update(ups[lvl])
    _norm(out, d + "norm_out", ch)
    _conv(out, d + "conv_out", dd["out_ch"], ch, 3)
    _conv(out, prefix + "quant_conv", 2 * embed_dim, 2 * z, 1)
    _conv(out, prefix + "post_quant_conv", z, embed_dim, 1)
    return out


# --- text encoders -----------------------------------------------------------------------------------


def open_clip_layout(width: int, layers: int, embed: int, vocab: int = 49408, ctx: int = 77) -> OrderedDict:
    p = "cond_stage_model.model."
    out: OrderedDict = OrderedDict()
    out[p + "positional_embedding"] = (ctx, width)
    out[p + "text_projection"] = (width, embed)
    out[p + "logit_scale"] = ()
    for i in range(layers):
        b = f"{p}transformer.resblocks.{i}."
        _norm(out, b + "ln_1", width)
        out[b + "attn.in_proj_weight"] = (3 * width, width)
        out[b + "attn.in_proj_bias"] = (3 * width,)
        _linear(out, b + "attn.out_proj", width, width)
        _norm(out, b + "ln_2", width)
        _linear(out, b + "mlp.c_fc", 4 * width, width)
        _linear(out, b + "mlp.c_proj", width, 4 * width)
    out[p + "token_embedding.weight"] = (vocab, width)
    _norm(out, p + "ln_final", width)
    return out


def clip_layout(width: int, layers: int, vocab: int = 49408, ctx: int = 77) -> OrderedDict:
    p = "cond_stage_model.transformer.text_model."
    out: OrderedDict = OrderedDict()
    out[p + "embeddings.token_embedding.weight"] = (vocab, width)
    out[p + "embeddings.position_embedding.weight"] = (ctx, width)
    for i in range(layers):
        b = f"{p}encoder.layers.{i}."
        for n in ("k_proj", "v_proj", "q_proj", "out_proj"):
            _linear(out, b + "self_attn." + n, width, width)
        _norm(out, b + "layer_norm1", width)
        _linear(out, b + "mlp.fc1", 4 * width, width)
        _linear(out, b + "mlp.fc2", width, 4 * width)
        _norm(out, b + "layer_norm2", width)
    _norm(out, p + "final_layer_norm", width)
    return out


# --- MiDaS DPT-Hybrid (ldm.modules.midas, timm vit_base_resnet50_384 inside) -------------------------


@dataclass(frozen=True)
class MidasDims:
    stem: int = 64
    stage_out: tuple[int, ...] = (256, 512, 1024)
    depths: tuple[int, ...] = (3, 4, 9)
    hidden: int = 768
    layers: int = 12
    mlp: int = 3072
    grid: int = 24
    features: int = 256


def midas_layout(m: MidasDims = MidasDims()) -> OrderedDict:
    p = "depth_model.model."
    out: OrderedDict = OrderedDict()
    v = p + "pretrained.model."
    out[v + "cls_token"] = (1, 1, m.hidden)
    out[v + "pos_embed"] = (1, m.grid * m.grid + 1, m.hidden)
    bb = v + "patch_embed.backbone."
    out[bb + "stem.conv.weight"] = (m.stem, 3, 7, 7)
    _norm(out, bb + "stem.norm", m.stem)
    cin = m.stem
    for s, (cout, depth) in enumerate(zip(m.stage_out, m.depths, strict=True)):
        mid = cout // 4
        for b in range(depth):
            q = f"{bb}stages.{s}.blocks.{b}."
            if b == 0:
                _conv(out, q + "downsample.conv", cout, cin, 1, bias=False)
                _norm(out, q + "downsample.norm", cout)
            _conv(out, q + "conv1", mid, cin if b == 0 else cout, 1, bias=False)
            _norm(out, q + "norm1", mid)
            _conv(out, q + "conv2", mid, mid, 3, bias=False)
            _norm(out, q + "norm2", mid)
            _conv(out, q + "conv3", cout, mid, 1, bias=False)
            _norm(out, q + "norm3", cout)
        cin = cout
    _conv(out, v + "patch_embed.proj", m.hidden, cin, 1)
    for i in range(m.layers):
        b = f"{v}blocks.{i}."
        _norm(out, b + "norm1", m.hidden)
        _linear(out, b + "attn.qkv", 3 * m.hidden, m.hidden)
        _linear(out, b + "attn.proj", m.hidden, m.hidden)
        _norm(out, b + "norm2", m.hidden)
        _linear(out, b + "mlp.fc1", m.mlp, m.hidden)
        _linear(out, b + "mlp.fc2", m.hidden, m.mlp)
    _norm(out, v + "norm", m.hidden)
    _linear(out, v + "head", 1000, m.hidden)
    neck = [m.stage_out[0], m.stage_out[1], m.hidden, m.hidden]
    for n in (3, 4):
        a = f"{p}pretrained.act_postprocess{n}."
        _linear(out, a + "0.project.0", m.hidden, 2 * m.hidden)
        _conv(out, a + "3", neck[n - 1], m.hidden, 1)
        if n == 4:
            _conv(out, a + "4", neck[3], neck[3], 3)
    s = p + "scratch."
    for i in range(1, 5):
        _conv(out, f"{s}layer{i}_rn", m.features, neck[i - 1], 3, bias=False)
    for i in range(1, 5):
        r = f"{s}refinenet{i}."
        _conv(out, r + "out_conv", m.features, m.features, 1)
        for unit in (1, 2):
            for c in (1, 2):
                _conv(out, f"{r}resConfUnit{unit}.conv{c}", m.features, m.features, 3)
    _conv(out, s + "output_conv.0", m.features // 2, m.features, 3)
    _conv(out, s + "output_conv.2", 32, m.features // 2, 3)
    _conv(out, s + "output_conv.4", 1, 32, 1)
    return out


# --- whole models --------------------------------------------------------------------------------


def model_layout(config: dict, *, text: dict, midas: MidasDims | None = None) -> OrderedDict:
    """Keys and shapes of a whole LDM checkpoint described by a yaml `config` (as a dict)."""
    params = config["model"]["params"]
    out: OrderedDict = OrderedDict((k, (params.get("timesteps", 1000),)) for k in SCHEDULE_KEYS)
    out.update(unet_layout(params["unet_config"]["params"]))
    fs = params["first_stage_config"]["params"]
    out.update(vae_layout(fs["ddconfig"], fs["embed_dim"]))
    if params["cond_stage_config"]["target"].endswith("FrozenOpenCLIPEmbedder"):
        out.update(open_clip_layout(text["width"], text["layers"], text.get("embed", text["width"])))
    else:
        out.update(clip_layout(text["width"], text["layers"]))
    if "depth_stage_config" in params:
        out.update(midas_layout(midas or MidasDims()))
    return out


def random_state_dict(layout: OrderedDict, seed: int = 0, dtype: torch.dtype = torch.float32) -> OrderedDict:
    """Deterministic random weights with make_ckpt.py's rules (N(0, 1/fan_in), norms 1, biases 0)."""
    sd: OrderedDict = OrderedDict()
    for key, shape in layout.items():
        last = key.rsplit(".", 1)[-1]
        if key in SCHEDULE_KEYS:
            t = torch.linspace(0.00085**0.5, 0.012**0.5, shape[0], dtype=torch.float64) ** 2
            if key != "betas":
                t = torch.cumprod(1 - t, 0)
        elif len(shape) == 0:
            t = torch.tensor(math.log(1 / 0.07))
        elif len(shape) == 1 and last in ("bias", "in_proj_bias"):
            t = torch.zeros(shape)
        elif len(shape) == 1:
            t = torch.ones(shape)
        else:
            g = torch.Generator().manual_seed(seed + zlib.crc32(key.encode()))
            t = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
            if key.endswith("output_conv.4.weight"):
                t = t.abs()
        sd[key] = t.to(dtype)
    return sd


# --- tiny configs ------------------------------------------------------------------------------------

TINY_TEXT = {"width": 128, "layers": 3, "embed": 128}
TINY_TEXT_SD1 = {"width": 128, "layers": 2}
TINY_MIDAS = MidasDims(
    stem=32, stage_out=(128, 128, 128), depths=(1, 1, 1), hidden=128, layers=4, mlp=256, grid=24, features=32
)


def tiny_config(family: str, parameterization: str = "eps") -> dict:
    """A tiny LDM yaml (as a dict) of a family: same structure as the real one, small widths."""
    base = Path(__file__).resolve().parents[2] / "configs"
    name = {"sd2-depth": "v2-midas-inference.yaml", "sd2": "v2-inference.yaml", "sd1": "v1-inference.yaml"}[family]
    cfg = yaml.safe_load((base / name).read_text())
    params = cfg["model"]["params"]
    if parameterization == "v":
        params["parameterization"] = "v"
    unet = params["unet_config"]["params"]
    unet.update(model_channels=32, channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[1, 2])
    if family == "sd1":
        unet.update(num_heads=2, context_dim=TINY_TEXT_SD1["width"])
    else:
        unet.update(num_head_channels=16, context_dim=TINY_TEXT["width"])
    params["first_stage_config"]["params"]["ddconfig"].update(ch=32, ch_mult=[1, 1, 1, 1], num_res_blocks=1)
    return cfg


@dataclass
class TinyCheckpoint:
    path: Path
    config_path: Path | None
    state_dict: OrderedDict = field(repr=False)


def write_checkpoint(
    directory: Path,
    name: str,
    family: str = "sd2-depth",
    *,
    fmt: str = "safetensors",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    with_yaml: bool = True,
    parameterization: str = "eps",
    wrap: bool = True,
    extra: dict | None = None,
) -> TinyCheckpoint:
    """A tiny random checkpoint of `family` in the real LDM layout, plus its yaml beside it."""
    cfg = tiny_config(family, parameterization)
    text = TINY_TEXT_SD1 if family == "sd1" else TINY_TEXT
    layout = model_layout(cfg, text=text, midas=TINY_MIDAS)
    sd = random_state_dict(layout, seed=seed, dtype=dtype)
    if extra:
        sd.update(extra)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.{fmt}"
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save({"state_dict": sd, "global_step": 1000} if wrap else sd, path)
    config_path = None
    if with_yaml:
        config_path = path.with_suffix(".yaml")
        config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return TinyCheckpoint(path, config_path, sd)
