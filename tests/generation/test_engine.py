"""The generation engine through ``process``: samplers, seeds, strength, depth, inpainting, caches, outputs."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from modules.core import depthmaps, images, infotext, samplers
from modules.core.errors import UserError, ValidationError
from modules.core.hooks import Hooks
from modules.core.progress import JobControl
from modules.core.request import GenerationRequest
from modules.core.settings import Settings
from modules.generation import conditioning, pixels
from modules.generation.processing import ProcessingContext, process
from modules.models import midas as depth
from modules.models.checkpoints import CheckpointRegistry, HashCache
from modules.models.manager import ModelManager
from tests.helpers.imaging import png
from tests.helpers.ldm_layout import write_checkpoint

W, H = 96, 64


def picture(seed: int = 0, w: int = W, h: int = H) -> np.ndarray:
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], -1)
    return np.clip(base + rng.randint(-20, 20, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def env(tmp_path_factory, depth_ckpt, sd2_ckpt):
    root = tmp_path_factory.mktemp("engine")
    models = root / "models"
    models.mkdir()
    for ck in (depth_ckpt, sd2_ckpt):
        shutil.copy(ck.path, models / ck.path.name)
        shutil.copy(ck.config_path, models / ck.config_path.name)
    write_checkpoint(models, "tiny-v", "sd2", parameterization="v", seed=7)
    reg = CheckpointRegistry([models], HashCache(None))
    reg.refresh()
    mm = ModelManager(reg, device=torch.device("cpu"), dtype=torch.float32, keep_in_memory=3)
    mm.load("tiny-depth")
    return root, mm


def make_ctx(env, hooks=None, **settings) -> ProcessingContext:
    root, mm = env
    mm.load("tiny-depth")
    return ProcessingContext(mm, Settings().override(settings), root, hooks=hooks or Hooks(), control=JobControl())


def req(**kw) -> GenerationRequest:
    base = dict(prompt="a house", init_images=[png(picture())], width=W, height=H, steps=4, seed=11, save_images=False)
    base.update(kw)
    return GenerationRequest(**base)


@pytest.mark.parametrize("name", samplers.sampler_names())
def test_every_sampler_runs_and_is_deterministic(env, name):
    ctx = make_ctx(env)
    a = process(req(sampler_name=name), ctx)
    b = process(req(sampler_name=name), ctx)
    assert a.images[0].shape == (H, W, 3)
    assert np.array_equal(a.images[0], b.images[0])
    assert f"Sampler: {name}" in a.infotexts[0]


@pytest.mark.parametrize("schedule", ["Karras", "Exponential"])
def test_schedule_types(env, schedule):
    r = process(req(sampler_name="DPM++ 2M", scheduler=schedule), make_ctx(env))
    assert f"Schedule type: {schedule}" in r.infotexts[0]
    other = process(req(sampler_name="Euler a", scheduler=schedule), make_ctx(env))  # any sampler, any schedule
    assert f"Schedule type: {schedule}" in other.infotexts[0] and not other.warnings
    plain = process(req(sampler_name="Euler a"), make_ctx(env))
    assert not np.array_equal(other.images[0], plain.images[0])


def test_unknown_schedule_falls_back_to_automatic_with_a_warning(env):
    ctx = make_ctx(env)
    r = process(req(sampler_name="DPM++ 2M", scheduler="cosine"), ctx)
    auto = process(req(sampler_name="DPM++ 2M", scheduler="Automatic"), ctx)
    assert np.array_equal(r.images[0], auto.images[0])
    assert any("unknown schedule type 'cosine'" in w and "Automatic" in w for w in r.warnings)
    assert "Schedule type: Karras" in r.infotexts[0]  # DPM++ 2M's Automatic is Karras, as A1111 writes it


def test_seeds(env):
    ctx = make_ctx(env)
    a, b, c = (process(req(seed=s), ctx) for s in (1, 1, 2))
    assert np.array_equal(a.images[0], b.images[0]) and not np.array_equal(a.images[0], c.images[0])
    r = process(req(seed=-1, batch_size=2), ctx)
    assert 0 <= r.seeds[0] < 2**32 and r.seeds[1] == r.seeds[0] + 1


def test_batch_images_equal_single_runs(env):
    """Image i of a batch uses seed + i exactly as if it were run alone (per-image generators)."""
    ctx = make_ctx(env)
    batch = process(req(seed=40, batch_size=2, sampler_name="Euler a"), ctx)
    alone = process(req(seed=41, sampler_name="Euler a"), ctx)
    assert np.abs(batch.images[1].astype(int) - alone.images[0].astype(int)).max() <= 1


def test_variation_seed(env):
    ctx = make_ctx(env)
    plain = process(req(seed=3), ctx)
    zero = process(req(seed=3, subseed=9, subseed_strength=0.0), ctx)
    varied = process(req(seed=3, subseed=9, subseed_strength=0.5), ctx)
    assert np.array_equal(plain.images[0], zero.images[0])
    assert not np.array_equal(plain.images[0], varied.images[0])
    assert "Variation seed: 9, Variation seed strength: 0.5" in varied.infotexts[0]


def test_strength_zero_returns_the_vae_roundtrip(env):
    ctx = make_ctx(env)
    r = process(req(denoising_strength=0.0), ctx)
    model = ctx.models.current.model
    x = pixels.to_tensor(Image.fromarray(picture()))
    expected = pixels.to_uint8(model.decode_first_stage(model.encode_first_stage(x).mean * model.scale_factor))[0]
    assert np.abs(r.images[0].astype(int) - expected.astype(int)).max() <= 1


def test_strength_one_ignores_init_latent_but_not_depth(env):
    ctx = make_ctx(env)
    dmap = png((picture(5)[..., 0]).astype(np.uint8), "L")
    other = png((255 - picture(5)[..., 0]).astype(np.uint8), "L")
    a = process(req(init_images=[png(picture(1))], denoising_strength=1.0, depth_map=dmap), ctx)
    b = process(req(init_images=[png(picture(2))], denoising_strength=1.0, depth_map=dmap), ctx)
    c = process(req(init_images=[png(picture(1))], denoising_strength=1.0, depth_map=other), ctx)
    assert np.array_equal(a.images[0], b.images[0])
    assert not np.array_equal(a.images[0], c.images[0])


def test_img2img_step_count_follows_strength(env):
    steps = []

    class Count(Hooks):
        def on_step(self, info):
            steps.append(info.total)

    process(req(steps=20, denoising_strength=0.75, sampler_name="DDIM"), make_ctx(env, hooks=Count()))
    assert steps[0] == 15 and len(steps) == 15
    steps.clear()  # k samplers run t_enc + 1 = int(0.75 * 20) + 1 steps from sigmas[20 - 15 - 1], as A1111
    process(req(steps=20, denoising_strength=0.75), make_ctx(env, hooks=Count()))
    assert steps[0] == 16 and len(steps) == 16
    steps.clear()
    process(req(steps=20, denoising_strength=0.5), make_ctx(env, hooks=Count(), img2img_fix_steps=True))
    assert len(steps) == 20


def test_user_depth_map_replaces_midas(env, monkeypatch):
    calls = []
    monkeypatch.setattr(depth, "midas_depth", lambda *a, **k: calls.append(1) / 0)
    r = process(req(depth_map=png(picture(3)[..., 1], "L")), make_ctx(env))
    assert calls == [] and "Depth source: uploaded map" in r.infotexts[0]
    assert r.depth_maps[0].shape == (H, W)


def test_sixteen_bit_depth_precision_and_invert(env):
    ramp = (np.linspace(0, 600, W)[None, :].repeat(H, 0)).astype(np.uint16) + 30000  # only 600 levels of 65535
    ctx = make_ctx(env)
    r16 = process(req(depth_map=png(ramp)), ctx)
    assert r16.depth_maps[0].min() == 0.0 and r16.depth_maps[0].max() == 1.0  # the 600 levels are stretched, not lost
    raw = depth.depth_map_tensor(depthmaps.decode_depth_map(png(ramp)))
    inv = depth.depth_map_tensor(depthmaps.decode_depth_map(png(ramp)), invert=True)
    a = depth.to_latent_conditioning(raw, (8, 12))
    b = depth.to_latent_conditioning(inv, (8, 12))
    assert torch.allclose(a, -b, atol=1e-6)
    flipped = process(req(depth_map=png(ramp), depth_invert=True), ctx)
    assert np.allclose(flipped.depth_maps[0], 1 - r16.depth_maps[0], atol=1e-5)
    assert "Depth invert: True" in flipped.infotexts[0]


def test_depth_model_needs_image_or_depth(env):
    ctx = make_ctx(env)
    with pytest.raises(UserError, match="needs an input image or a depth map"):
        process(req(init_images=[]), ctx)
    r = process(req(init_images=[], depth_map=png(picture(4)[..., 2], "L")), ctx)
    assert r.images[0].shape == (H, W, 3) and "Denoising strength" not in r.infotexts[0]


def test_txt2img_and_v_prediction_base_models(env):
    ctx = make_ctx(env)
    for name in ("tiny-sd2", "tiny-v"):
        r = process(req(init_images=[], override_settings={"sd_model_checkpoint": name}), ctx)
        assert r.images[0].shape == (H, W, 3) and r.model_name == name
        assert not r.depth_maps
    assert ctx.models.current.info.name.startswith("tiny-depth")  # restored afterwards


def test_caches_skip_midas_text_encoder_and_vae_encoder_on_rerun(env, monkeypatch):
    ctx = make_ctx(env)
    model = ctx.models.current.model
    process(req(prompt="cache me", seed=1), ctx)
    fresh = [process(req(prompt="cache me", seed=s, denoising_strength=d), make_ctx(env)).images[0]
             for s, d in ((2, 0.75), (3, 0.5))]  # fmt: skip
    midas, text, vae = [], [], []
    real_midas = depth.midas_depth
    monkeypatch.setattr(depth, "midas_depth", lambda *a, **k: midas.append(1) or real_midas(*a, **k))
    monkeypatch.setattr(model, "encode_tokens", lambda *a, **k: text.append(1) / 0)
    monkeypatch.setattr(model, "encode_first_stage", lambda *a, **k: vae.append(1) / 0)
    again = process(req(prompt="cache me", seed=2), ctx).images[0]  # new seed: nothing recomputed
    lower = process(req(prompt="cache me", seed=3, denoising_strength=0.5), ctx).images[0]  # new strength: likewise
    assert midas == [] and text == [] and vae == []
    assert np.array_equal(again, fresh[0]) and np.array_equal(lower, fresh[1])  # the caches are exact


def test_inpainting_keeps_unmasked_pixels(env):
    mask = np.zeros((H, W), np.uint8)
    mask[16:48, 32:64] = 255
    src = picture(6)
    ctx = make_ctx(env)
    for fill in range(4):
        r = process(
            req(init_images=[png(src)], mask=png(mask), mask_blur_x=4, mask_blur_y=4, inpainting_fill=fill), ctx
        )
        out = r.images[0]
        untouched = masking_reach(mask, 4) == 0
        assert np.array_equal(out[untouched], src[untouched])
        assert np.abs(out[mask > 0].astype(int) - src[mask > 0]).mean() > 5


def masking_reach(mask: np.ndarray, blur: int) -> np.ndarray:
    from modules.generation import masking

    return masking.blur(mask, blur, blur)


def test_inpaint_only_masked_pastes_back_at_full_size(env):
    big = picture(7, 160, 128)
    mask = np.zeros((128, 160), np.uint8)
    mask[40:70, 60:100] = 255
    r = process(req(init_images=[png(big)], mask=png(mask), inpaint_full_res=1, inpaint_full_res_padding=8,
                    mask_blur_x=0, mask_blur_y=0), make_ctx(env))  # fmt: skip
    out = r.images[0]
    assert out.shape == big.shape
    assert np.array_equal(out[mask == 0], big[mask == 0])
    assert "Inpaint area: Only masked, Masked area padding: 8" in r.infotexts[0]


def test_inpaint_not_masked_and_bad_masks(env):
    mask = np.zeros((H, W), np.uint8)
    mask[:, : W // 2] = 255
    src = picture(8)
    r = process(req(init_images=[png(src)], mask=png(mask), inpainting_mask_invert=1, mask_blur_x=0, mask_blur_y=0),
                make_ctx(env))  # fmt: skip
    assert np.array_equal(r.images[0][:, : W // 2], src[:, : W // 2])
    with pytest.raises(ValidationError, match="mask.*64x64.*96x64|mask is 64x64"):
        process(req(mask=png(np.full((64, 64), 255, np.uint8))), make_ctx(env))
    with pytest.raises(ValidationError, match="empty"):
        process(req(mask=png(np.zeros((H, W), np.uint8))), make_ctx(env))


@pytest.mark.parametrize("mode", [0, 1, 2, 3])
def test_resize_modes_give_requested_size(env, mode):
    r = process(req(init_images=[png(picture(9, 50, 70))], resize_mode=mode), make_ctx(env))
    assert r.images[0].shape == (H, W, 3)


def test_interrupt_mid_run_returns_what_is_done(env):
    class Stop(Hooks):
        def __init__(self, control):
            self.control = control

        def on_step(self, info):
            if info.batch_index == 1 and info.step == 1:
                self.control.interrupt()

    ctx = make_ctx(env)
    ctx.hooks = Stop(ctx.control)
    r = process(req(n_iter=3, steps=6, denoising_strength=1.0), ctx)
    assert r.interrupted and 1 <= len(r.images) <= 2


def test_skip_moves_to_next_batch(env):
    class Skip(Hooks):
        def __init__(self, control):
            self.control = control

        def on_step(self, info):
            if info.batch_index == 0 and info.step == 0:
                self.control.skip()

    ctx = make_ctx(env)
    ctx.hooks = Skip(ctx.control)
    r = process(req(n_iter=2), ctx)
    # the skipped image is finished at the step it was skipped at and kept (A1111); the next one runs in full
    assert len(r.images) == 2 and r.seeds == [11, 12]
    full = process(req(n_iter=2), make_ctx(env))
    assert not np.array_equal(r.images[0], full.images[0]) and np.array_equal(r.images[1], full.images[1])


def test_nan_is_an_error_with_advice(env):
    class Poison(Hooks):
        def on_step(self, info):
            return info.latents * float("nan")

    with pytest.raises(UserError, match="NaNs.*--no-half"):
        process(req(), make_ctx(env, hooks=Poison()))


def test_outputs_saved_with_infotext_depth_and_grid(env):
    root, _ = env
    shutil.rmtree(root / "outputs", ignore_errors=True)
    r = process(req(save_images=True, batch_size=2, seed=100), make_ctx(env))
    pngs = [p for p in r.saved_paths if p.endswith(".png")]
    image_path = next(p for p in pngs if p.endswith("-100.png"))
    assert "/outputs/img2img-images/" in image_path and image_path.split("/")[-1].startswith("0000")
    data = open(image_path, "rb").read()
    assert images.read_infotext(data) == r.infotexts[0]
    depth_png = Image.open(image_path.replace(".png", "-depth.png"))
    assert depth_png.mode in ("I;16", "I") and np.asarray(depth_png).max() > 255
    assert any("img2img-grids" in p for p in r.saved_paths) and r.grid.shape == (H, 2 * W, 3)
    assert not list((root / "outputs").rglob("*.tmp"))


def test_unwritable_output_folder_still_returns_images(env):
    root, _ = env
    ctx = make_ctx(env, outdir_img2img_samples="/proc/not-writable/x")
    r = process(req(save_images=True), ctx)
    assert len(r.images) == 1 and r.warnings and "could not save" in r.warnings[0]


def test_infotext_roundtrip(env):
    ctx = make_ctx(env)
    original = req(prompt="a (red:1.2) house, BREAK night", negative_prompt="blurry, \"bad\"", steps=5, cfg_scale=6.5,
                   seed=77, denoising_strength=0.6, sampler_name="DPM++ 2M", scheduler="Karras", subseed=5,
                   subseed_strength=0.25, mask=png(np.full((H, W), 255, np.uint8)), mask_blur_x=3, mask_blur_y=3,
                   inpainting_fill=2, inpaint_full_res=1, inpaint_full_res_padding=16, inpainting_mask_invert=0)  # fmt: skip
    r = process(original, ctx)
    fields = infotext.to_request_fields(infotext.parse(r.infotexts[0]))
    for name in ("prompt", "negative_prompt", "steps", "cfg_scale", "seed", "denoising_strength", "sampler_name",
                 "scheduler", "subseed", "subseed_strength", "width", "height", "mask_blur_x", "inpainting_fill",
                 "inpaint_full_res", "inpaint_full_res_padding"):  # fmt: skip
        assert fields[name] == getattr(original, name), name
    assert fields["override_settings"]["sd_model_checkpoint"] == r.model_hash


@pytest.mark.parametrize(
    "change, field",
    [({"width": 100}, "width"), ({"steps": 0}, "steps"), ({"steps": 10_000}, "steps"),
     ({"denoising_strength": 1.5}, "denoising_strength"), ({"cfg_scale": float("nan")}, "cfg_scale"),
     ({"cfg_scale": -1}, "cfg_scale"), ({"sampler_name": "Nope"}, "sampler_name"),
     ({"init_images": [b"not an image"]}, "init_images[0]"), ({"width": 4096, "height": 4096}, "width"),
     ({"batch_size": 0}, "batch_size"), ({"resize_mode": 9}, "resize_mode")],
)  # fmt: skip
def test_bad_requests_name_the_field(env, change, field):
    with pytest.raises(ValidationError) as e:
        process(req(**change), make_ctx(env))
    assert e.value.field == field


def test_unknown_checkpoint_override(env):
    from modules.core.errors import CheckpointNotFoundError

    with pytest.raises(CheckpointNotFoundError):
        process(req(override_settings={"sd_model_checkpoint": "../../etc/passwd"}), make_ctx(env))


# --- prompts ----------------------------------------------------------------------------------------


def test_plain_prompt_is_exactly_ldm_conditioning(depth_model):
    chunks = conditioning.prompt_chunks(depth_model.tokenizer, "a photo of a cat!")
    ours = conditioning.encode_chunks(depth_model, chunks)
    assert torch.equal(ours, depth_model.get_learned_conditioning(["a photo of a cat!"]))


def test_long_prompts_are_chunked_not_truncated(depth_model):
    long = ", ".join(f"word{i}" for i in range(60))
    chunks = conditioning.prompt_chunks(depth_model.tokenizer, long)
    assert len(chunks) >= 2 and all(len(c.ids) == 77 for c in chunks)
    n_tokens = len(depth_model.tokenizer.encode(long))
    kept = sum(sum(1 for i in c.ids[1:-1] if i not in (0, 49407)) for c in chunks)
    assert kept == n_tokens
    assert conditioning.encode_chunks(depth_model, chunks).shape[1] == 77 * len(chunks)
    assert len(conditioning.prompt_chunks(depth_model.tokenizer, "a BREAK b")) == 2


def test_emphasis_changes_conditioning(depth_model):
    tok = depth_model.tokenizer
    plain = conditioning.encode_chunks(depth_model, conditioning.prompt_chunks(tok, "a red house"))
    strong = conditioning.encode_chunks(depth_model, conditioning.prompt_chunks(tok, "a (red:1.5) house"))
    assert not torch.equal(plain, strong)
    weights = conditioning.prompt_chunks(tok, "a (red:1.5) house")[0].weights
    assert weights[2] == 1.5 and weights[1] == weights[3] == 1.0


def test_uncond_padded_to_cond_length(env):
    ctx = make_ctx(env)
    r = process(req(prompt=" ".join(["tree"] * 100), negative_prompt="x"), ctx)
    assert r.images[0].shape == (H, W, 3)


def test_depth_cache_is_keyed_by_image(env):
    ctx = make_ctx(env)
    processing_cache = ctx.depth_cache
    before = processing_cache.misses
    process(req(init_images=[png(picture(20))]), ctx)
    process(req(init_images=[png(picture(21))]), ctx)
    assert processing_cache.misses == before + 4  # a depth map and an init latent for each image
    process(req(init_images=[png(picture(21))], seed=5), ctx)
    assert processing_cache.misses == before + 4
