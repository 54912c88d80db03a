"""Reference implementations to check our loading against (test helper).

* UNet, VAE and the MiDaS transform: the original Stability-AI ``ldm`` code, as packaged on PyPI
  in ``stable-diffusion-sdkit`` (a copy of Stability-AI/stablediffusion's ``ldm``).  The wheel is
  fetched with ``pip download`` into ``tests/.cache`` (``.ci/run`` does it up front) and only the
  torch-only modules are imported from it.
* The OpenCLIP text tower and MiDaS DPT-Hybrid, whose originals need open_clip/timm (and so
  torchvision, which cannot be installed here): small functional versions written from the
  originals' semantics, straight from the raw LDM keys, with torch's own ``MultiheadAttention``
  for open_clip's attention.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import subprocess
import sys
import zipfile
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

CACHE = Path(__file__).resolve().parents[1] / ".cache"
SDKIT = "stable-diffusion-sdkit==2.1.5"
OPEN_CLIP = "open_clip_torch==3.3.0"


def _wheel(spec: str, pattern: str) -> Path | None:
    """A wheel from the package registry (pip download --no-deps), cached in tests/.cache."""
    CACHE.mkdir(parents=True, exist_ok=True)
    found = sorted(CACHE.glob(pattern))
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", spec, "-d", str(CACHE)]
        if subprocess.run(cmd, capture_output=True, timeout=300).returncode != 0:
            return None
        found = sorted(CACHE.glob(pattern))
    return found[0] if found else None


@lru_cache(maxsize=1)
def open_clip_tokenizer():
    """open_clip's own ``tokenize`` (its tokenizer module alone, without importing the package)."""
    target = CACHE / "open_clip"
    if not (target / "open_clip" / "tokenizer.py").is_file():
        wheel = _wheel(OPEN_CLIP, "open_clip_torch-*.whl")
        if wheel is None:
            return None
        with zipfile.ZipFile(wheel) as z:
            z.extractall(target, ["open_clip/tokenizer.py", "open_clip/bpe_simple_vocab_16e6.txt.gz"])
    spec = importlib.util.spec_from_file_location("open_clip_tokenizer_oracle", target / "open_clip" / "tokenizer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.tokenize


@lru_cache(maxsize=1)
def ldm_root() -> Path | None:
    """Folder holding the original ``ldm`` package, downloading the wheel once; None if unavailable."""
    target = CACHE / "sdkit"
    if (target / "ldm").is_dir():
        return target
    wheel = _wheel(SDKIT, "stable_diffusion_sdkit-*.whl")
    if wheel is None:
        return None
    with zipfile.ZipFile(wheel) as z:
        z.extractall(target, [n for n in z.namelist() if n.startswith("ldm/")])
    return target


def import_ldm(module: str):
    root = ldm_root()
    if root is None:
        return None
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return importlib.import_module(module)


def _sub(sd: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def ldm_unet(unet_params: dict, sd: dict):
    """The original ``UNetModel`` with the checkpoint's weights (float32, eval)."""
    openaimodel = import_ldm("ldm.modules.diffusionmodules.openaimodel")
    params = {k: v for k, v in unet_params.items() if k != "use_checkpoint"}
    net = openaimodel.UNetModel(**params, use_checkpoint=False).eval()
    net.load_state_dict(_sub(sd, "model.diffusion_model."), strict=True)
    return net


class LdmVae(torch.nn.Module):
    """The original first stage: Encoder + quant_conv -> posterior, post_quant_conv + Decoder."""

    def __init__(self, ddconfig: dict, embed_dim: int, sd: dict):
        super().__init__()
        model = import_ldm("ldm.modules.diffusionmodules.model")
        self.encoder = model.Encoder(**ddconfig)
        self.decoder = model.Decoder(**ddconfig)
        self.quant_conv = torch.nn.Conv2d(2 * ddconfig["z_channels"], 2 * embed_dim, 1)
        self.post_quant_conv = torch.nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)
        self.load_state_dict(_sub(sd, "first_stage_model."), strict=True)
        self.eval()

    def encode(self, x):
        dist = import_ldm("ldm.modules.distributions.distributions")
        return dist.DiagonalGaussianDistribution(self.quant_conv(self.encoder(x)))

    def decode(self, z):
        return self.decoder(self.post_quant_conv(z))


def midas_transform(image_hwc01):
    """The original AddMiDaS transform (Resize 'minimal' x32 around 384, INTER_CUBIC; normalise 0.5/0.5)."""
    import cv2

    t = import_ldm("ldm.modules.midas.midas.transforms")
    sample = {"image": image_hwc01}
    for step in (
        t.Resize(384, 384, resize_target=None, keep_aspect_ratio=True, ensure_multiple_of=32,
                 resize_method="minimal", image_interpolation_method=cv2.INTER_CUBIC),
        t.NormalizeImage(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5]),
        t.PrepareForNet(),
    ):  # fmt: skip
        sample = step(sample)
    return sample["image"]


# --- OpenCLIP text tower (FrozenOpenCLIPEmbedder.encode_with_transformer) -----------------------------


@torch.no_grad()
def open_clip_text(sd: dict, tokens: torch.Tensor, layer: str = "penultimate") -> torch.Tensor:
    p = "cond_stage_model.model."
    width = sd[p + "token_embedding.weight"].shape[1]
    heads = width // 64 or 1
    n_blocks = len({k.split(".")[4] for k in sd if k.startswith(p + "transformer.resblocks.")})
    use = n_blocks - 1 if layer == "penultimate" else n_blocks
    ctx = tokens.shape[1]
    x = F.embedding(tokens, sd[p + "token_embedding.weight"]) + sd[p + "positional_embedding"]
    mask = torch.full((ctx, ctx), float("-inf")).triu_(1)
    x = x.permute(1, 0, 2)  # LND, as open_clip
    for i in range(use):
        b = f"{p}transformer.resblocks.{i}."
        attn = torch.nn.MultiheadAttention(width, heads)
        attn.load_state_dict(
            {
                "in_proj_weight": sd[b + "attn.in_proj_weight"],
                "in_proj_bias": sd[b + "attn.in_proj_bias"],
                "out_proj.weight": sd[b + "attn.out_proj.weight"],
                "out_proj.bias": sd[b + "attn.out_proj.bias"],
            }
        )
        attn.eval()
        h = F.layer_norm(x, (width,), sd[b + "ln_1.weight"], sd[b + "ln_1.bias"])
        x = x + attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        h = F.layer_norm(x, (width,), sd[b + "ln_2.weight"], sd[b + "ln_2.bias"])
        h = F.linear(h, sd[b + "mlp.c_fc.weight"], sd[b + "mlp.c_fc.bias"])
        x = x + F.linear(F.gelu(h), sd[b + "mlp.c_proj.weight"], sd[b + "mlp.c_proj.bias"])
    x = x.permute(1, 0, 2)
    return F.layer_norm(x, (width,), sd[p + "ln_final.weight"], sd[p + "ln_final.bias"])


# --- MiDaS DPT-Hybrid (timm 0.6 vit_base_resnet50_384 + MiDaS DPT head), functional ----------------


def _pad_same(x, k, s, value=0.0):
    ih, iw = x.shape[-2:]
    ph = max((math.ceil(ih / s) - 1) * s + k - ih, 0)
    pw = max((math.ceil(iw / s) - 1) * s + k - iw, 0)
    return F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2], value=value)


def _std_conv_same(x, w, stride=1, eps=1e-8):
    """timm StdConv2dSame: weight standardisation, TF 'SAME' padding (static when stride 1)."""
    k = w.shape[-1]
    ws = F.batch_norm(w.reshape(1, w.shape[0], -1), None, None, training=True, momentum=0.0, eps=eps).reshape_as(w)
    if stride == 1:
        return F.conv2d(x, ws, None, 1, (k - 1) // 2)
    return F.conv2d(_pad_same(x, k, stride), ws, None, stride, 0)


def _gn(x, sd, p, act=True):
    x = F.group_norm(x, 32, sd[p + ".weight"], sd[p + ".bias"], eps=1e-5)
    return F.relu(x) if act else x


def _bit(sd, x, bb):
    x = _std_conv_same(x, sd[bb + "stem.conv.weight"], stride=2)
    x = _gn(x, sd, bb + "stem.norm")
    x = F.max_pool2d(_pad_same(x, 3, 2, value=float("-inf")), 3, 2)
    feats = []
    stages = sorted({int(k[len(bb) :].split(".")[1]) for k in sd if k.startswith(bb + "stages.")})
    for s in stages:
        blocks = sorted({int(k[len(bb) :].split(".")[3]) for k in sd if k.startswith(f"{bb}stages.{s}.blocks.")})
        for b in blocks:
            q = f"{bb}stages.{s}.blocks.{b}."
            stride = 2 if (s > 0 and b == 0) else 1
            shortcut = x
            if b == 0:
                shortcut = _gn(
                    _std_conv_same(x, sd[q + "downsample.conv.weight"], stride), sd, q + "downsample.norm", act=False
                )
            h = _gn(_std_conv_same(x, sd[q + "conv1.weight"]), sd, q + "norm1")
            h = _gn(_std_conv_same(h, sd[q + "conv2.weight"], stride), sd, q + "norm2")
            h = _gn(_std_conv_same(h, sd[q + "conv3.weight"]), sd, q + "norm3", act=False)
            x = F.relu(h + shortcut)
        feats.append(x)
    return feats


def _vit_block(x, sd, b, heads):
    n, length, c = x.shape
    h = F.layer_norm(x, (c,), sd[b + "norm1.weight"], sd[b + "norm1.bias"], eps=1e-6)
    qkv = F.linear(h, sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"]).reshape(n, length, 3, heads, c // heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    attn = ((q @ k.transpose(-2, -1)) * (c // heads) ** -0.5).softmax(dim=-1)
    h = (attn @ v).transpose(1, 2).reshape(n, length, c)
    x = x + F.linear(h, sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"])
    h = F.layer_norm(x, (c,), sd[b + "norm2.weight"], sd[b + "norm2.bias"], eps=1e-6)
    h = F.gelu(F.linear(h, sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"]))
    return x + F.linear(h, sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"])


def _rcu(x, sd, p):
    h = F.conv2d(F.relu(x), sd[p + "conv1.weight"], sd[p + "conv1.bias"], padding=1)
    h = F.conv2d(F.relu(h), sd[p + "conv2.weight"], sd[p + "conv2.bias"], padding=1)
    return h + x


def _fusion(sd, p, x, skip=None):
    if skip is not None:
        x = x + _rcu(skip, sd, p + "resConfUnit1.")
    x = _rcu(x, sd, p + "resConfUnit2.")
    x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
    return F.conv2d(x, sd[p + "out_conv.weight"], sd[p + "out_conv.bias"])


@torch.no_grad()
def midas_dpt_hybrid(sd: dict, x: torch.Tensor) -> torch.Tensor:
    """MiDaS DPTDepthModel(backbone='vitb_rn50_384', non_negative=True).forward -> [B, H, W]."""
    p = "depth_model.model."
    v = p + "pretrained.model."
    n, _, h, w = x.shape
    hidden = sd[v + "pos_embed"].shape[2]
    heads = hidden // 64 or 1
    n_layers = len({k.split(".")[5] for k in sd if k.startswith(v + "blocks.")})
    hooks = [(3 * n_layers) // 4 - 1, n_layers - 1]
    feats = _bit(sd, x, v + "patch_embed.backbone.")
    tokens = (
        F.conv2d(feats[-1], sd[v + "patch_embed.proj.weight"], sd[v + "patch_embed.proj.bias"])
        .flatten(2)
        .transpose(1, 2)
    )
    pos = sd[v + "pos_embed"]
    old = int(math.sqrt(pos.shape[1] - 1))
    grid = pos[0, 1:].reshape(1, old, old, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(h // 16, w // 16), mode="bilinear").permute(0, 2, 3, 1).reshape(1, -1, hidden)
    t = torch.cat([sd[v + "cls_token"].expand(n, -1, -1), tokens], 1) + torch.cat([pos[:, :1], grid], 1)
    acts = []
    for i in range(n_layers):
        t = _vit_block(t, sd, f"{v}blocks.{i}.", heads)
        if i in hooks:
            acts.append(t)
    layers = [feats[0], feats[1]]
    for idx, a in zip((3, 4), acts, strict=True):
        ap = f"{p}pretrained.act_postprocess{idx}."
        readout = a[:, :1].expand_as(a[:, 1:])
        y = F.gelu(
            F.linear(torch.cat([a[:, 1:], readout], -1), sd[ap + "0.project.0.weight"], sd[ap + "0.project.0.bias"])
        )
        y = y.transpose(1, 2).unflatten(2, (h // 16, w // 16))
        y = F.conv2d(y, sd[ap + "3.weight"], sd[ap + "3.bias"])
        if idx == 4:
            y = F.conv2d(y, sd[ap + "4.weight"], sd[ap + "4.bias"], stride=2, padding=1)
        layers.append(y)
    s = p + "scratch."
    rn = [F.conv2d(layer, sd[f"{s}layer{i + 1}_rn.weight"], padding=1) for i, layer in enumerate(layers)]
    path = _fusion(sd, s + "refinenet4.", rn[3])
    path = _fusion(sd, s + "refinenet3.", path, rn[2])
    path = _fusion(sd, s + "refinenet2.", path, rn[1])
    path = _fusion(sd, s + "refinenet1.", path, rn[0])
    out = F.conv2d(path, sd[s + "output_conv.0.weight"], sd[s + "output_conv.0.bias"], padding=1)
    out = F.interpolate(out, scale_factor=2, mode="bilinear", align_corners=True)
    out = F.relu(F.conv2d(out, sd[s + "output_conv.2.weight"], sd[s + "output_conv.2.bias"], padding=1))
    out = F.relu(F.conv2d(out, sd[s + "output_conv.4.weight"], sd[s + "output_conv.4.bias"]))
    return out.squeeze(1)
