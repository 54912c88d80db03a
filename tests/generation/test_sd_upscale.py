"""SD upscale: A1111's grid, blended seams, sizes through ``process``, and the depth-consistent tiles (each
tile conditioned on its crop of one globally normalised map, not re-normalised)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from modules.core import infotext
from modules.core.errors import ValidationError
from modules.core.progress import JobControl
from modules.core.request import GenerationRequest
from modules.core.settings import Settings
from modules.generation import sd_upscale
from modules.generation.processing import ProcessingContext, process
from modules.models.checkpoints import CheckpointRegistry, HashCache
from modules.models.manager import ModelManager
from modules.models.upscaling import UpscalerRegistry
from tests.helpers.imaging import png


def test_split_grid_is_a1111s_layout():
    grid = sd_upscale.split_grid(Image.new("RGB", (1024, 768)), 512, 512, 64)
    assert grid.boxes() == [(0, 0, 512, 512), (256, 0, 512, 512), (512, 0, 512, 512),
                            (0, 256, 512, 512), (256, 256, 512, 512), (512, 256, 512, 512)]  # fmt: skip
    one = sd_upscale.split_grid(Image.new("RGB", (512, 512)), 512, 512, 64)
    assert one.boxes() == [(0, 0, 512, 512)]


def test_combine_grid_blends_seams_linearly_and_keeps_the_rest():
    grid = sd_upscale.split_grid(Image.new("RGB", (96, 64)), 64, 64, 16)
    assert grid.boxes() == [(0, 0, 64, 64), (32, 0, 64, 64)]
    grid.tiles[0][2][0][2] = Image.new("RGB", (64, 64), (0, 0, 0))
    grid.tiles[0][2][1][2] = Image.new("RGB", (64, 64), (240, 240, 240))
    out = np.asarray(sd_upscale.combine_grid(grid))[..., 0].astype(int)
    assert (out[:, :32] == 0).all() and (out[:, 48:] == 240).all()
    ramp = out[0, 32:48]
    assert np.all(np.diff(ramp) > 0) and ramp[0] == 0  # from the left tile towards the right one
    assert np.allclose(ramp, np.arange(16) * 255 // 16 * 240 / 255, atol=1.5)


def test_arguments_named_positional_and_bad():
    names = ["None", "Lanczos", "Nearest"]
    assert sd_upscale.parse_args(sd_upscale.named_args(["", 8, "lanczos", 2.0]), names) == (8, "Lanczos", 2.0)
    assert sd_upscale.parse_args(sd_upscale.named_args([None, 16, 2, 1.5]), names) == (16, "Nearest", 1.5)
    with pytest.raises(ValidationError, match="upscaler"):
        sd_upscale.parse_args({"upscaler": "Nope"}, names)
    with pytest.raises(ValidationError, match="scale_factor"):
        sd_upscale.parse_args({"scale_factor": 20}, names)


@pytest.fixture(scope="module")
def env(tmp_path_factory, depth_ckpt, sd2_ckpt):
    root = tmp_path_factory.mktemp("sdup")
    models = root / "models"
    models.mkdir()
    for ck in (depth_ckpt, sd2_ckpt):
        shutil.copy(ck.path, models / ck.path.name)
        shutil.copy(ck.config_path, models / ck.config_path.name)
    reg = CheckpointRegistry([models], HashCache(None))
    reg.refresh()
    return root, ModelManager(reg, device=torch.device("cpu"), dtype=torch.float32, keep_in_memory=2)


def ctx_for(env, name: str) -> ProcessingContext:
    root, mm = env
    mm.load(name)
    return ProcessingContext(mm, Settings(), root, control=JobControl(), upscalers=UpscalerRegistry(root))


def picture(w: int = 48, h: int = 40) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 127 // (w + h)], -1).astype(np.uint8)


def req(**kw) -> GenerationRequest:
    base = dict(prompt="a house", init_images=[png(picture())], width=64, height=64, steps=2, seed=3,
                denoising_strength=0.5, save_images=False, script_name="SD upscale",
                script_args={"overlap": 16, "upscaler": "Lanczos", "scale_factor": 2.0})  # fmt: skip
    return GenerationRequest(**{**base, **kw})


def test_sizes_seeds_and_infotext(env):
    from modules.app.extensions import BUILTIN_DIR, ExtensionRegistry

    ctx = ctx_for(env, "tiny-sd2")
    ctx.hooks = ExtensionRegistry.load([BUILTIN_DIR], [])
    r = process(req(), ctx)
    assert r.images[0].shape == (80, 96, 3)  # 48x40 x2, tiles of 64 with 16 of overlap: 2x2 tiles
    parsed = infotext.parse(r.infotexts[0])
    assert parsed["SD upscale overlap"] == "16" and parsed["SD upscale upscaler"] == "Lanczos"
    assert r.seeds == [3] and not r.depth_maps
    with pytest.raises(ValidationError, match="smaller than a tile"):
        process(req(script_args={"upscaler": "None", "overlap": 16}), ctx)


def test_depth_tiles_are_crops_of_one_globally_normalised_map(env):
    """Every tile's depth conditioning equals its crop of the whole picture's map, averaged to latent size:
    not min-max normalised per tile (its range is the picture's, not [-1, 1])."""
    from modules.app.extensions import BUILTIN_DIR, ExtensionRegistry

    ctx = ctx_for(env, "tiny-depth")
    ctx.hooks = ExtensionRegistry.load([BUILTIN_DIR], [])
    model = ctx.models.current.model
    seen: list[torch.Tensor] = []
    original = model.apply_model

    def spy(x, t, cond):
        if cond["c_concat"]:
            seen.append(cond["c_concat"][0][:1].clone())
        return original(x, t, cond)

    model.apply_model = spy
    try:
        ramp = np.tile(np.linspace(0, 255, 48).astype(np.uint8), (40, 1))
        r = process(req(depth_map=png(np.stack([ramp] * 3, -1))), ctx)
    finally:
        del model.apply_model
    whole = r.depth_maps[0]
    assert whole.shape == (80, 96) and whole.min() == 0.0 and whole.max() == 1.0
    grid = sd_upscale.split_grid(Image.new("RGB", (96, 80)), 64, 64, 16)
    tiles: list[torch.Tensor] = []
    for c in seen:  # the same conditioning at every step of a tile; the next tile's differs
        if not tiles or not torch.equal(c, tiles[-1]):
            tiles.append(c)
    assert len(tiles) == len(grid.boxes()) == 4
    for cond, (x, y, w, h) in zip(tiles, grid.boxes(), strict=True):
        crop = torch.from_numpy(whole[y : y + h, x : x + w].copy())[None, None] * 2 - 1
        expected = F.interpolate(crop, size=(h // 8, w // 8), mode="area")
        assert torch.allclose(cond, expected, atol=1e-6)
    left, right = tiles[0], tiles[1]
    assert left.max() < 0.9 and right.min() > -0.9  # neither tile stretched to the full range
    assert torch.allclose(left[..., 4:], right[..., :4], atol=0.05)  # the overlap agrees between neighbours
