"""Upscalers: tiny random ESRGAN / Real-ESRGAN compact / SwinIR / DAT files in their real key layouts,
detected by spandrel through the registry; tiling, passes, latent modes, built-ins, safety, listing."""

from __future__ import annotations

import importlib.util
import os
import pickle
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from modules.core.errors import CheckpointError, UnsafeCheckpointError, UnsupportedModelError
from modules.models.upscaling import (
    LATENT_UPSCALE_MODES,
    UnknownUpscalerError,
    UpscaleInterrupted,
    UpscalerRegistry,
    import_spandrel,
    latent_modes,
    scale_from_name,
    target_size,
    tile_grid,
    upscale_latent,
)

spandrel = import_spandrel()
from spandrel.architectures.Compact import Compact  # noqa: E402
from spandrel.architectures.DAT import DAT  # noqa: E402
from spandrel.architectures.ESRGAN import ESRGAN  # noqa: E402
from spandrel.architectures.SwinIR import SwinIR  # noqa: E402

# Receptive-field radius of the tiny RRDBNet below, in input pixels: 17 3x3 convs at input resolution plus the
# upsampling tail (measured: tiles agree to 1/255 from an overlap of 16-17 on).
ESRGAN_RADIUS = 19


def _state_dict(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    for p in module.parameters():  # livelier than the default init, so outputs are not clamped flat
        p.data.normal_(0, 0.15)
    return {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}


def tiny_esrgan(scale: int = 4) -> dict[str, torch.Tensor]:
    """RRDBNet in ESRGAN's original layout (``model.0.weight``, ``model.1.sub.0.RDB1.conv1.0.weight``, ...)."""
    return _state_dict(ESRGAN(num_filters=8, num_blocks=1, scale=scale), seed=1)


def esrgan_to_new_layout(old: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same weights in BasicSR / Real-ESRGAN's layout (``conv_first``, ``body.0.rdb1.conv1``, ``conv_up1``...)."""
    trunk = max(int(m.group(1)) for k in old if (m := re.match(r"model\.1\.sub\.(\d+)\.", k)))
    tail = sorted({int(k.split(".")[1]) for k in old if int(k.split(".")[1]) > 1})
    *ups, hr, last = tail
    names = {0: "conv_first", hr: "conv_hr", last: "conv_last", **{n: f"conv_up{i + 1}" for i, n in enumerate(ups)}}
    new = {}
    for key, value in old.items():
        if m := re.match(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)$", key):
            new[f"body.{m[1]}.rdb{m[2]}.conv{m[3]}.{m[4]}"] = value
        elif key.startswith(f"model.1.sub.{trunk}."):
            new["conv_body." + key.rsplit(".", 1)[1]] = value
        else:
            layer, kind = key.split(".")[1], key.rsplit(".", 1)[1]
            new[f"{names[int(layer)]}.{kind}"] = value
    return new


def tiny_compact(scale: int = 2) -> dict[str, torch.Tensor]:
    """Real-ESRGAN's SRVGGNetCompact (``body.0.weight``, ``body.1.weight`` (PReLU), ...)."""
    return _state_dict(Compact(num_feat=8, num_conv=2, upscale=scale), seed=2)


def tiny_swinir() -> dict[str, torch.Tensor]:
    # classical SR (conv_before_upsample, upsample.0, conv_last), as 001_classicalSR_*_SwinIR-M_x2.pth
    net = SwinIR(
        img_size=16, embed_dim=12, depths=[2], num_heads=[2], window_size=4, upscale=2, upsampler="pixelshuffle"
    )
    return _state_dict(net, seed=3)


def tiny_dat() -> dict[str, torch.Tensor]:
    return _state_dict(DAT(img_size=16, embed_dim=32, depth=[2], num_heads=[2], upscale=2, expansion_factor=2.0), 4)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """``<data>/models/{ESRGAN,RealESRGAN,SwinIR,DAT}`` with the tiny files as .pth and .safetensors."""
    root = tmp_path_factory.mktemp("upscalers")
    folders = {k: root / "models" / k for k in ("ESRGAN", "RealESRGAN", "SwinIR", "DAT")}
    for folder in folders.values():
        folder.mkdir(parents=True)
    old = tiny_esrgan()
    torch.save(old, folders["ESRGAN"] / "4x_tiny_old.pth")
    save_file(esrgan_to_new_layout(old), str(folders["ESRGAN"] / "4x_tiny_new.safetensors"))
    torch.save({"params_ema": esrgan_to_new_layout(tiny_esrgan(scale=2))}, folders["RealESRGAN"] / "tiny_x2plus.pth")
    torch.save({"params": tiny_compact()}, folders["RealESRGAN"] / "tiny-compact-x2.pth")
    save_file(tiny_compact(), str(folders["RealESRGAN"] / "tiny-compact-x2.safetensors"))
    torch.save({"params": tiny_swinir()}, folders["SwinIR"] / "SwinIR_tiny_x2.pth")
    save_file(tiny_dat(), str(folders["DAT"] / "DAT_tiny_x2.safetensors"))
    return root


@pytest.fixture()
def registry(data_dir):
    return UpscalerRegistry(data_dir)


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    smooth = rng.integers(0, 256, (height // 4 + 1, width // 4 + 1, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(smooth).resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
    detail = rng.integers(-40, 41, (height, width, 3))
    return Image.fromarray(np.clip(base + detail, 0, 255).astype(np.uint8))


def as_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.mark.parametrize(
    "name, arch, scale",
    [("4x_tiny_old", "ESRGAN", 4), ("4x_tiny_new", "ESRGAN", 4), ("tiny_x2plus", "ESRGAN", 2),
     ("tiny-compact-x2 (RealESRGAN)", "Compact", 2), ("tiny-compact-x2", "Compact", 2),
     ("SwinIR_tiny_x2", "SwinIR", 2), ("DAT_tiny_x2", "DAT", 2)],
)  # fmt: skip
def test_each_layout_is_detected_with_its_scale_and_upscales_to_size(registry, name, arch, scale):
    model = registry.load(name)
    assert model.architecture.id == arch and model.scale == scale
    assert next(model.model.parameters()).dtype == torch.float32
    image = noise_image(20, 14)
    out = registry.upscale(image, name, size=(20 * scale, 14 * scale), tile=0)
    assert out.size == (20 * scale, 14 * scale) and out.mode == "RGB"
    assert as_array(out).std() > 10  # the random model makes an image, not a flat clamp
    exact = registry.upscale(image, name, size=(33, 21), tile=0)
    assert exact.size == (33, 21)


def test_old_and_new_esrgan_layouts_are_the_same_network(registry):
    image = noise_image(18, 12, seed=3)
    old = registry.upscale(image, "4x_tiny_old", size=(72, 48), tile=0)
    new = registry.upscale(image, "4x_tiny_new", size=(72, 48), tile=0)
    np.testing.assert_array_equal(as_array(old), as_array(new))


def test_tiled_esrgan_matches_untiled_away_from_seams_and_everywhere_with_enough_overlap(registry):
    image = noise_image(96, 80, seed=1)
    size = (96 * 4, 80 * 4)
    whole = as_array(registry.upscale(image, "4x_tiny_old", size=size, tile=0))
    tiled = as_array(registry.upscale(image, "4x_tiny_old", size=size, tile=48, overlap=8))
    cores = [t.core for t in tile_grid(96, 80, 48, 8)]
    far = np.ones(whole.shape[:2], dtype=bool)  # output pixels whose input context fits inside their tile
    band = (ESRGAN_RADIUS - 8) * 4
    for seam in {x0 for x0, _, _, _ in cores} - {0}:
        far[:, max(0, seam * 4 - band) : seam * 4 + band] = False
    for seam in {y0 for _, y0, _, _ in cores} - {0}:
        far[max(0, seam * 4 - band) : seam * 4 + band, :] = False
    assert far.mean() > 0.4 and (~far).any()
    assert np.abs(tiled - whole)[far].max() <= 1
    assert np.abs(tiled - whole)[~far].max() > 1  # the seams really are where the context was too small
    generous = as_array(registry.upscale(image, "4x_tiny_old", size=size, tile=48, overlap=ESRGAN_RADIUS + 1))
    assert np.abs(generous - whole).max() <= 1


def test_tiled_compact_matches_untiled_everywhere(registry):
    image = noise_image(50, 35, seed=2)
    whole = as_array(registry.upscale(image, "tiny-compact-x2", size=(100, 70), tile=0))
    for tile in (7, 16, 24):
        tiled = as_array(registry.upscale(image, "tiny-compact-x2", size=(100, 70), tile=tile, overlap=8))
        assert np.abs(tiled - whole).max() <= 1, tile
    short = as_array(registry.upscale(image, "tiny-compact-x2", size=(100, 70), tile=16, overlap=3))
    assert np.abs(short - whole).max() > 1  # its receptive-field radius is 4 input pixels


def test_passes_progress_and_final_lanczos(registry):
    calls: list[tuple[int, int]] = []
    image = noise_image(20, 20)
    out = registry.upscale(image, "tiny-compact-x2", scale=3, tile=16, overlap=4, progress=lambda *a: calls.append(a))
    assert out.size == target_size(20, 20, 3) == (56, 56)
    # two 2x passes (20 -> 40 -> 80): 2x2 tiles, then 3x3 tiles, then Lanczos to 56
    assert calls == [(i, 13) for i in range(1, 14)]
    big = registry.upscale(image, "tiny-compact-x2", size=(80, 80), tile=16, overlap=4)
    expected = big.resize((56, 56), Image.Resampling.LANCZOS)
    np.testing.assert_array_equal(as_array(out), as_array(expected))


def test_interrupt_between_tiles(registry):
    seen: list[int] = []
    with pytest.raises(UpscaleInterrupted):
        registry.upscale(noise_image(40, 40), "tiny-compact-x2", scale=2, tile=10, overlap=2,
                         progress=lambda done, total: seen.append(done), interrupted=lambda: len(seen) >= 2)  # fmt: skip
    assert seen == [1, 2]


def test_builtins_sizes_and_arrays(registry):
    image = noise_image(50, 30)
    for name in ("None", "Lanczos", "Nearest"):
        assert registry.upscale(image, name, scale=2).size == (96, 56)
        assert registry.upscale(np.asarray(image), name, size=(123, 77)).size == (123, 77)
    lanczos = image.resize((123, 77), Image.Resampling.LANCZOS)
    nearest = image.resize((123, 77), Image.Resampling.NEAREST)
    np.testing.assert_array_equal(as_array(registry.upscale(image, "Lanczos", size=(123, 77))), as_array(lanczos))
    np.testing.assert_array_equal(as_array(registry.upscale(image, "None", size=(123, 77))), as_array(lanczos))
    np.testing.assert_array_equal(as_array(registry.upscale(image, "Nearest", size=(123, 77))), as_array(nearest))
    gray = np.asarray(image.convert("L"))
    assert registry.upscale(gray, "tiny-compact-x2", scale=2).mode == "RGB"
    with pytest.raises(ValueError, match="exactly one"):
        registry.upscale(image, "Lanczos")


@pytest.mark.parametrize("mode", list(LATENT_UPSCALE_MODES))
def test_latent_modes_match_interpolate(mode):
    latents = torch.randn(2, 4, 8, 10, generator=torch.Generator().manual_seed(0))
    out = upscale_latent(latents, (16, 20), mode)
    interpolation, antialias = LATENT_UPSCALE_MODES[mode]
    assert out.shape == (2, 4, 16, 20) and out.dtype == latents.dtype
    torch.testing.assert_close(out, F.interpolate(latents, size=(16, 20), mode=interpolation, antialias=antialias))
    assert upscale_latent(latents.half(), (12, 15), mode).dtype == torch.float16


def test_latent_mode_names_are_a1111s():
    assert [m["name"] for m in latent_modes()] == [
        "Latent", "Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic antialiased)",
        "Latent (nearest)", "Latent (nearest-exact)",
    ]  # fmt: skip
    assert LATENT_UPSCALE_MODES["Latent (bicubic antialiased)"] == ("bicubic", True)
    with pytest.raises(UnknownUpscalerError, match="Latent \\(bicubic\\)"):
        upscale_latent(torch.zeros(1, 4, 8, 8), (16, 16), "bicubic")


class _RunsCode:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("container", ["zip", "legacy"])
def test_malicious_pickle_is_refused_without_running_code(tmp_path, container):
    folder = tmp_path / "models" / "ESRGAN"
    folder.mkdir(parents=True)
    marker = tmp_path / "pwned"
    payload = {"model.0.weight": torch.zeros(1), "evil": _RunsCode(str(marker))}
    path = folder / "4x_evil.pth"
    if container == "zip":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    registry = UpscalerRegistry(tmp_path)
    with pytest.raises(UnsafeCheckpointError, match="4x_evil.pth"):
        registry.load("4x_evil")
    assert not marker.exists()


def test_unrecognised_and_broken_files_name_the_file(tmp_path):
    folder = tmp_path / "models" / "ESRGAN"
    folder.mkdir(parents=True)
    mystery = {"encoder.weight": torch.zeros(4, 4), "decoder.bias": torch.zeros(4)}
    save_file(mystery, str(folder / "mystery.safetensors"))
    (folder / "truncated.pth").write_bytes(b"PK\x03\x04 not really")
    registry = UpscalerRegistry(tmp_path)
    with pytest.raises(UnsupportedModelError, match="mystery.safetensors.*does not recognise"):
        registry.load("mystery")
    with pytest.raises(CheckpointError, match="truncated.pth"):
        registry.upscale(noise_image(8, 8), "truncated", scale=2)
    with pytest.raises(UnknownUpscalerError, match="latent mode"):
        registry.upscale(noise_image(8, 8), "Latent", scale=2)
    with pytest.raises(UnknownUpscalerError, match="nope"):
        registry.load("nope")


def test_listing_has_a1111s_shape(registry, data_dir, tmp_path):
    extra = tmp_path / "more"
    extra.mkdir()
    save_file(tiny_compact(), str(extra / "tiny-compact-x2.safetensors"))  # same stem as a RealESRGAN file
    save_file(tiny_compact(), str(extra / "plain.safetensors"))  # no scale in the name
    registry = UpscalerRegistry(data_dir, extra_dirs=[extra])
    listing = registry.listing()
    assert all(set(item) == {"name", "model_name", "model_path", "model_url", "scale"} for item in listing)
    assert [item["name"] for item in listing[:3]] == ["None", "Lanczos", "Nearest"]
    assert listing[0] == {"name": "None", "model_name": None, "model_path": None, "model_url": None, "scale": 4.0}
    by_name = {item["name"]: item for item in listing}
    assert len(by_name) == len(listing) == 3 + 9
    assert by_name["4x_tiny_old"]["model_name"] == "ESRGAN"
    assert by_name["4x_tiny_old"]["model_path"] == str((data_dir / "models/ESRGAN/4x_tiny_old.pth").resolve())
    assert by_name["tiny-compact-x2 (more)"]["model_name"] == "more"
    assert by_name["tiny_x2plus"]["scale"] == 2.0  # from the name before loading
    assert by_name["plain"]["scale"] == 4.0  # A1111's default until the model is loaded
    registry.load("plain")
    assert {item["name"]: item["scale"] for item in registry.listing()}["plain"] == 2.0
    assert registry.hires_names()[: len(LATENT_UPSCALE_MODES)] == list(LATENT_UPSCALE_MODES)
    assert [scale_from_name(n) for n in ("4x-UltraSharp", "RealESRGAN_x4plus", "realesr-general-x4v3", "nox")] == [
        4.0, 4.0, 4.0, None,
    ]  # fmt: skip


def test_model_cache_keeps_one_model(registry):
    first = registry.load("tiny-compact-x2")
    assert registry.load("tiny-compact-x2") is first
    registry.load("4x_tiny_old")
    assert registry.load("tiny-compact-x2") is not first


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None, reason="torchvision is installed")
def test_spandrel_import_leaves_torchvision_missing_for_other_libraries():
    import sys

    assert "spandrel" in sys.modules and "torchvision" not in sys.modules
    assert importlib.util.find_spec("torchvision") is None
