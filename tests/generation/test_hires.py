"""Hires. fix: A1111's sizes and rounding, both passes through ``process``, latent and pixel upscalers,
the depth model with a map at the new size, progress over both passes, the infotext round trip."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from modules.core import infotext
from modules.core.errors import ValidationError
from modules.core.progress import JobControl
from modules.core.request import GenerationRequest, hires_size
from modules.core.settings import Settings
from modules.generation import hires
from modules.generation.processing import ProcessingContext, process
from modules.models.checkpoints import CheckpointRegistry, HashCache
from modules.models.manager import ModelManager
from modules.models.upscaling import UpscalerRegistry
from tests.helpers.imaging import png


@pytest.mark.parametrize(
    ("size", "scale", "rx", "ry", "up", "final"),
    [
        ((512, 512), 2.0, 0, 0, (1024, 1024), (1024, 1024)),
        ((512, 512), 1.3, 0, 0, (665, 665), (664, 664)),  # int(665.6), then whole latent pixels
        ((512, 768), 1.5, 0, 0, (768, 1152), (768, 1152)),
        ((512, 512), 2.0, 1000, 0, (1000, 1000), (1000, 1000)),
        ((512, 768), 2.0, 0, 1000, (666, 1000), (664, 1000)),  # 1000 * 512 // 768
        ((512, 512), 2.0, 1024, 768, (1024, 1024), (1024, 768)),  # cover, then crop 32 latent rows
        ((768, 512), 2.0, 1024, 1024, (1536, 1024), (1024, 1024)),
    ],
)
def test_hires_size_is_a1111s(size, scale, rx, ry, up, final):
    s = hires_size(*size, scale, rx, ry)
    assert s.upscale == up and s.final == final


def test_hires_fields_are_validated():
    base = dict(width=512, height=512, enable_hr=True)
    with pytest.raises(ValidationError, match="hr_scale"):
        GenerationRequest(**base, hr_scale=0.5).validate()
    with pytest.raises(ValidationError, match="hr_scale"):  # 4096x4096 is above the 2048x2048 output limit
        GenerationRequest(**base, hr_scale=8.0).validate()
    with pytest.raises(ValidationError, match="hr_second_pass_steps"):
        GenerationRequest(**base, hr_second_pass_steps=-1).validate()
    GenerationRequest(**base, hr_scale=8.0).validate(max_pixels=4096 * 4096)
    GenerationRequest(width=512, height=512, hr_scale=100).validate()  # ignored without enable_hr


@pytest.fixture(scope="module")
def env(tmp_path_factory, depth_ckpt, sd2_ckpt):
    root = tmp_path_factory.mktemp("hires")
    models = root / "models"
    models.mkdir()
    for ck in (depth_ckpt, sd2_ckpt):
        shutil.copy(ck.path, models / ck.path.name)
        shutil.copy(ck.config_path, models / ck.config_path.name)
    reg = CheckpointRegistry([models], HashCache(None))
    reg.refresh()
    mm = ModelManager(reg, device=torch.device("cpu"), dtype=torch.float32, keep_in_memory=2)
    return root, mm


def ctx_for(env, name: str, control: JobControl | None = None) -> ProcessingContext:
    root, mm = env
    mm.load(name)
    return ProcessingContext(mm, Settings(), root, control=control or JobControl(), upscalers=UpscalerRegistry(root))


def req(**kw) -> GenerationRequest:
    base = dict(prompt="a house", width=64, height=64, steps=3, seed=5, save_images=False, enable_hr=True,
                hr_scale=1.5, denoising_strength=0.6)  # fmt: skip
    return GenerationRequest(**{**base, **kw})


@pytest.mark.parametrize("upscaler", ["Latent", "Latent (bicubic)", "Lanczos", "Nearest"])
def test_second_pass_size_and_infotext_round_trip(env, upscaler):
    r = process(req(hr_upscaler=upscaler, hr_second_pass_steps=2), ctx_for(env, "tiny-sd2"))
    assert r.images[0].shape == (96, 96, 3)
    parsed = infotext.parse(r.infotexts[0])
    assert parsed["Size"] == "64x64" and parsed["Hires upscale"] == "1.5" and parsed["Hires steps"] == "2"
    assert parsed["Hires upscaler"] == upscaler and parsed["Denoising strength"] == "0.6"
    fields = infotext.to_request_fields(parsed)
    assert fields["enable_hr"] is True and fields["hr_scale"] == 1.5 and fields["hr_upscaler"] == upscaler
    assert fields["hr_second_pass_steps"] == 2 and fields["denoising_strength"] == 0.6
    assert (fields["width"], fields["height"]) == (64, 64)


def test_resize_to_with_truncation_and_its_infotext(env):
    r = process(req(hr_resize_x=128, hr_resize_y=96, hr_upscaler="Lanczos"), ctx_for(env, "tiny-sd2"))
    assert r.images[0].shape == (96, 128, 3)
    fields = infotext.to_request_fields(infotext.parse(r.infotexts[0]))
    assert (fields["hr_resize_x"], fields["hr_resize_y"]) == (128, 96) and "hr_scale" not in fields


def test_second_pass_changes_the_upscaled_first_pass_and_strength_zero_keeps_it(env):
    """Strength 0 runs no second-pass step: the result is the first pass upscaled (Latent), decoded."""
    ctx = ctx_for(env, "tiny-sd2")
    kept = process(req(denoising_strength=0.0), ctx).images[0]
    changed = process(req(denoising_strength=0.7), ctx).images[0]
    assert kept.shape == changed.shape == (96, 96, 3)
    assert np.abs(kept.astype(int) - changed.astype(int)).mean() > 0.5
    again = process(req(denoising_strength=0.7), ctx).images[0]
    assert np.array_equal(changed, again)  # seeded: the second pass's noise follows the seed too


def test_hires_prompt_sampler_and_cfg_are_used_and_written(env):
    ctx = ctx_for(env, "tiny-sd2")
    plain = process(req(), ctx)
    other = process(req(hr_prompt="a boat", hr_sampler_name="DDIM", hr_cfg=3.0), ctx)
    assert not np.array_equal(plain.images[0], other.images[0])
    parsed = infotext.parse(other.infotexts[0])
    assert parsed["Hires prompt"] == "a boat" and parsed["Hires sampler"] == "DDIM"
    assert parsed["Hires CFG Scale"] == "3"


def test_progress_counts_both_passes(env):
    seen: list[tuple[int, int]] = []

    class Recording(JobControl):
        def step(self, step, total, make_preview=None):
            seen.append((step, total))
            return super().step(step, total, make_preview)

    process(req(steps=3, hr_second_pass_steps=2), ctx_for(env, "tiny-sd2", Recording()))
    assert seen == [(0, 5), (1, 5), (2, 5), (3, 5), (4, 5)]


def test_depth_model_gets_the_map_at_the_new_size(env):
    ramp = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (64, 1))
    r = process(
        req(depth_map=png(np.stack([ramp] * 3, -1)), hr_resize_x=128, hr_resize_y=96), ctx_for(env, "tiny-depth")
    )
    assert r.images[0].shape == (96, 128, 3)
    dmap = r.depth_maps[0]
    assert dmap.shape == (96, 128)
    assert dmap[:, 0].mean() < 0.05 and dmap[:, -1].mean() > 0.95  # left far, right near, across the new width
    assert np.allclose(dmap[0], dmap[-1], atol=1e-3)


def test_pass_progress_forwards_everything_else():
    control = JobControl()
    proxy = hires.PassProgress(control, 3, 5)
    proxy.step(0, 2)
    assert control.state.sampling_step == 4 and control.state.sampling_steps == 5
    assert proxy.interrupted is False


def test_xyz_hires_axes_set_the_second_pass(env):
    import importlib

    from modules.app.extensions import BUILTIN_DIR, ExtensionRegistry

    ExtensionRegistry.load([BUILTIN_DIR])  # the built-in extension's axes, imported as the loader imports them
    axes = importlib.import_module("sd_extension_builtin_xyz_plot.axes")
    steps_axis, steps = axes.parse_axis("Hires steps", "1-2", "x")
    up_axis, ups = axes.parse_axis("Hires upscaler", "Latent,Lanczos", "y")
    assert steps == [1, 2] and ups == ["Latent", "Lanczos"]
    cell = up_axis.apply(steps_axis.apply(req(), 2), "Lanczos")
    assert (cell.hr_second_pass_steps, cell.hr_upscaler) == (2, "Lanczos")
    r = process(cell, ctx_for(env, "tiny-sd2"))
    parsed = infotext.parse(r.infotexts[0])
    assert parsed["Hires steps"] == "2" and parsed["Hires upscaler"] == "Lanczos"


def test_the_img2img_upscaler_enlarges_init_images_and_is_an_xyz_axis(env):
    """Settings -> Upscaler for img2img (A1111's upscaler_for_img2img): an init image made larger goes through it."""
    import importlib
    import io

    from PIL import Image

    from modules.app.extensions import BUILTIN_DIR, ExtensionRegistry
    from modules.core.errors import UserError
    from modules.generation.inputs import prepare_inputs
    from modules.generation.processing import img2img_upscaler

    rng = np.random.default_rng(3)
    small = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    request = GenerationRequest(prompt="a house", init_images=[png(small)], width=64, height=64, steps=3, seed=5,
                                save_images=False)  # fmt: skip
    ctx = ctx_for(env, "tiny-depth")
    nearest = Settings().override({"upscaler_for_img2img": "Nearest"})
    work = prepare_inputs(request, nearest, depth_model=True, enlarge=img2img_upscaler(ctx, nearest)).prepared[0].work
    expected = Image.open(io.BytesIO(png(small))).convert("RGB").resize((64, 64), Image.Resampling.NEAREST)
    assert np.array_equal(np.asarray(work), np.asarray(expected))
    assert img2img_upscaler(ctx, Settings()) is None  # the default: Lanczos alone, as before
    with pytest.raises(UserError):
        img2img_upscaler(ctx, Settings().override({"upscaler_for_img2img": "no-such-model"}))
    ExtensionRegistry.load([BUILTIN_DIR])
    axes = importlib.import_module("sd_extension_builtin_xyz_plot.axes")
    axis, values = axes.parse_axis("Upscaler", "None,Nearest", "x")
    plain, enlarged = (process(axis.apply(request, v), ctx).images[0] for v in values)
    assert not np.array_equal(plain, enlarged)  # the axis reaches the init image's resize
