"""Speed options: each applies and undoes cleanly; exact ones stay within float tolerance, lossy ones are opt-in."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modules.app.service import Service
from modules.core import memory
from modules.core.hooks import Hooks
from modules.core.progress import JobControl
from modules.core.request import GenerationRequest
from modules.core.settings import Settings
from modules.generation import sampling
from modules.generation.processing import ProcessingContext, process
from modules.models import optimizations
from modules.models.checkpoints import load_model
from tests.generation.test_engine import H, W, picture, png


@pytest.fixture()
def model(depth_ckpt):
    return load_model(depth_ckpt.path)


def unet_out(model):
    g = torch.Generator().manual_seed(0)
    x, d, c = (
        torch.randn(2, 4, 8, 12, generator=g),
        torch.randn(2, 1, 8, 12, generator=g),
        torch.randn(2, 77, 128, generator=g),
    )
    return model.apply_model(x, torch.tensor([10, 700]), {"c_concat": [d], "c_crossattn": [c]})


def test_channels_last_is_within_float_tolerance_and_reversible(model):
    ref = unet_out(model)
    applied = optimizations.apply(model, Settings().override({"opt_channels_last": True}))
    assert applied["channels_last"] and model.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(unet_out(model), ref, rtol=1e-4, atol=1e-5)
    optimizations.apply(model, Settings().override({"opt_channels_last": False}))
    assert torch.equal(unet_out(model), ref)


def packed_convs(model) -> list:
    return [m for part in (model.unet, model.vae) for m in part.modules() if "forward" in m.__dict__]


def outputs(model) -> tuple[torch.Tensor, torch.Tensor]:
    """The UNet's output and the VAE decoder's image for fixed inputs."""
    z = torch.randn(1, 4, 8, 12, generator=torch.Generator().manual_seed(1))
    return unet_out(model), model.decode_first_stage(z)


def assert_within_float_tolerance(model, ref: tuple[torch.Tensor, torch.Tensor]) -> None:
    for got, want in zip(outputs(model), ref, strict=True):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)


def test_prepacked_convolutions_are_within_float_tolerance_and_reversible(model):
    ref = outputs(model)
    applied = optimizations.apply(model, Settings().override({"opt_prepack_conv": True, "opt_winograd_conv": False}))
    assert applied["prepack_conv"] and not applied["winograd_conv"]
    convs = [m for part in (model.unet, model.vae) for m in part.modules() if isinstance(m, torch.nn.Conv2d)]
    assert packed_convs(model) and all(isinstance(m.forward, optimizations.PackedConv) for m in convs)
    assert_within_float_tolerance(model, ref)
    assert any(m.forward.packed for m in convs)  # the packed path ran (not the module's own)
    optimizations.apply(model, Settings().override({"opt_prepack_conv": False, "opt_winograd_conv": False}))
    assert not packed_convs(model)
    assert torch.equal(unet_out(model), ref[0])


def test_prepacked_convolution_follows_weight_edits_shapes_and_falls_back():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 16, 3, padding=1)
    packed = optimizations.PackedConv(conv)
    x2, x1, x3 = torch.randn(2, 8, 10, 12), torch.randn(1, 8, 10, 12), torch.randn(1, 8, 6, 6)
    with torch.no_grad():
        assert torch.allclose(packed(x2), conv._conv_forward(x2, conv.weight, conv.bias), atol=1e-5)
        conv.weight.mul_(1.5)  # an extension editing weights in place: the next call repacks
        assert torch.allclose(packed(x2), conv._conv_forward(x2, conv.weight, conv.bias), atol=1e-5)
        assert len(packed.packed) == 1
        packed(x1)  # a batch of 1 between batches of 2 (negative guidance minimum sigma) keeps both
        packed(x2)
        assert [k[0] for k in packed.packed] == [tuple(x1.shape), tuple(x2.shape)]
        packed(x3)  # a third shape drops the least recently used
        assert [k[0] for k in packed.packed] == [tuple(x2.shape), tuple(x3.shape)]
        with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast takes the module's own path
            assert packed(x2).dtype == torch.bfloat16
    x = x2.clone().requires_grad_()
    with torch.enable_grad():  # autograd too (other tests may have turned grad mode off process-wide)
        packed(x).sum().backward()
    assert x.grad is not None and conv.weight.grad is not None


def test_prepack_is_not_combined_with_torch_compile():
    wanted = optimizations.wanted(Settings().override({"opt_prepack_conv": True, "opt_torch_compile": True}))
    assert wanted == {"channels_last": False, "prepack_conv": False, "winograd_conv": False, "compile": True,
                      "tome": 0.0, "upcast_attn": False}  # fmt: skip


def test_winograd_convolutions_are_within_float_tolerance_and_reversible(model, monkeypatch):
    monkeypatch.setattr(optimizations.WinogradConv, "MIN_TILES", 1)  # the tiny model's inputs are small
    monkeypatch.setattr(optimizations.WinogradConv, "MIN_CHANNELS", 1)
    monkeypatch.setattr(optimizations.memory, "spare_bytes", lambda: 1 << 50)  # plenty of RAM
    ref = outputs(model)
    applied = optimizations.apply(model, Settings().override({"opt_winograd_conv": True, "opt_prepack_conv": True}))
    assert applied["winograd_conv"] and applied["prepack_conv"]
    convs = [m for part in (model.unet, model.vae) for m in part.modules() if isinstance(m, torch.nn.Conv2d)]
    wino = [m for m in convs if isinstance(m.forward, optimizations.WinogradConv)]
    three = [m for m in convs if m.kernel_size == (3, 3) and m.stride == (1, 1)]
    assert wino and len(wino) == len(three)  # every 3x3 stride-1 conv; the others pre-packed
    assert all(isinstance(m.forward, optimizations.PackedConv) for m in convs if m not in wino)
    assert all(isinstance(m.forward.fallback, optimizations.PackedConv) for m in wino)
    assert_within_float_tolerance(model, ref)
    assert_within_float_tolerance(model, ref)  # the second call keeps the transforms
    unet = set(model.unet.modules())
    assert all(m.forward.u is not None for m in wino if m in unet)  # Winograd ran, its transforms kept
    assert all(m.forward.u is None for m in wino if m not in unet)  # the VAE's are made per call
    optimizations.apply(model, Settings().override({"opt_winograd_conv": False}))
    assert not packed_convs(model)
    assert torch.equal(unet_out(model), ref[0])


def winograd_forwards(module) -> list:
    return [m.forward for m in module.modules() if isinstance(m.__dict__.get("forward"), optimizations.WinogradConv)]


def test_winograd_is_on_by_default_and_short_ram_only_stops_keeping_transforms(model, monkeypatch):
    monkeypatch.setattr(optimizations.WinogradConv, "MIN_TILES", 1)
    monkeypatch.setattr(optimizations.WinogradConv, "MIN_CHANNELS", 1)
    ref = outputs(model)
    monkeypatch.setattr(optimizations.memory, "spare_bytes", lambda: 1 << 50)
    assert optimizations.apply(model, Settings())["winograd_conv"]  # the default
    roomy = outputs(model)
    assert_within_float_tolerance(model, ref)  # a second call: the transforms are kept
    wino = winograd_forwards(model.unet)
    assert wino and all(w.u is not None for w in wino)
    optimizations.apply(model, Settings().override({"opt_winograd_conv": False}))
    monkeypatch.setattr(optimizations.memory, "spare_bytes", lambda: 1 << 30)  # under the 2 GiB reserve
    optimizations.apply(model, Settings())
    outputs(model)
    short = outputs(model)
    wino = winograd_forwards(model.unet)
    assert wino and all(w.u is None for w in wino)  # nothing kept
    assert all(torch.equal(a, b) for a, b in zip(short, roomy, strict=True))  # the same transforms, made per call


def test_transformed_weights_are_kept_while_ram_to_spare_stays_above_the_reserve(caplog):
    spare = [10_000]
    keep = optimizations.KeepWhileRoom(spare=lambda: spare[0], reserve=2_000)
    with caplog.at_level("INFO", logger="modules.models.optimizations"):
        assert keep(8_000) and not keep(8_001)
        spare[0] = None  # cannot be told: not kept
        assert not keep(1) and not keep(1)
    assert keep.refused == 3 and caplog.text.count("RAM is short") == 1  # logged once, at the first refusal
    default = optimizations.KeepWhileRoom()
    total = memory.total_bytes()
    assert default.reserve == max(2 << 30, (total or 0) // 4)


def test_ram_to_spare_leaves_out_the_memory_mapped_weights():
    spare, total = memory.spare_bytes(), memory.total_bytes()
    assert spare is not None and total is not None and 0 < total
    available = memory._proc_kib("/proc/meminfo", "MemAvailable")
    if available is not None:  # Linux: MemAvailable less this process's file-backed pages (the weights)
        assert spare < available <= total


def test_winograd_convolution_follows_weight_edits_and_falls_back():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1)
    assert optimizations.WinogradConv.supports(conv)
    assert not optimizations.WinogradConv.supports(torch.nn.Conv2d(64, 64, 3, padding=1, stride=2))
    assert not optimizations.WinogradConv.supports(torch.nn.Conv2d(64, 64, 1))
    assert not optimizations.WinogradConv.supports(torch.nn.Conv2d(4, 64, 3, padding=1))  # too thin
    fast = optimizations.WinogradConv(conv)
    small, big = torch.randn(2, 64, 8, 8), torch.randn(2, 64, 16, 17)
    with torch.no_grad():
        exact = conv._conv_forward(small, conv.weight, conv.bias)
        assert torch.equal(fast(small), exact) and fast.u is None  # under 16x16: the module's own path
        assert torch.allclose(fast(big), conv._conv_forward(big, conv.weight, conv.bias), atol=1e-5)
        assert fast.u is None  # kept from the second call on, when the model's weights are all resident
        fast(big)
        u = fast.u
        assert u is not None and fast(big) is not None and fast.u is u  # then made once
        conv.weight.mul_(1.5)  # an extension editing weights in place: the next call re-transforms
        assert torch.allclose(fast(big), conv._conv_forward(big, conv.weight, conv.bias), atol=1e-5)
        assert fast.u is None  # the old one dropped, the new one kept from the next call on
        fast(big)
        assert fast.u is not None and fast.u is not u
        with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast takes the module's own path
            assert fast(big).dtype == torch.bfloat16
    x = big.clone().requires_grad_()
    with torch.enable_grad():
        fast(x).sum().backward()
    assert x.grad is not None and conv.weight.grad is not None
    asked = []
    per_call = optimizations.WinogradConv(conv, keep=lambda nbytes: asked.append(nbytes) or False)
    with torch.no_grad():
        assert torch.equal(per_call(big), fast(big)) and per_call.u is None  # same result, nothing kept
        per_call(big)
        per_call(big)
    assert asked == [16 * 64 * 64 * 4] * 2  # asked with the transformed weight's size, from the 2nd call on


def test_token_merging_changes_output_and_is_removable(model):
    ref = unet_out(model)
    optimizations.apply(model, Settings().override({"token_merging_ratio": 0.5, "opt_channels_last": False}))
    assert not torch.allclose(unet_out(model), ref, atol=1e-3)
    optimizations.apply(model, Settings().override({"token_merging_ratio": 0.0, "opt_channels_last": False}))
    assert torch.equal(unet_out(model), ref)


def test_service_applies_options_on_load_and_on_change(tmp_path, manager, depth_ckpt):
    service = Service(
        settings=Settings(), settings_path=None, registry=manager.registry, models=manager, data_dir=tmp_path
    )
    loaded = service.select_checkpoint(depth_ckpt.path.name)
    assert loaded.model.optimizations["channels_last"] is False  # the default
    assert loaded.model.optimizations["winograd_conv"] is True  # the default (CPU float32)
    service.update_settings({"opt_channels_last": True})
    assert loaded.model.optimizations["channels_last"] is True
    assert loaded.model.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    service.worker.stop()


def test_negative_guidance_minimum_sigma_skips_uncond_passes(manager, monkeypatch, tmp_path):
    batches = []
    real = sampling._guided
    monkeypatch.setattr(sampling, "_guided", lambda m, x, t, g, skip: batches.append(skip) or real(m, x, t, g, skip))
    req = dict(prompt="x", init_images=[png(picture())], width=W, height=H, steps=8, seed=1, save_images=False,
               denoising_strength=1.0)  # fmt: skip
    ctx = ProcessingContext(manager, Settings(), tmp_path, hooks=Hooks(), control=JobControl())
    exact = process(GenerationRequest(**req), ctx)
    assert batches.count(True) == 0
    ctx = ProcessingContext(
        manager, Settings().override({"s_min_uncond": 15.0}), tmp_path, hooks=Hooks(), control=JobControl()
    )
    fast = process(GenerationRequest(**req), ctx)
    assert batches.count(True) == 4  # every odd step of 8 is below sigma 15 (SD2 tops out at 14.6)
    assert not np.array_equal(exact.images[0], fast.images[0])


def test_the_removed_bf16_autocast_setting_in_an_old_config_is_ignored(tmp_path, caplog):
    """cpu_bf16_autocast gave way to the precision plan (bfloat16 UNet weights): an old config.json still loads."""
    path = tmp_path / "config.json"
    path.write_text('{"cpu_bf16_autocast": true, "s_min_uncond": 2.0}')
    with caplog.at_level("WARNING"):
        settings = Settings.load(path)
    assert settings.s_min_uncond == 2.0 and not hasattr(settings, "cpu_bf16_autocast")
    assert "cpu_bf16_autocast" in caplog.text
