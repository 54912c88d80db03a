"""Checkpoint loading: the real key layout, detection, safety, and the model contract's numerics."""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from modules.core.errors import CheckpointError, ConfigError, UnsafeCheckpointError, UnsupportedModelError
from modules.models import ldm_config as model_config
from modules.models import ldm_to_diffusers as convert
from modules.models import midas as depth
from modules.models import safe_load as ckpt_io
from modules.models.checkpoints import load_model
from tests.helpers import oracle
from tests.helpers.ldm_layout import model_layout, write_checkpoint

ROOT = Path(__file__).resolve().parents[2]
KEYS_JSON = ROOT.parent / "shared" / "ref" / "keys.json"


def real_layout() -> dict[str, tuple]:
    if not KEYS_JSON.is_file():
        pytest.skip("../shared/ref/keys.json is not beside the checkout")
    return {k: tuple(v[0]) for k, v in json.loads(KEYS_JSON.read_text())["state_dict"].items()}


def meta_state_dict(layout: dict[str, tuple]) -> dict[str, torch.Tensor]:
    return {k: torch.empty(shape, device="meta") for k, shape in layout.items()}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12))


# --- the real 512-depth-ema layout ------------------------------------------------------------------


def test_layout_generator_reproduces_real_checkpoint():
    """Our test-checkpoint writer, at full size, gives exactly keys.json (keys, shapes and order)."""
    cfg = yaml.safe_load((ROOT / "configs" / "v2-midas-inference.yaml").read_text())
    generated = model_layout(cfg, text={"width": 1024, "layers": 24, "embed": 1024})
    assert list(generated.items()) == list(real_layout().items())


def test_full_size_keys_all_consumed_or_ignored():
    """Every key of the real layout feeds a component or is ignored with a reason; modules load strictly."""
    sd = meta_state_dict(real_layout())
    config = model_config.load_config(ROOT / "configs" / "v2-midas-inference.yaml")
    model_config.check_matches(config, sd)
    plan = convert.plan_keys(config, sd)
    assert plan.unexpected == []
    used = sum(len(v) for v in plan.components.values())
    ignored = {reason: len(keys) for reason, keys in plan.ignored.items() if keys}
    assert used + sum(ignored.values()) == len(sd) == 1608
    assert sorted(ignored.values()) == [2, 12, 14]  # MiDaS head, schedule, text resblock 23 + projection + scale
    unet = convert.build_unet(config, sd)
    assert sum(p.numel() for p in unet.parameters()) == 865_913_604  # keys.json: 686 keys
    assert unet.config.in_channels == 5 and unet.config.cross_attention_dim == 1024
    vae = convert.build_vae(config, sd)
    assert sum(p.numel() for p in vae.parameters()) == 83_653_863
    text = convert.build_text_encoder(config, sd, plan.components["text_encoder"])
    assert text.config.num_hidden_layers == 23 and text.config.hidden_act == "gelu"
    assert text.config.num_attention_heads == 16 and text.config.hidden_size == 1024
    dpt = convert.build_depth_model(sd, plan.components["depth_model"])
    c = dpt.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.layer_norm_eps) == (768, 12, 12, 1e-6)
    assert list(c.backbone_out_indices) == [0, 1, 8, 11]
    assert list(c.neck_hidden_sizes) == [256, 512, 768, 768] and c.fusion_hidden_size == 256
    assert list(c.backbone_config.depths) == [3, 4, 9] and c.image_size == 384
    assert len(dpt.state_dict()) == 414 and len(plan.components["depth_model"]) == 366


def test_unet_parameter_count_matches_keys_json():
    layout = real_layout()
    unet_elems = sum(int(np.prod(s)) for k, s in layout.items() if k.startswith("model.diffusion_model."))
    sd = meta_state_dict(layout)
    config = model_config.load_config(ROOT / "configs" / "v2-midas-inference.yaml")
    unet = convert.build_unet(config, sd)
    assert sum(p.numel() for p in unet.parameters()) == unet_elems


# --- detection --------------------------------------------------------------------------------------


def _with(layout, **shapes):
    out = dict(layout)
    out.update(shapes)
    return out


def test_detects_depth_base_and_sd1():
    layout = real_layout()
    assert model_config.detect(meta_state_dict(layout)).family == "sd2-depth"
    base = {k: v for k, v in layout.items() if not k.startswith("depth_model.")}
    base["model.diffusion_model.input_blocks.0.0.weight"] = (320, 4, 3, 3)
    assert model_config.detect(meta_state_dict(base)).family == "sd2"
    sd1 = {k: (v[:-1] + (768,) if k.endswith("attn2.to_k.weight") else v) for k, v in base.items()}
    assert model_config.detect(meta_state_dict(sd1)).family == "sd1"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model.diffusion_model.input_blocks.0.0.weight": (320, 9, 3, 3)}, "inpainting"),
        ({"model.diffusion_model.input_blocks.0.0.weight": (320, 8, 3, 3)}, "instruct-pix2pix"),
        ({"conditioner.embedders.0.transformer.text_model.embeddings.position_ids": (1, 77)}, "SDXL"),
    ],
)
def test_unsupported_models_are_named(change, message):
    layout = {k: v for k, v in real_layout().items() if not k.startswith("depth_model.")}
    with pytest.raises(UnsupportedModelError, match=message):
        model_config.detect(meta_state_dict(_with(layout, **change)))


def test_not_a_stable_diffusion_checkpoint():
    with pytest.raises(UnsupportedModelError, match="not a Stable Diffusion checkpoint"):
        model_config.detect({"encoder.weight": torch.zeros(2)})


def test_tiny_checkpoint_without_yaml_is_refused_with_reason(tmp_path):
    ck = write_checkpoint(tmp_path, "noyaml", "sd2", with_yaml=False)
    with pytest.raises(UnsupportedModelError, match="cross-attention width 128"):
        load_model(ck.path)


def test_explicit_config_wins_over_sibling(tmp_path, depth_ckpt):
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "configs" / "v1-inference.yaml").read_text())
    with pytest.raises(ConfigError, match="5 channels|5-channel|4-channel"):
        load_model(depth_ckpt.path, bad)


def test_config_that_does_not_fit_the_weights(tmp_path):
    ck = write_checkpoint(tmp_path, "mismatch", "sd2-depth")
    cfg = yaml.safe_load(ck.config_path.read_text())
    cfg["model"]["params"]["unet_config"]["params"]["model_channels"] = 64
    ck.config_path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(CheckpointError, match="UNet weights do not match"):
        load_model(ck.path)


def test_yaml_targets_are_never_imported(tmp_path):
    ck = write_checkpoint(tmp_path, "evilyaml", "sd2-depth")
    cfg = yaml.safe_load(ck.config_path.read_text())
    cfg["model"]["params"]["cond_stage_config"]["target"] = "os.system"
    ck.config_path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="not supported"):
        load_model(ck.path)
    python_tag = tmp_path / "tagged.yaml"
    python_tag.write_text("model: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(ConfigError):
        model_config.load_config(python_tag)
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()


# --- loading every family and format ----------------------------------------------------------------


@pytest.mark.parametrize("family", ["sd2-depth", "sd2", "sd1"])
@pytest.mark.parametrize("fmt", ["safetensors", "ckpt"])
def test_load_every_family_and_format(tmp_path, family, fmt):
    ck = write_checkpoint(tmp_path, f"{family}-{fmt}", family, fmt=fmt)
    m = load_model(ck.path)
    assert m.family == family and m.is_depth == (family == "sd2-depth")
    plan = m.report.plan
    assert plan.unexpected == []
    assert sum(map(len, plan.components.values())) + sum(map(len, plan.ignored.values())) == len(ck.state_dict)
    assert "Model loaded in" in m.report.summary()
    ctx = m.get_learned_conditioning(["a cat", ""])
    assert ctx.shape == (2, 77, 128) and torch.isfinite(ctx).all()


def test_fp16_checkpoint_loads_into_fp32_and_unwrapped_ckpt(tmp_path):
    ck = write_checkpoint(tmp_path, "half", "sd2-depth", fmt="ckpt", dtype=torch.float16, wrap=False)
    m = load_model(ck.path)
    assert m.dtype == torch.float32 and m.depth_model.dtype == torch.float32


def test_depth_model_stays_float32_when_model_is_half(depth_ckpt):
    m = load_model(depth_ckpt.path, dtype=torch.float16)
    assert m.unet.dtype == torch.float16 and m.text_encoder.dtype == torch.float16
    assert next(m.depth_model.parameters()).dtype == torch.float32


def test_ema_copies_are_ignored_and_reported(tmp_path):
    extra = {f"model_ema.diffusion_modelinput_blocks{i}0weight": torch.zeros(1) for i in range(3)}
    extra["model_ema.num_updates"] = torch.tensor(5)
    ck = write_checkpoint(tmp_path, "ema", "sd2-depth", fmt="ckpt", extra=extra)
    m = load_model(ck.path)
    ignored = {r: k for r, k in m.report.plan.ignored.items() if k}
    assert any("EMA" in r and len(k) == 4 for r, k in ignored.items())
    assert m.report.plan.unexpected == []


def test_unknown_keys_are_reported_not_silent(tmp_path, caplog):
    ck = write_checkpoint(tmp_path, "extra", "sd2-depth", extra={"some_lora.weight": torch.zeros(2)})
    m = load_model(ck.path)
    assert m.report.plan.unexpected == ["some_lora.weight"]
    assert "some_lora.weight" in m.report.summary()


def test_weights_are_assigned_not_copied(depth_ckpt):
    """The UNet's parameters are the checkpoint's own tensors (no second copy in memory)."""
    config = model_config.load_config(depth_ckpt.config_path)
    sd = ckpt_io.read_state_dict(depth_ckpt.path)
    unet = convert.build_unet(config, sd)
    src = sd["model.diffusion_model.input_blocks.0.0.weight"]
    assert unet.conv_in.weight.data_ptr() == src.data_ptr()


# --- hostile and broken files -----------------------------------------------------------------------


class _Touch:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned.txt"
    bad = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "payload": _Touch(marker)}, bad)
    assert not marker.exists()
    with pytest.raises(UnsafeCheckpointError, match="forbidden global .*open"):
        load_model(bad)
    assert not marker.exists()


def test_legacy_pickle_with_os_system_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path}/pwned",))

    bad = tmp_path / "legacy.ckpt"
    with bad.open("wb") as f:
        pickle.dump({"state_dict": {}, "x": Evil()}, f, protocol=2)
    with pytest.raises(UnsafeCheckpointError, match="system"):
        ckpt_io.read_state_dict(bad)
    assert not (tmp_path / "pwned").exists()


def test_zip_with_extra_members_is_refused(tmp_path, depth_ckpt_pickle):
    bad = tmp_path / "extra.ckpt"
    with zipfile.ZipFile(depth_ckpt_pickle.path) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            dst.writestr(item, src.read(item.filename))
        dst.writestr("archive/payload.py", "import os")
    with pytest.raises(UnsafeCheckpointError, match="unexpected member"):
        ckpt_io.read_state_dict(bad)


def test_truncated_and_junk_files(tmp_path, depth_ckpt, depth_ckpt_pickle):
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(depth_ckpt.path.read_bytes()[:100_000])
    with pytest.raises(CheckpointError, match="outside the file|truncated"):
        ckpt_io.read_state_dict(cut)
    cut_ckpt = tmp_path / "cut.ckpt"
    cut_ckpt.write_bytes(depth_ckpt_pickle.path.read_bytes()[:50_000])
    with pytest.raises(CheckpointError):
        ckpt_io.read_state_dict(cut_ckpt)
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a model " * 100)
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        ckpt_io.read_state_dict(junk)
    header = tmp_path / "header.safetensors"
    header.write_bytes((10**12).to_bytes(8, "little") + b"{}")
    with pytest.raises(CheckpointError, match="corrupt"):
        ckpt_io.read_state_dict(header)


def test_unsafe_opt_out_loads_a_trusted_pickle(tmp_path):
    path = tmp_path / "custom.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "meta": {1, 2}}, path)
    assert torch.equal(ckpt_io.read_state_dict(path, allow_unsafe=True)["w"], torch.ones(2))


# --- the model contract against the original implementations ----------------------------------------


def test_text_encoder_matches_open_clip(depth_ckpt, depth_model):
    tokens = depth_model.tokenizer(["a photo of a cat!", "", "wow!! " * 40])
    ours = depth_model.encode_tokens(tokens)
    ref = oracle.open_clip_text(depth_ckpt.state_dict, tokens)
    assert rel_err(ours, ref) < 1e-5
    assert torch.equal(depth_model.get_learned_conditioning(["a photo of a cat!"]), ours[:1])


def test_unet_matches_ldm(ldm_available, depth_ckpt, depth_model):
    config = model_config.load_config(depth_ckpt.config_path)
    net = oracle.ldm_unet(config.unet, depth_ckpt.state_dict)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 12, generator=g)
    d = torch.rand(2, 1, 8, 12, generator=g) * 2 - 1
    ctx = torch.randn(2, 77, 128, generator=g)
    t = torch.tensor([3, 951])
    with torch.no_grad():
        ref = net(torch.cat([x, d], 1), t, context=ctx)
    ours = depth_model.apply_model(x, t, {"c_concat": [d], "c_crossattn": [ctx]})
    assert rel_err(ours, ref) < 1e-5


def test_vae_matches_ldm(ldm_available, depth_ckpt, depth_model):
    config = model_config.load_config(depth_ckpt.config_path)
    vae = oracle.LdmVae(config.ddconfig, 4, depth_ckpt.state_dict)
    img = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        ref = vae.encode(img)
        z = ref.mean * depth_model.scale_factor
        ref_img = vae.decode((1.0 / depth_model.scale_factor) * z)
    ours = depth_model.encode_first_stage(img)
    assert rel_err(ours.mean, ref.mean) < 1e-5 and rel_err(ours.logvar, ref.logvar) < 1e-5
    assert rel_err(depth_model.decode_first_stage(z), ref_img) < 1e-5
    sample = ours.sample(generator=torch.Generator().manual_seed(3))
    assert sample.shape == (1, 4, 8, 12)


@pytest.mark.parametrize("size", [(64, 96), (512, 768), (256, 320), (72, 136)])
def test_midas_preprocessing_matches_ldm_transform(ldm_available, size):
    img = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(2)) * 2 - 1
    ours = depth.midas_preprocess(img)[0]
    ref = oracle.midas_transform(((img[0].permute(1, 2, 0) + 1.0) * 0.5).numpy())
    assert ours.shape == ref.shape and np.array_equal(ours.numpy(), ref)


def test_midas_input_sizes_follow_minimal_resize():
    assert depth.midas_input_size(512, 512) == (384, 384)
    assert depth.midas_input_size(512, 768) == (384, 576)
    assert depth.midas_input_size(256, 320) == (320, 384)


@pytest.mark.parametrize("size", [(64, 96), (96, 64), (64, 64)])
def test_depth_conditioning_matches_midas_and_demo(depth_ckpt, depth_model, size):
    """AddMiDaS -> DPT-Hybrid -> bicubic to latent size -> per-sample min-max, for non-square input too."""
    g = torch.Generator().manual_seed(4)
    img = torch.rand(2, 3, *size, generator=g) * 2 - 1
    ours = depth_model.depth_conditioning(img)
    assert ours.shape == (2, 1, size[0] // 8, size[1] // 8)
    refs = []
    for i in range(2):
        pre = torch.from_numpy(depth.midas_preprocess(img[i : i + 1]).numpy())
        pred = oracle.midas_dpt_hybrid(depth_ckpt.state_dict, pre).unsqueeze(1)
        cc = F.interpolate(pred, size=ours.shape[2:], mode="bicubic", align_corners=False)
        lo, hi = cc.amin(dim=[1, 2, 3], keepdim=True), cc.amax(dim=[1, 2, 3], keepdim=True)
        refs.append(2.0 * (cc - lo) / (hi - lo) - 1.0)
    ref = torch.cat(refs)
    assert float(ref.std()) > 0.05  # a structured map, not a constant
    assert rel_err(ours, ref) < 1e-5
    assert float(ours.amin()) == -1.0 and float(ours.amax()) == 1.0


def test_depth_conditioning_on_base_model_is_a_clear_error(sd1_model):
    with pytest.raises(Exception, match="without depth"):
        sd1_model.depth_conditioning(torch.zeros(1, 3, 64, 64))


def test_schedule_matches_ldm_buffers(depth_model):
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    assert torch.equal(depth_model.betas, torch.tensor(betas, dtype=torch.float32))
    assert torch.equal(depth_model.alphas_cumprod, torch.tensor(np.cumprod(1 - betas), dtype=torch.float32))
    assert depth_model.parameterization == "eps" and depth_model.scale_factor == 0.18215


def test_v_parameterization_from_yaml(tmp_path):
    ck = write_checkpoint(tmp_path, "vmodel", "sd2", parameterization="v")
    assert load_model(ck.path).parameterization == "v"


def test_sd1_pads_with_end_token_and_sd2_with_zero(depth_model, sd1_model):
    sd2_tokens = depth_model.tokenizer(["hi!"])[0].tolist()
    sd1_tokens = sd1_model.tokenizer(["hi!"])[0].tolist()
    assert sd2_tokens[-1] == 0 and sd1_tokens[-1] == 49407
    assert sd2_tokens[:4] == sd1_tokens[:4] == [49406, 1883, 256, 49407]
