"""Bad input (issue 8), property-based: through ``process`` and through the real HTTP API.

Every input is either served (with a documented correction: any image mode or size is decoded and
resized; transparency is filled with ``img2img_background_color``) or refused with an error naming
the field (a ValidationError from ``process``, a 4xx from the API).  Never a 500, and the server
keeps serving.  Images are tiny (<= 128 px) except the deliberate "huge" cases, which are PNG
headers that claim huge dimensions (nothing that large is ever allocated).
"""

from __future__ import annotations

import base64
import io
import json
import re
import struct
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from modules.core import images, samplers
from modules.core.errors import UserError, ValidationError
from modules.core.progress import JobControl
from modules.core.request import GenerationRequest
from modules.core.settings import Settings
from modules.generation import masking
from modules.generation.processing import ProcessingContext, process
from modules.models.checkpoints import CheckpointRegistry, HashCache
from modules.models.manager import ModelManager
from tests.helpers.imaging import b64, png
from tests.helpers.server import populate, running_server

W, H = 64, 64
PROPERTY = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- image builders --------------------------------------------------------------------------------


def encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def picture(w: int = W, h: int = H, seed: int = 0) -> np.ndarray:
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / max(w, 1), yy * 255 / max(h, 1), (xx + yy) * 127 / (w + h)], -1)
    return np.clip(base + rng.randint(-30, 30, (h, w, 3)), 0, 255).astype(np.uint8)


def png_claiming(width: int, height: int, bit_depth: int = 8, color_type: int = 2) -> bytes:
    """A PNG whose header claims width x height, with a few bytes of pixel data (a decompression-bomb shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 4096))
        + chunk(b"IEND", b"")
    )


# Every mode an upload can arrive in, with a format that stores it.
MODES = ["1", "L", "LA", "P", "P-transparent", "RGB", "RGBA", "CMYK", "I;16", "I", "F"]
FORMATS = {
    "1": ["PNG", "TIFF", "BMP"], "L": ["PNG", "JPEG", "TIFF", "WEBP"], "LA": ["PNG", "TIFF"], "P": ["PNG", "GIF", "BMP"],
    "P-transparent": ["PNG", "GIF"], "RGB": ["PNG", "JPEG", "WEBP", "TIFF", "BMP"], "RGBA": ["PNG", "WEBP", "TIFF"],
    "CMYK": ["JPEG", "TIFF"], "I;16": ["PNG", "TIFF"], "I": ["TIFF"], "F": ["TIFF"],
}  # fmt: skip


def make_image(mode: str, w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.RandomState(seed)
    rgb = Image.fromarray(picture(w, h, seed))
    if mode == "P-transparent":
        img = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        img.info["transparency"] = 0
        return img
    if mode == "RGBA" or mode == "LA":
        alpha = Image.fromarray(rng.choice([0, 128, 255], (h, w)).astype(np.uint8))
        img = rgb.convert(mode[:-1] if mode == "LA" else "RGB")
        img.putalpha(alpha)
        return img
    if mode == "I;16":
        return Image.fromarray(rng.randint(0, 65535, (h, w)).astype(np.uint16))
    if mode == "I":
        return Image.fromarray(rng.randint(-(2**20), 2**20, (h, w)).astype(np.int32))
    if mode == "F":
        return Image.fromarray((rng.rand(h, w) * 1000 - 500).astype(np.float32))
    return rgb.convert(mode)


@st.composite
def uploads(draw, max_side: int = 128) -> tuple[str, str, bytes]:
    mode = draw(st.sampled_from(MODES))
    fmt = draw(st.sampled_from(FORMATS[mode]))
    w, h = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    img = make_image(mode, w, h, draw(st.integers(0, 2**16)))
    return mode, fmt, encode(img, "GIF" if fmt == "GIF" else fmt)


sizes = st.sampled_from([64, 72, 80, 96, 128])


# --- process ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def env(tmp_path_factory, depth_ckpt) -> tuple[Path, ModelManager]:
    root = tmp_path_factory.mktemp("input")
    folder = populate(root, depth_ckpt)
    registry = CheckpointRegistry([folder], HashCache(None))
    registry.refresh()
    manager = ModelManager(registry, device=torch.device("cpu"), dtype=torch.float32)
    manager.load("tiny-depth")
    return root, manager


def run(env, request: GenerationRequest, **overrides):
    root, manager = env
    ctx = ProcessingContext(manager, Settings().override(overrides), root, control=JobControl())
    return process(request, ctx)


def req(**kw) -> GenerationRequest:
    base = dict(prompt="a house", init_images=[png(picture())], width=W, height=H, steps=2, seed=5,
                denoising_strength=0.5, save_images=False)  # fmt: skip
    base.update(kw)
    return GenerationRequest(**base)


@PROPERTY
@given(upload=uploads(), width=sizes, height=sizes, resize_mode=st.integers(0, 3))
def test_any_mode_and_size_of_upload_is_served_at_the_requested_size(env, upload, width, height, resize_mode):
    """1x1 to 128x128, bilevel, grey, palette (with transparency), RGB(A), CMYK, 16-bit, 32-bit int and float."""
    mode, fmt, data = upload
    result = run(env, req(init_images=[data], width=width, height=height, resize_mode=resize_mode))
    (image,) = result.images
    assert image.shape == (height, width, 3) and image.dtype == np.uint8
    assert f"Size: {width}x{height}" in result.infotexts[0]
    assert result.depth_maps[0].shape == (height, width)


@pytest.mark.parametrize("size", [(1, 1), (8, 8), (9, 9), (1, 64)])
def test_latent_upscale_of_a_tiny_upload(env, size):
    """Found by the property above: an 8x8 source gave the VAE a 1x1 latent and a 500."""
    data = encode(Image.new("RGB", size, (200, 30, 30)), "PNG")
    assert run(env, req(init_images=[data], resize_mode=3)).images[0].shape == (H, W, 3)


@pytest.mark.parametrize("colour, rgb", [(None, (255, 255, 255)), ("#ff0000", (255, 0, 0)), ("navy", (0, 0, 128))])
def test_transparent_pixels_take_the_background_colour(env, colour, rgb):
    """A1111's img2img_background_color: an RGBA upload is the RGB image with that colour under it."""
    rng = np.random.RandomState(3)
    rgba = np.dstack([picture(), rng.choice([0, 255], (H, W)).astype(np.uint8)])
    rgba[:8, :, 3] = 128  # and a half-transparent band
    overrides = {"img2img_background_color": colour} if colour else {}
    decoded = np.asarray(images.decode_image(png(rgba, "RGBA"), "init", max_pixels=10**6, background=colour or "#fff"))
    clear = rgba[..., 3] == 0
    assert (decoded[clear] == rgb).all() and (decoded[rgba[..., 3] == 255] == rgba[rgba[..., 3] == 255][:, :3]).all()
    half = (rgba[:8, :, :3].astype(float) * 128 + np.array(rgb) * 127) / 255
    assert np.abs(decoded[:8].astype(float) - half).max() <= 1
    flattened = png(decoded)
    with_alpha = run(env, req(init_images=[png(rgba, "RGBA")], override_settings=overrides))
    without = run(env, req(init_images=[flattened], override_settings=overrides))
    assert np.array_equal(with_alpha.images[0], without.images[0])  # the fill happens before anything else


_SAMPLER_NAMES = (
    {n.lower() for n in samplers.sampler_names()} | {a for s in samplers.SAMPLERS for a in s.aliases} | {""}
)

# (field, bad values) refused by name before any model work
BAD_FIELDS = {
    "steps": st.sampled_from([0, -1, 1001, 10_000, 2.5, float("nan")]),
    "denoising_strength": st.one_of(st.floats(max_value=-1e-9), st.floats(min_value=1.000001),
                                    st.sampled_from([float("nan"), float("inf")])),
    "cfg_scale": st.one_of(st.floats(max_value=-1e-9), st.floats(min_value=100.0001),
                           st.sampled_from([float("nan"), float("-inf")])),
    "width": st.one_of(st.integers(65, 8191).filter(lambda v: v % 8), st.integers(-100, 63), st.integers(8193, 10**9)),
    "height": st.one_of(st.integers(65, 8191).filter(lambda v: v % 8), st.integers(-100, 63)),
    "seed": st.one_of(st.integers(max_value=-2), st.integers(min_value=2**32)),
    "sampler_name": st.text(min_size=1, max_size=30).filter(lambda s: s.strip().lower() not in _SAMPLER_NAMES),
    "batch_size": st.sampled_from([0, -3, 65, 1000]),
    "mask_blur_x": st.integers(max_value=-1),
    "resize_mode": st.sampled_from([4, -1, "Stretch", 2.5]),
    "subseed_strength": st.sampled_from([-0.5, 1.5, float("nan")]),
    "prompt": st.sampled_from([5, b"bytes", ["a list"]]),
}  # fmt: skip


@PROPERTY
@given(data=st.data(), field=st.sampled_from(sorted(BAD_FIELDS)))
def test_bad_values_are_refused_naming_the_field(env, data, field):
    value = data.draw(BAD_FIELDS[field], label=field)
    with pytest.raises(ValidationError) as info:
        run(env, req(**{field: value}))
    assert info.value.field == field and str(info.value).startswith(f"{field}: ")


# masks: the mode it comes in, its content, and whether it has the image's size
MASK_MODES = ["L", "1", "RGB", "RGBA-painted", "LA", "I;16", "P"]


def make_mask(mode: str, content: np.ndarray) -> bytes:
    """`content` (uint8, 255 = repaint) in the given mode; a painted RGBA mask marks by alpha."""
    if mode == "RGBA-painted":
        layer = np.zeros(content.shape + (4,), np.uint8)
        layer[..., 0] = 255
        layer[..., 3] = content
        return png(layer, "RGBA")
    if mode == "LA":
        return encode(Image.fromarray(np.dstack([content, np.full_like(content, 255)]), "LA"), "PNG")
    if mode == "I;16":
        return png(content.astype(np.uint16) * 257)
    if mode == "RGB":
        return png(np.dstack([content] * 3))
    return encode(Image.fromarray(content).convert(mode), "PNG")


@st.composite
def masks(draw) -> tuple[str, tuple[int, int], bytes]:
    mode = draw(st.sampled_from(MASK_MODES))
    same = draw(st.booleans())
    w, h = (W, H) if same else draw(st.tuples(st.integers(1, 128), st.integers(1, 128)))
    kind = draw(st.sampled_from(["blocks", "black", "white"]))
    if kind == "black":
        content = np.zeros((h, w), np.uint8)
    elif kind == "white":
        content = np.full((h, w), 255, np.uint8)
    else:
        rng = np.random.RandomState(draw(st.integers(0, 2**16)))
        small = rng.choice([0, 255], (max(1, h // 8), max(1, w // 8))).astype(np.uint8)
        content = np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.NEAREST))
    return mode, (w, h), make_mask(mode, content)


@PROPERTY
@given(mask=masks(), invert=st.booleans())
def test_masks_of_any_mode_size_and_content(env, mask, invert):
    """Another size -> refused naming the mask; nothing to repaint -> refused; else the unmasked pixels stay."""
    mode, size, data = mask
    original = picture()
    request = req(init_images=[png(original)], mask=data, mask_blur_x=0, mask_blur_y=0, inpaint_full_res=0,
                  inpainting_mask_invert=int(invert), denoising_strength=0.9)  # fmt: skip
    if size != (W, H):
        with pytest.raises(ValidationError, match=f"the mask is {size[0]}x{size[1]} but the image is {W}x{H}"):
            run(env, request)
        return
    decoded = masking.decode_mask(data, (W, H), invert=invert, max_pixels=10**6)
    if not decoded.any():
        with pytest.raises(ValidationError, match="mask: the mask is empty"):
            run(env, request)
        return
    (out,) = run(env, request).images
    keep = decoded == 0
    assert np.array_equal(out[keep], original[keep])
    if decoded.all():
        assert not np.array_equal(out, original)


def test_mask_in_a_mode_that_has_no_rgb_conversion_is_refused():
    lab = encode(Image.new("LAB", (W, H), (50, 0, 0)), "TIFF")
    with pytest.raises(ValidationError, match="mask: .*LAB"):
        masking.decode_mask(lab, (W, H), invert=False, max_pixels=10**6)


@PROPERTY
@given(w=st.integers(1, 128), h=st.integers(1, 128), bits=st.sampled_from([8, 16]), rgb=st.booleans(),
       width=sizes, height=sizes, seed=st.integers(0, 1000))  # fmt: skip
def test_depth_maps_of_any_size_are_fitted_to_the_image(env, w, h, bits, rgb, width, height, seed):
    rng = np.random.RandomState(seed)
    arr = rng.randint(0, 2**bits, (h, w)).astype(np.uint16 if bits == 16 else np.uint8)
    if rgb and bits == 8:
        arr = np.dstack([arr, arr // 2, arr // 3])
    result = run(env, req(depth_map=png(arr), width=width, height=height))
    assert result.images[0].shape == (height, width, 3)
    assert result.depth_maps[0].shape == (height, width)
    assert 0.0 <= float(result.depth_maps[0].min()) <= float(result.depth_maps[0].max()) <= 1.0


PROMPT_ALPHABET = list("()[]:\\ ,.-+0123456789abcAND\n\t\x00é漢🙂") + ["BREAK", "\ud800", "\udfff"]


@PROPERTY
@given(prompt=st.lists(st.sampled_from(PROMPT_ALPHABET), max_size=120).map("".join),
       negative=st.lists(st.sampled_from(PROMPT_ALPHABET), max_size=40).map("".join))  # fmt: skip
def test_any_prompt_text_is_served_or_refused_naming_the_prompt(env, prompt, negative):
    """Emphasis syntax of any shape, BREAK, NUL, emoji and unpaired surrogates (which JSON can carry)."""
    request = req(prompt=prompt, negative_prompt=negative, steps=1)
    try:
        result = run(env, request)
    except ValidationError as e:
        assert e.field in ("prompt", "negative_prompt"), e
        bad = prompt if e.field == "prompt" else negative
        assert re.search("[\ud800-\udfff]", bad) or "emphasis" in e.message, e
        return
    assert result.images[0].shape == (H, W, 3)
    assert not re.search("[\ud800-\udfff]", prompt + negative)


@pytest.mark.parametrize(
    "prompt, words",
    [
        ("a \ud800 cat", "prompt: .*unpaired surrogate"),
        ("(" * 8000 + "cat", "prompt: .*emphasis"),
        ("(cat:" + "9" * 400 + ")", "prompt: .*emphasis"),
        ("x" * 50_001, "prompt: is 50001 characters long; the limit is 50000"),
    ],
    ids=["surrogate", "deep-round", "huge-weight", "too-long"],
)
def test_prompts_that_cannot_work_are_refused_before_any_work(env, prompt, words):
    with pytest.raises(ValidationError, match=words):
        run(env, req(prompt=prompt))
    with pytest.raises(ValidationError, match=words.replace("prompt", "negative_prompt")):
        run(env, req(negative_prompt=prompt))


def test_emphasis_that_zeroes_the_mean_is_served(env):
    """Found by the property above: here the weighted embedding's mean is exactly 0, and "Original" emphasis
    divided by it (NaN images, blamed on half precision)."""
    result = run(env, req(negative_prompt="[)++)((((:", steps=1))
    assert result.images[0].shape == (H, W, 3)


def test_empty_and_very_long_prompts_are_served(env):
    assert run(env, req(prompt="", negative_prompt="")).images[0].shape == (H, W, 3)
    assert run(env, req(prompt="[" * 8000 + "cat")).images[0].shape == (H, W, 3)  # weight -> 0: harmless
    long_prompt = ("a red house, " * 4000)[:50_000]  # ~12,000 tokens: 160 chunks of 75, nothing truncated
    result = run(env, req(prompt=long_prompt, steps=1))
    assert result.images[0].shape == (H, W, 3) and result.prompts == [long_prompt]


@pytest.mark.parametrize("field", ["init_images", "mask", "depth_map"])
def test_huge_images_are_refused_from_their_header(env, field):
    """A 100000 x 100000 claim (30 GB decoded) and one just over the documented limit are refused up front."""
    limit = Settings().max_input_pixels
    for w, h in ((100_000, 100_000), (limit // 4096 + 1, 4096)):
        data = png_claiming(w, h, 16 if field == "depth_map" else 8, 0 if field != "init_images" else 2)
        kw = {"mask": data} if field == "mask" else {"depth_map": data} if field == "depth_map" else {}
        if field == "init_images":
            kw["init_images"] = [data]
        name = {"init_images": "init_images[0]", "depth_map": "depth_image"}.get(field, field)
        size = rf"({w}x{h}|{w * h} pixels)"  # the size, or its pixel count where Pillow's own ceiling stops it first
        with pytest.raises(ValidationError, match=rf"{re.escape(name)}: .*{size}, above the limit of {limit} pixels"):
            run(env, req(**kw))


def test_pixel_limit_is_a_setting_with_a_clear_error(env):
    small_limit = 64 * 64
    with pytest.raises(ValidationError, match=r"init_images\[0\]: image is 65x64, above the limit of 4096 pixels"):
        run(env, req(init_images=[png(picture(65, 64))]), max_input_pixels=small_limit)
    with pytest.raises(ValidationError, match="width: .*72x64.*above the limit of 4096 pixels"):
        run(env, req(width=72), max_output_pixels=small_limit)


# --- the HTTP API ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory, depth_ckpt):
    data_dir = tmp_path_factory.mktemp("input-api")
    populate(data_dir, depth_ckpt)
    with running_server(data_dir, "--nowebui", "--max-body-mb", "1") as srv:
        srv.app.service.update_settings({"max_batch_images": 4, "max_output_pixels": 128 * 128})
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url + "/sdapi/v1", timeout=120) as c:
        yield c


def api_body(**kw) -> dict:
    out = {"init_images": [b64(png(picture()))], "width": W, "height": H, "steps": 2, "seed": 9,
           "denoising_strength": 0.5, "prompt": "a house"}  # fmt: skip
    out.update(kw)
    return out


def post(client, payload: dict, path: str = "/img2img") -> httpx.Response:
    """JSON as Python writes it: NaN/Infinity and unpaired surrogates (as \\ud800 escapes) get through."""
    return client.post(path, content=json.dumps(payload), headers={"content-type": "application/json"})


# what a refusal of a field may call it
FIELD_WORDS = {"sampler_name": "sampler", "sampler_index": "sampler", "init_images": "init", "mask_blur": "mask_blur",
               "depth_image": "depth_image"}  # fmt: skip


def assert_names_field(r: httpx.Response, field: str) -> None:
    assert 400 <= r.status_code < 500, (field, r.status_code, r.text)
    detail = json.dumps(r.json()["detail"])
    word = FIELD_WORDS.get(field, field)
    if field == "infotext":  # the pasted text sets other fields: one of them must be named
        assert re.search(r"[a-z_]+(\[\d\])?: |\"loc\"", detail), detail
    else:
        assert word.lower() in detail.lower(), (field, detail)


JSON_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 70),
    st.sampled_from([-(2**63), 2**64, 10**30, 1001, 10_000, -1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["", "\ud800", "Euler a", "Karras", "DPM++ 2M", "Nope", "1", "nan", "x" * 1000]),
    st.lists(st.one_of(st.integers(-2, 2), st.text(max_size=3)), max_size=3),
    st.dictionaries(st.text(max_size=6), st.one_of(st.integers(), st.text(max_size=4)), max_size=2),
)
API_FIELDS = ["prompt", "negative_prompt", "steps", "cfg_scale", "denoising_strength", "width", "height", "seed",
              "subseed", "subseed_strength", "sampler_name", "sampler_index", "scheduler", "batch_size", "n_iter",
              "resize_mode", "mask_blur", "inpainting_fill", "inpaint_full_res", "inpainting_mask_invert", "eta",
              "init_images", "mask", "depth_image", "depth_invert", "override_settings", "alwayson_scripts",
              "script_name", "script_args", "styles", "infotext", "seed_resize_from_w", "include_init_images",
              "send_images", "initial_noise_multiplier"]  # fmt: skip


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from(API_FIELDS), value=JSON_VALUES)
def test_api_any_value_in_any_field_is_served_or_a_4xx_naming_it(client, field, value):
    r = post(client, api_body(**{field: value}))
    assert r.status_code < 500, (field, value, r.text)
    if r.status_code != 200:
        assert_names_field(r, field)


@st.composite
def damaged_pngs(draw) -> bytes:
    good = png(picture(draw(st.integers(1, 96)), draw(st.integers(1, 96)), draw(st.integers(0, 99))))
    how = draw(st.sampled_from(["truncate", "flip", "random"]))
    if how == "truncate":
        return good[: draw(st.integers(0, len(good) - 1))]
    if how == "flip":
        data = bytearray(good)
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] ^= 1 << draw(st.integers(0, 7))
        return bytes(data)
    return draw(st.binary(max_size=300))


@PROPERTY
@given(data=damaged_pngs(), field=st.sampled_from(["init_images", "mask", "depth_image"]))
def test_api_damaged_or_non_image_uploads_are_refused_naming_the_field(client, data, field):
    value = [b64(data)] if field == "init_images" else b64(data)
    r = post(client, api_body(**{field: value}))
    assert r.status_code in (200, 404, 422), (field, r.status_code, r.text)
    if r.status_code != 200:
        assert_names_field(r, field)


def _cmyk_jpeg() -> bytes:
    return encode(Image.fromarray(picture()).convert("CMYK"), "JPEG")


# The issue's list, through the API: (name, payload changes, status, words the answer must contain).
ISSUE_CASES = [
    ("truncated png", {"init_images": [b64(png(picture())[:200])]}, 422, ["init_images[0]", "decode"]),
    ("not an image", {"init_images": [b64(b"%PDF-1.4 not a picture")]}, 422, ["init_images[0]", "decode"]),
    ("1x1", {"init_images": [b64(png(picture(1, 1)))]}, 200, []),
    ("huge header", {"init_images": [b64(png_claiming(100_000, 100_000))]}, 422,
     ["init_images[0]", "10000000000 pixels", "above the limit of 67108864 pixels"]),
    ("huge mask header", {"mask": b64(png_claiming(100_000, 100_000, 8, 0))}, 422,
     ["mask", "10000000000 pixels", "above the limit of 67108864 pixels"]),
    ("huge depth header", {"depth_image": b64(png_claiming(9_000, 9_000, 16, 0))}, 422,
     ["depth_image", "9000x9000", "above the limit of 67108864 pixels"]),
    ("16-bit", {"init_images": [b64(png(picture()[..., 0].astype(np.uint16) * 257))]}, 200, []),
    ("palette", {"init_images": [b64(encode(Image.fromarray(picture()).convert("P"), "PNG"))]}, 200, []),
    ("cmyk", {"init_images": [b64(_cmyk_jpeg())]}, 200, []),
    ("rgba", {"init_images": [b64(png(np.dstack([picture(), np.zeros((H, W), np.uint8)]), "RGBA"))]}, 200, []),
    ("mask of another size", {"mask": b64(png(np.full((32, 32), 255, np.uint8)))}, 422, ["mask", "must match"]),
    ("mask in LAB", {"mask": b64(encode(Image.new("LAB", (W, H)), "TIFF"))}, 422, ["mask", "LAB"]),
    ("all-black mask", {"mask": b64(png(np.zeros((H, W), np.uint8)))}, 422, ["mask", "empty"]),
    ("all-white mask", {"mask": b64(png(np.full((H, W), 255, np.uint8)))}, 200, []),
    ("depth of another size", {"depth_image": b64(png(np.arange(35, dtype=np.uint8).reshape(5, 7)))}, 200, []),
    ("width not multiple of 8", {"width": 100}, 422, ["width", "multiple of 8", "96"]),
    ("height not multiple of 8", {"height": 65}, 422, ["height", "multiple of 8"]),
    ("steps 0", {"steps": 0}, 422, ["steps", "1..1000"]),
    ("steps 10000", {"steps": 10_000}, 422, ["steps", "1..1000"]),
    ("strength -0.1", {"denoising_strength": -0.1}, 422, ["denoising_strength", "0.0..1.0"]),
    ("strength 1.5", {"denoising_strength": 1.5}, 422, ["denoising_strength", "0.0..1.0"]),
    ("cfg NaN", {"cfg_scale": float("nan")}, 422, ["cfg_scale", "nan"]),
    ("cfg negative", {"cfg_scale": -3}, 422, ["cfg_scale"]),
    ("unknown sampler", {"sampler_name": "Euler z"}, 400, ["Sampler not found", "Euler z"]),
    ("unknown scheduler", {"scheduler": "Cosine"}, 200, []),  # falls back to Automatic with a warning (A1111)
    ("unknown checkpoint", {"override_settings": {"sd_model_checkpoint": "nope"}}, 404, ["checkpoint", "nope"]),
    ("empty prompt", {"prompt": ""}, 200, []),
    ("prompt too long", {"prompt": "a" * 50_001}, 422, ["prompt", "50000"]),
    ("surrogate prompt", {"prompt": "a \ud800"}, 422, ["prompt", "surrogate"]),
    ("infinite prompt", {"prompt": float("inf")}, 422, ["prompt", "inf"]),  # a 500 once: JSON has no Infinity
    ("NaN style", {"styles": [float("nan")]}, 422, ["styles", "nan"]),
    ("surrogate style", {"styles": ["ok", "\udfff"]}, 422, ["styles[1]", "surrogate"]),
    ("surrogate option name", {"override_settings": {"\ud800": 1}}, 422, ["override_settings", "surrogate"]),
    ("surrogate extension", {"alwayson_scripts": {"\ud800": {}}}, 422, ["alwayson_scripts", "surrogate"]),
    ("surrogate extension arg", {"alwayson_scripts": {"x": {"args": {"a": "\ud800"}}}}, 422,
     ["alwayson_scripts.x.args.a", "surrogate"]),
    ("surrogate unknown field", {"extra_field\ud800": 1}, 422, ["unicode"]),
    ("emphasis overflow", {"prompt": "(" * 5000 + "x"}, 422, ["prompt", "emphasis"]),
    ("bad background colour", {"override_settings": {"img2img_background_color": "#12"}}, 422,
     ["img2img_background_color", "colour"]),
    ("too many images", {"batch_size": 4, "n_iter": 2}, 422, ["batch_size", "n_iter", "limit of 4"]),
    ("too many pixels", {"width": 128, "height": 136}, 422, ["width", "height", "128x136"]),
]  # fmt: skip


@pytest.mark.parametrize(("name", "changes", "status", "words"), ISSUE_CASES, ids=[c[0] for c in ISSUE_CASES])
def test_api_issue_inputs(client, name, changes, status, words):
    r = post(client, api_body(**changes))
    assert r.status_code == status, r.text
    if status == 200:
        image = Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0])))
        assert image.size == (W, H)
    detail = json.dumps(r.json().get("detail", ""), ensure_ascii=False)
    for word in words:
        assert word in detail, (word, detail)


def test_api_background_colour_option_fills_transparency(client):
    rgba = np.dstack([picture(), np.zeros((H, W), np.uint8)])  # fully transparent: only the colour is left
    red = np.zeros((H, W, 3), np.uint8)
    red[...] = (255, 0, 0)
    a = post(client, api_body(init_images=[b64(png(rgba, "RGBA"))],
                              override_settings={"img2img_background_color": "#ff0000"}))  # fmt: skip
    b = post(client, api_body(init_images=[b64(png(red))]))
    assert a.status_code == b.status_code == 200
    pixels = [np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0])))) for r in (a, b)]
    assert np.array_equal(*pixels)


def test_api_broken_deep_or_unencodable_json_is_a_4xx(client):
    deep = "[" * 100_000 + "]" * 100_000
    for raw in ('{"alwayson_scripts": {"x": {"a": ' + deep + "}}}", deep, "{not json", "", '{"prompt": "\\ud800'):
        for path in ("/img2img", "/txt2img", "/options", "/png-info", "/depth"):
            r = client.post(path, content=raw, headers={"content-type": "application/json"})
            assert 400 <= r.status_code < 500 and r.json()["detail"], (path, raw[:40], r.status_code)
    r = post(client, {"\ud800": 1}, "/options")
    assert r.status_code == 422 and "unpaired surrogate" in r.json()["detail"]


def test_api_oversized_body_is_refused_and_the_server_keeps_serving(client, server):
    big = api_body(init_images=[b64(np.random.RandomState(0).bytes(1_200_000))])
    r = post(client, big)
    assert r.status_code == 413 and "--max-body-mb" in r.json()["detail"] and "1 MiB" in r.json()["detail"]
    with httpx.Client(base_url=server.url + "/sdapi/v1", timeout=60) as fresh:
        assert fresh.get("/progress").status_code == 200
        assert post(fresh, api_body()).status_code == 200


def test_api_depth_and_png_info_endpoints_refuse_bad_images(client):
    for data in (png_claiming(100_000, 100_000), b"not an image", png(picture())[:100]):
        r = post(client, {"image": b64(data)}, "/depth")
        assert r.status_code == 422 and r.json()["detail"].startswith("image: "), r.text
    assert post(client, {"image": b64(b"not an image")}, "/png-info").status_code == 422
    assert post(client, {"image": b64(png_claiming(100_000, 100_000))}, "/png-info").status_code in (200, 422)
    assert post(client, {"image": b64(png(picture()))}, "/depth").status_code == 200


def test_server_still_serves_after_all_of_it(client):
    assert client.get("/progress").json()["state"]["job"] == ""
    r = post(client, api_body())
    assert r.status_code == 200 and len(r.json()["images"]) == 1


def test_user_errors_from_process_are_user_errors(env):
    """Nothing above surfaced as anything but a UserError: the depth model without an image is one too."""
    with pytest.raises(UserError, match="needs an input image or a depth map"):
        run(env, req(init_images=[]))
