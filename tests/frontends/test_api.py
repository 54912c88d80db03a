"""The A1111-compatible HTTP API over real HTTP: every endpoint, the depth fields, every error path.

The real app (webui.create_app) serves tiny checkpoints on a loopback port; requests are plain httpx.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import threading
import time
import typing
from enum import IntEnum
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from modules.core import samplers
from modules.core.request import GenerationRequest
from modules.frontends.api import models, payloads
from tests.helpers.imaging import b64, png
from tests.helpers.ldm_layout import write_checkpoint
from tests.helpers.server import populate, running_server

pytestmark = pytest.mark.usefixtures("depth_model_current")  # tests start on the tiny depth model

W, H = 96, 64
A1111_INFO_KEYS = {
    "prompt", "all_prompts", "negative_prompt", "all_negative_prompts", "seed", "all_seeds", "subseed",
    "all_subseeds", "subseed_strength", "width", "height", "sampler_name", "cfg_scale", "steps", "batch_size",
    "restore_faces", "face_restoration_model", "sd_model_name", "sd_model_hash", "sd_vae_name", "sd_vae_hash",
    "seed_resize_from_w", "seed_resize_from_h", "denoising_strength", "extra_generation_params",
    "index_of_first_image", "infotexts", "styles", "job_timestamp", "clip_skip", "is_using_inpainting_conditioning",
}  # fmt: skip


# --- helpers -------------------------------------------------------------------------------------


def picture(seed: int = 0, w: int = W, h: int = H) -> np.ndarray:
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], -1)
    return np.clip(base + rng.randint(-20, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def img_b64(seed: int = 0, w: int = W, h: int = H) -> str:
    return b64(png(picture(seed, w, h)))


def decode(s: str) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(s)))
    img.load()
    return img


def pixels(s: str) -> np.ndarray:
    return np.asarray(decode(s).convert("RGB"))


def body(**kw) -> dict:
    base = {"init_images": [img_b64()], "width": W, "height": H, "steps": 4, "seed": 11, "prompt": "a house"}
    base.update(kw)
    return base


def half_mask(w: int = W, h: int = H) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[:, w // 2 :] = 255
    return m


def assert_error(r: httpx.Response, status: int, *words: str) -> dict:
    assert r.status_code == status, r.text
    data = r.json()
    text = json.dumps(data["detail"]).lower()
    for word in words:
        assert word.lower() in text, (word, data)
    return data


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(data_dir):
    with running_server(data_dir, "--nowebui") as srv:
        yield srv


# --- the schema cannot drift from GenerationRequest ----------------------------------------------


def _sample_value(name: str, tp, default):
    """A JSON value for `name` that differs from its default, and what GenerationRequest should hold."""
    if name in ("init_images",):
        return [img_b64()], [png(picture())]
    if name in ("mask", "depth_map"):
        return img_b64(3), png(picture(3))
    if isinstance(tp, type) and issubclass(tp, IntEnum):
        member = next(m for m in tp if m != default)
        return int(member), member
    origin = typing.get_origin(tp)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    base = args[0] if origin is not None and args and origin not in (list, dict) else tp
    if typing.get_origin(base) is dict or base is dict:
        return {"k": {"v": 1}}, {"k": {"v": 1}}
    if typing.get_origin(base) is list and typing.get_args(base) == (str,):  # styles
        return ["a style"], ["a style"]
    if base is bool:
        return (not default), (not default)
    if base is int:
        return 8 * 9, 72
    if base is float:
        return 0.5, 0.5
    if base is str:
        return "Euler" if name == "sampler_name" else ("Karras" if name == "scheduler" else "x y"), None
    raise AssertionError(f"no sample value for {name}: {tp}")


def test_every_generation_request_field_is_reachable_from_the_api():
    """Each GenerationRequest field is set from the API request (under its A1111 name), or derived."""
    hints = typing.get_type_hints(GenerationRequest)
    for f in dataclasses.fields(GenerationRequest):
        if f.name in models.INDIRECT_FIELDS:
            continue
        api_name = models.API_NAMES.get(f.name, f.name)
        assert api_name in models.Img2ImgRequest.model_fields, f"{f.name} is missing from the img2img API model"
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        value, expected = _sample_value(f.name, hints[f.name], default)
        payload = {"init_images": [img_b64()], api_name: value}
        if f.name == "script_args":
            payload["script_name"] = "Some Script"  # arguments travel only with a script
        req = payloads.to_generation_request(models.Img2ImgRequest(**payload), img2img=True)
        got = getattr(req, f.name)
        assert got == (value if expected is None else expected), (f.name, got)
        assert got != default or f.name in ("init_images",), f"{f.name} kept its default"
    # the indirect one: save_grid follows save_images / do_not_save_grid
    req = payloads.to_generation_request(
        models.Img2ImgRequest(init_images=[img_b64()], save_images=True, do_not_save_grid=True), img2img=True
    )
    assert req.save_images is True and req.save_grid is False


def test_api_defaults_are_a1111s_not_the_uis():
    body_ = models.Img2ImgRequest(init_images=[img_b64()], mask_blur=2)
    req = payloads.to_generation_request(body_, img2img=True)
    assert (req.steps, req.sampler_name, req.scheduler) == (50, "Euler", "Automatic")
    assert (int(req.inpainting_fill), int(req.inpaint_full_res), req.inpaint_full_res_padding) == (0, 1, 0)
    assert (req.mask_blur_x, req.mask_blur_y) == (2, 2)
    assert req.save_images is False and req.save_grid is False
    ui = GenerationRequest()
    assert (ui.steps, ui.inpainting_fill, ui.inpaint_full_res, ui.inpaint_full_res_padding) == (20, 1, 0, 32)
    assert "mask" not in models.Txt2ImgRequest.model_fields and "depth_image" in models.Txt2ImgRequest.model_fields


# --- img2img ------------------------------------------------------------------------------------


def test_img2img_response_shape_info_and_infotext(client):
    r = client.post("/img2img", json=body(batch_size=2, n_iter=1))
    assert r.status_code == 200, r.text
    assert float(r.headers["x-process-time"]) > 0
    data = r.json()
    assert set(data) >= {"images", "parameters", "info", "depth_images"}
    info = json.loads(data["info"])
    assert A1111_INFO_KEYS <= set(info)
    assert len(data["images"]) == 2 and len(info["infotexts"]) == 2
    assert info["all_seeds"] == [11, 12] and info["seed"] == 11
    assert (info["width"], info["height"], info["steps"], info["sampler_name"]) == (W, H, 4, "Euler")
    assert info["sd_model_name"] == "tiny-depth" and info["extra_generation_params"]["Depth source"] == "MiDaS"
    for s, text in zip(data["images"], info["infotexts"], strict=True):
        img = decode(s)
        assert img.format == "PNG" and img.size == (W, H)
        assert img.info["parameters"] == text
    assert "Seed: 12" in info["infotexts"][1]
    assert data["parameters"]["init_images"] is None and data["parameters"]["prompt"] == "a house"
    assert len(data["depth_images"]) == 2
    d = decode(data["depth_images"][0])
    assert d.mode.startswith("I") and d.size == (W, H)


def test_include_init_images_and_send_images(client):
    r = client.post("/img2img", json=body(include_init_images=True, send_images=False))
    data = r.json()
    assert r.status_code == 200 and data["images"] == [] and data["depth_images"] == []
    assert data["parameters"]["init_images"] == body()["init_images"]
    assert json.loads(data["info"])["infotexts"]


def test_a1111_defaults_apply_over_http(client):
    b = {"init_images": [img_b64()], "width": W, "height": H, "seed": 1, "denoising_strength": 0.1}
    data = client.post("/img2img", json=b).json()
    info = json.loads(data["info"])
    assert info["steps"] == 50 and info["sampler_name"] == "Euler"
    p = data["parameters"]
    assert (p["inpainting_fill"], p["inpaint_full_res"], p["inpaint_full_res_padding"]) == (0, True, 0)
    assert p["save_images"] is False


def test_sampler_aliases_and_old_karras_names(client):
    info = json.loads(client.post("/img2img", json=body(sampler_name=None, sampler_index="k_lms")).json()["info"])
    assert info["sampler_name"] == "LMS"
    info = json.loads(client.post("/img2img", json=body(sampler_name="DPM++ 2M Karras")).json()["info"])
    assert info["sampler_name"] == "DPM++ 2M" and "Schedule type: Karras" in info["infotexts"][0]
    info = json.loads(client.post("/img2img", json=body(sampler_name="euler a", scheduler="automatic")).json()["info"])
    assert info["sampler_name"] == "Euler a"


def test_data_url_prefix_and_line_breaks_are_accepted(client):
    plain = client.post("/img2img", json=body()).json()["images"][0]
    raw = img_b64()
    wrapped = "\n".join(raw[i : i + 76] for i in range(0, len(raw), 76))
    for variant in ("data:image/png;base64," + raw, wrapped):
        r = client.post("/img2img", json=body(init_images=[variant]))
        assert r.status_code == 200, r.text
        assert np.array_equal(pixels(r.json()["images"][0]), pixels(plain))


def test_inpainting_keeps_unmasked_pixels(client):
    src = picture(5)
    for full_res in (False, True):
        r = client.post("/img2img", json=body(init_images=[b64(png(src))], mask=b64(png(half_mask())), mask_blur=0,
                                              inpainting_fill=1, inpaint_full_res=full_res, denoising_strength=1.0))  # fmt: skip
        assert r.status_code == 200, r.text
        out = pixels(r.json()["images"][0])
        assert out.shape == src.shape
        assert np.array_equal(out[:, : W // 2], src[:, : W // 2])
        assert not np.array_equal(out[:, W // 2 :], src[:, W // 2 :])
        info = json.loads(r.json()["info"])
        assert "Mask blur: 0" in info["infotexts"][0] and "Masked content: original" in info["infotexts"][0]


def test_infotext_field_fills_unset_fields(client):
    text = "a cat\nNegative prompt: blurry\nSteps: 3, Sampler: DDIM, CFG scale: 5, Seed: 42, Size: 96x64"
    info = json.loads(client.post("/img2img", json={"init_images": [img_b64()], "infotext": text}).json()["info"])
    assert (info["prompt"], info["negative_prompt"], info["steps"], info["seed"]) == ("a cat", "blurry", 3, 42)
    assert info["sampler_name"] == "DDIM" and info["cfg_scale"] == 5
    info = json.loads(client.post("/img2img", json=body(infotext=text, steps=2)).json()["info"])
    assert info["steps"] == 2 and info["prompt"] == "a house" and info["seed"] == 11


def test_unsupported_a1111_fields_are_accepted_and_reported(client):
    r = client.post("/img2img", json=body(restore_faces=True, styles=["x"], s_churn=0, image_cfg_scale=1.5,
                                          alwayson_scripts={"Some Extension": {"args": [1, 2]}}, foo=1))  # fmt: skip
    assert r.status_code == 200, r.text
    warnings = " ".join(json.loads(r.json()["info"])["warnings"])
    assert "restore_faces" in warnings and "styles" in warnings and "foo" in warnings
    assert "no enabled extension called 'Some Extension'" in warnings
    assert r.json()["parameters"]["alwayson_scripts"] == {"Some Extension": {"args": [1, 2]}}


@pytest.mark.parametrize("wrapped", [True, False])
def test_alwayson_scripts_reach_extensions_by_name(client, wrapped):
    args = {"enabled": True, "prefix": "oil painting"}
    r = client.post("/img2img", json=body(alwayson_scripts={"prompt_prefix": {"args": args} if wrapped else args}))
    assert r.status_code == 200, r.text
    text = json.loads(r.json()["info"])["infotexts"][0]
    assert text.startswith("oil painting, a house\n") and "Prompt prefix: oil painting" in text


def test_selectable_script_by_name(client):
    r = client.post("/img2img", json=body(script_name="x/y/z plot", script_args={"x_type": "Seed", "x_values": "1,2"}))
    assert r.status_code == 200, r.text
    data = r.json()
    info = json.loads(data["info"])
    assert len(data["images"]) == 3 and info["index_of_first_image"] == 1  # the grid, then each cell
    assert decode(data["images"][0]).size[0] >= 2 * W and decode(data["images"][1]).size == (W, H)
    assert "Seed: 2" in info["infotexts"][2]
    scripts = client.get("/scripts").json()
    assert "x/y/z plot" in scripts["img2img"] and "prompt_prefix" in scripts["txt2img"]


def test_save_images(client, data_dir):
    def count():
        return len(list((data_dir / "outputs").rglob("*.png"))) if (data_dir / "outputs").exists() else 0

    before = count()
    client.post("/img2img", json=body())
    assert count() == before
    assert client.post("/img2img", json=body(save_images=True)).status_code == 200
    assert count() == before + 2  # the image and its 16-bit depth map


# --- depth ---------------------------------------------------------------------------------------


def gradient_depth(bits: int) -> bytes:
    """Near (white) on the left; a 16-bit map uses a range that 8 bits would flatten."""
    x = np.arange(W)[None, :].repeat(H, 0)
    if bits == 8:
        return png((255 - x * 255 // (W - 1)).astype(np.uint8))
    return png((30000 + (W - 1 - x)).astype(np.uint16))


@pytest.mark.parametrize("bits", [8, 16])
def test_depth_image_in_and_depth_images_out(client, bits):
    for invert in (False, True):
        r = client.post("/img2img", json=body(depth_image=b64(gradient_depth(bits)), depth_invert=invert))
        assert r.status_code == 200, r.text
        data = r.json()
        info = json.loads(data["info"])
        assert info["extra_generation_params"]["Depth source"] == "uploaded map"
        assert ("Depth invert: True" in info["infotexts"][0]) == invert
        d = np.asarray(decode(data["depth_images"][0]), dtype=np.float64) / 65535
        assert d.shape == (H, W)
        left, right = d[:, :8].mean(), d[:, -8:].mean()
        assert abs(left - right) > 0.9, (left, right)  # the full range: 16-bit precision survived
        assert (left > right) != invert  # white = near; inverted for z-depth
        assert data["parameters"]["depth_image"] is None


def test_txt2img_with_a_depth_map(client):
    r = client.post("/txt2img", json={"width": W, "height": H, "steps": 3, "seed": 2,
                                      "depth_image": b64(gradient_depth(8))})  # fmt: skip
    assert r.status_code == 200, r.text
    data = r.json()
    assert decode(data["images"][0]).size == (W, H) and len(data["depth_images"]) == 1
    assert json.loads(data["info"])["denoising_strength"] is None
    assert_error(client.post("/txt2img", json={"width": W, "height": H, "steps": 3}), 400, "depth map")
    hires = {"width": W, "height": H, "enable_hr": True, "hr_upscaler": "Nope", "depth_image": b64(gradient_depth(8))}
    assert_error(client.post("/txt2img", json=hires), 422, "hr_upscaler")  # hires. fix is served: see test_api_extras


def test_depth_endpoint_returns_a_16_bit_png(client):
    r = client.post("/depth", json={"image": img_b64(1, 80, 48)})
    assert r.status_code == 200, r.text
    data = r.json()
    assert (data["width"], data["height"]) == (80, 48)
    img = decode(data["depth_image"])
    assert img.format == "PNG" and img.mode.startswith("I;16") and img.size == (80, 48)
    arr = np.asarray(img)
    assert arr.max() > 60000 and arr.min() < 5000  # normalised to the full 16-bit range


def test_depth_endpoint_without_a_depth_model(client, server):
    server.app.service.select_checkpoint("tiny-sd2")
    assert_error(client.post("/depth", json={"image": img_b64()}), 400, "depth")
    assert_error(client.post("/depth", json={"image": "not an image!"}), 422, "image")


# --- models and options --------------------------------------------------------------------------


def test_sd_models_shape(client, data_dir):
    items = client.get("/sd-models").json()
    assert {m["model_name"] for m in items} == {"tiny-depth", "tiny-sd2"}
    for m in items:
        assert set(m) == {"title", "model_name", "hash", "sha256", "filename", "config"}
        assert m["config"].endswith(".yaml")
        if m["hash"] is None:  # listed at once, hashed when first loaded (as A1111)
            assert m["title"] == Path(m["filename"]).name and m["sha256"] is None
            continue
        assert m["title"] == f"{Path(m['filename']).name} [{m['hash']}]" and m["sha256"].startswith(m["hash"])
    loaded = next(m for m in items if m["model_name"] == "tiny-depth")  # the server fixture loaded it
    assert loaded["hash"] is not None


def test_refresh_checkpoints_finds_new_files(client, data_dir):
    folder = data_dir / "models" / "Stable-diffusion"
    write_checkpoint(folder, "tiny-extra", "sd2", seed=9)
    try:
        assert "tiny-extra" not in {m["model_name"] for m in client.get("/sd-models").json()}
        r = client.post("/refresh-checkpoints")
        assert r.status_code == 200 and r.json() is None
        assert "tiny-extra" in {m["model_name"] for m in client.get("/sd-models").json()}
    finally:
        for p in folder.glob("tiny-extra.*"):
            p.unlink()
        client.post("/refresh-checkpoints")


def test_options_get_and_switch_model(client, titles):
    opts = client.get("/options").json()
    assert opts["sd_model_checkpoint"] == titles["tiny-depth"] and "samples_format" in opts
    assert client.post("/options", json={"sd_model_checkpoint": titles["tiny-sd2"]}).status_code == 200
    assert client.get("/options").json()["sd_model_checkpoint"] == titles["tiny-sd2"]
    r = client.post("/txt2img", json={"width": W, "height": H, "steps": 2})
    assert json.loads(r.json()["info"])["sd_model_name"] == "tiny-sd2"
    # posting back everything GET returned (a common client pattern) works
    opts = client.get("/options").json()
    opts["show_progress_every_n_steps"] = 3
    assert client.post("/options", json=opts).status_code == 200
    assert client.get("/options").json()["show_progress_every_n_steps"] == 3
    client.post("/options", json={"sd_model_checkpoint": "tiny-depth", "show_progress_every_n_steps": 5})
    assert client.get("/options").json()["sd_model_checkpoint"] == titles["tiny-depth"]


def test_options_errors(client, titles):
    assert_error(client.post("/options", json={"samples_format": "gif"}), 422, "samples_format")
    assert_error(client.post("/options", json={"show_progress_every_n_steps": "many"}), 422, "show_progress")
    assert_error(client.post("/options", json={"no_such_option": 1}), 422, "no_such_option", "unknown")
    assert_error(client.post("/options", json={"sd_model_checkpoint": "nope"}), 404, "not found")
    for bad in ("../../etc/passwd", "/etc/passwd", "..\\..\\x.ckpt", "C:\\models\\x.ckpt"):
        assert_error(client.post("/options", json={"sd_model_checkpoint": bad}), 422, "not a checkpoint name")
    assert client.get("/options").json()["sd_model_checkpoint"] == titles["tiny-depth"]


def test_override_settings_checkpoint_is_restored(client, titles):
    r = client.post("/txt2img", json={"width": W, "height": H, "steps": 2,
                                      "override_settings": {"sd_model_checkpoint": "tiny-sd2"}})  # fmt: skip
    assert r.status_code == 200, r.text
    assert json.loads(r.json()["info"])["sd_model_name"] == "tiny-sd2"
    assert client.get("/options").json()["sd_model_checkpoint"] == titles["tiny-depth"]
    r = client.post("/txt2img", json={"width": W, "height": H, "steps": 2, "override_settings_restore_afterwards": False,
                                      "override_settings": {"sd_model_checkpoint": "tiny-sd2"}})  # fmt: skip
    assert client.get("/options").json()["sd_model_checkpoint"] == titles["tiny-sd2"]


def test_override_settings_errors_and_unknown_keys(client):
    for bad in ("../../etc/passwd", "/abs/x.safetensors"):
        r = client.post("/img2img", json=body(override_settings={"sd_model_checkpoint": bad}))
        assert_error(r, 422, "not a checkpoint name")
    assert_error(client.post("/img2img", json=body(override_settings={"sd_model_checkpoint": "nope"})), 404, "nope")
    assert_error(client.post("/img2img", json=body(override_settings={"CLIP_stop_at_last_layers": 99})), 422,
                 "override_settings.CLIP_stop_at_last_layers")  # fmt: skip
    r = client.post("/img2img", json=body(override_settings={"eta_noise_seed_delta": 31337, "CLIP_stop_at_last_layers": 2}))
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])  # an A1111 option without an effect here (sd_vae is a real setting now)
    assert info["clip_skip"] == 2 and "eta_noise_seed_delta" in " ".join(info["warnings"])


def test_unload_and_reload_checkpoint(client, server, titles):
    assert client.post("/unload-checkpoint").json() == {}
    assert server.app.service.current_checkpoint() is None
    assert client.post("/reload-checkpoint").json() == {}
    assert server.app.service.current_checkpoint() is not None
    assert client.post("/img2img", json=body()).status_code == 200


# --- lists and info ------------------------------------------------------------------------------


def test_samplers_and_schedulers(client):
    items = client.get("/samplers").json()
    assert [s["name"] for s in items] == samplers.sampler_names()
    assert all(set(s) == {"name", "aliases", "options"} for s in items)
    euler_a = next(s for s in items if s["name"] == "Euler a")
    assert "k_euler_a" in euler_a["aliases"]
    sched = client.get("/schedulers").json()
    assert [s["label"] for s in sched] == samplers.SCHEDULE_TYPES
    assert all(set(s) == {"name", "label", "aliases", "default_rho", "need_inner_model"} for s in sched)
    assert next(s for s in sched if s["label"] == "Karras")["default_rho"] == 7.0
    assert next(s for s in sched if s["label"] == "Uniform")["need_inner_model"] is True  # A1111's records
    assert next(s for s in sched if s["label"] == "SGM Uniform")["aliases"] == ["SGMUniform"]
    assert next(s for s in items if s["name"] == "DPM++ 2M")["options"]["scheduler"] == "karras"
    assert "scheduler" not in euler_a["options"]  # A1111 names no default schedule for Euler a


def test_png_info(client):
    out = client.post("/img2img", json=body()).json()
    text = json.loads(out["info"])["infotexts"][0]
    r = client.post("/png-info", json={"image": out["images"][0]})
    assert r.status_code == 200
    data = r.json()
    assert data["info"] == text and data["parameters"]["Steps"] == "4" and data["parameters"]["Prompt"] == "a house"
    plain = client.post("/png-info", json={"image": img_b64()}).json()
    assert plain["info"] == "" and plain["parameters"] == {}
    assert_error(client.post("/png-info", json={"image": b64(b"not a png")}), 422, "image")


def test_cmd_flags_memory_scripts_docs(client, server):
    flags = client.get("/cmd-flags").json()
    assert flags["nowebui"] is True and flags["api"] is True and flags["port"] == server.port
    mem = client.get("/memory").json()
    assert mem["ram"]["total"] > 0 and "cuda" in mem
    docs = httpx.get(server.url + "/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    schema = httpx.get(server.url + "/openapi.json").json()
    assert "/sdapi/v1/img2img" in schema["paths"] and "/sdapi/v1/depth" in schema["paths"]
    props = schema["components"]["schemas"]["StableDiffusionImg2ImgProcessingAPI"]["properties"]
    assert {"depth_image", "depth_invert", "init_images", "mask_blur", "alwayson_scripts"} <= set(props)


# --- progress, interrupt, skip -------------------------------------------------------------------


def test_progress_idle_shape(client):
    p = client.get("/progress").json()
    assert set(p) == {"progress", "eta_relative", "state", "current_image", "textinfo", "current_task"}
    assert p["progress"] == 0 and p["current_image"] is None
    assert set(p["state"]) >= {"skipped", "interrupted", "job", "job_count", "job_no", "sampling_step",
                               "sampling_steps", "job_timestamp"}  # fmt: skip
    assert client.post("/interrupt").json() == {} and client.post("/skip").json() == {}


def _run_in_thread(fn) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def target():
        out["response"] = fn()

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, out


def test_progress_with_preview_then_interrupt(server):
    long_job = body(steps=60, denoising_strength=1.0, n_iter=20)
    with (
        httpx.Client(base_url=server.url + "/sdapi/v1", timeout=120) as c1,
        httpx.Client(base_url=server.url + "/sdapi/v1", timeout=10) as c2,
    ):
        t0 = time.time()
        thread, out = _run_in_thread(lambda: c1.post("/img2img", json=long_job))
        seen, preview, no_preview = None, None, None
        deadline = time.time() + 60
        while time.time() < deadline and not (seen and preview):
            p = c2.get("/progress").json()
            if p["progress"] > 0:
                seen = p
                if p["current_image"]:
                    preview = p["current_image"]
                    no_preview = c2.get("/progress", params={"skip_current_image": "true"}).json()
            time.sleep(0.05)
        assert seen is not None and preview is not None, "no progress / live preview seen while the job ran"
        assert seen["state"]["job_count"] == 20 and seen["state"]["sampling_steps"] > 0
        assert seen["current_task"] and seen["eta_relative"] >= 0
        assert decode(preview).format == "PNG" and no_preview["current_image"] is None
        assert c2.post("/interrupt").json() == {}
        thread.join(60)
        assert not thread.is_alive()
    r = out["response"]
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert info["interrupted"] is True and len(r.json()["images"]) < 20
    assert time.time() - t0 < 40


def test_skip_moves_to_the_next_batch(server):
    with (
        httpx.Client(base_url=server.url + "/sdapi/v1", timeout=120) as c1,
        httpx.Client(base_url=server.url + "/sdapi/v1", timeout=10) as c2,
    ):
        thread, out = _run_in_thread(lambda: c1.post("/img2img", json=body(steps=60, denoising_strength=1.0, n_iter=2)))
        deadline = time.time() + 60
        while time.time() < deadline:
            p = c2.get("/progress").json()
            if p["state"]["sampling_step"] > 0 and p["state"]["job_no"] == 0:
                break
            time.sleep(0.02)
        assert c2.post("/skip").json() == {}
        thread.join(60)
    data = out["response"].json()
    # A1111's Skip: the image being made is finished at the step it reached and kept, the next one runs
    assert len(data["images"]) == 2 and json.loads(data["info"])["all_seeds"] == [11, 12]  # seed 11 (body()), +1


# --- concurrency ---------------------------------------------------------------------------------


def test_concurrent_clients_get_their_own_answers(server):
    requests_ = [body(seed=100 + i, prompt=f"house {i}", steps=3) for i in range(8)]
    results: dict[int, np.ndarray] = {}
    errors = []

    def worker(indices):
        with httpx.Client(base_url=server.url + "/sdapi/v1", timeout=120) as c:
            for i in indices:
                r = c.post("/img2img", json=requests_[i])
                if r.status_code != 200:
                    errors.append(r.text)
                    continue
                info = json.loads(r.json()["info"])
                if (info["seed"], info["prompt"]) != (100 + i, f"house {i}"):
                    errors.append(f"request {i} got the answer for seed {info['seed']}, prompt {info['prompt']!r}")
                results[i] = pixels(r.json()["images"][0])

    threads = [threading.Thread(target=worker, args=([2 * k, 2 * k + 1],)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(results) == 8
    with httpx.Client(base_url=server.url + "/sdapi/v1", timeout=120) as c:
        for i, req in enumerate(requests_):
            alone = pixels(c.post("/img2img", json=req).json()["images"][0])
            assert np.array_equal(alone, results[i]), f"request {i} differs when run concurrently"
    assert len({r.tobytes() for r in results.values()}) == 8


# --- errors --------------------------------------------------------------------------------------


def test_error_paths(client):
    assert_error(client.post("/img2img", json=body(sampler_name="Nope")), 400, "Sampler not found")
    unknown = client.post("/img2img", json=body(scheduler="Nope"))  # A1111 1.9+: falls back to Automatic
    assert unknown.status_code == 200 and any("'Nope'" in w for w in json.loads(unknown.json()["info"])["warnings"])
    assert_error(client.post("/img2img", json=body(init_images=None)), 404, "Init image not found")
    assert_error(client.post("/img2img", json=body(init_images=[])), 404, "Init image not found")
    assert_error(client.post("/img2img", json=body(init_images=[b64(b"garbage bytes")])), 422, "init_images[0]")
    assert_error(client.post("/img2img", json=body(init_images=["%%%not base64%%%"])), 422, "base64")
    assert_error(client.post("/img2img", json=body(init_images=["https://example.com/a.png"])), 422, "not fetched")
    assert_error(client.post("/img2img", json=body(mask=b64(png(half_mask(64, 64))))), 422, "mask", "must match")
    assert_error(client.post("/img2img", json=body(mask=b64(png(np.zeros((H, W), np.uint8))))), 422, "mask", "empty")
    assert_error(client.post("/img2img", json=body(depth_image=b64(b"nope"))), 422, "depth_image")
    assert_error(client.post("/img2img", json=body(width=100)), 422, "width", "multiple of 8")
    assert_error(client.post("/img2img", json=body(steps=0)), 422, "steps")
    assert_error(client.post("/img2img", json=body(denoising_strength=2)), 422, "denoising_strength")
    assert_error(client.post("/img2img", json=body(resize_mode=9)), 422, "resize_mode")
    assert_error(client.post("/img2img", json=body(script_name="No Such Script")), 422, "not found")
    assert_error(client.post("/img2img", json=body(steps="many")), 422, "steps")
    assert_error(client.post("/img2img", json=body(alwayson_scripts={"x": [1]})), 422, "alwayson_scripts")
    r = client.post("/img2img", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422


# (payload, the status it must get): odd input is either refused with a 4xx naming it, or served.
BAD_PAYLOADS = [
    ({"init_images": ["data:image/png;base64,"]}, 422),
    ({"init_images": [""]}, 422),
    ({"init_images": [img_b64()], "mask": ""}, 200),  # an empty mask string means "no mask", as in A1111
    ({"init_images": [img_b64()], "mask": "=="}, 422),
    ({"init_images": [img_b64()], "depth_image": b64(b"\x89PNG\r\n\x1a\n")}, 422),
    ({"init_images": [img_b64()], "width": 8, "height": 64}, 422),
    ({"init_images": [img_b64()], "width": 100000, "height": 100000}, 422),
    ({"init_images": [img_b64()], "batch_size": 1000}, 422),
    ({"init_images": [img_b64()], "seed": -5}, 422),
    ({"init_images": [img_b64()], "cfg_scale": 1e308}, 422),
    ({"init_images": [img_b64()], "inpainting_fill": "purple"}, 422),
    ({"init_images": [img_b64()], "inpainting_mask_invert": 7}, 422),
    ({"init_images": [img_b64()], "override_settings": {"sd_model_checkpoint": 5}}, 422),
    ({"init_images": [img_b64()], "override_settings": {"samples_format": 3}}, 422),
    ({"init_images": [img_b64()], "script_name": "x", "script_args": [1, 2]}, 422),
    ({"init_images": [img_b64()], "eta": 5}, 422),
    ({"init_images": [img_b64()], "prompt": 5}, 422),
    ({"init_images": "not a list"}, 422),
    ({"init_images": [img_b64()], "seed_resize_from_w": 13, "seed_resize_from_h": 64}, 422),
    ({"init_images": [img_b64()], "sampler_name": ""}, 200),  # empty: falls back to sampler_index
    ({"init_images": [b64(png(np.zeros((1, 1, 3), np.uint8)))]}, 200),  # a 1x1 image is resized up
    (
        {"init_images": [b64(png(np.zeros((H, W), np.uint16)))], "depth_image": b64(png(np.zeros((2, 3), np.uint8)))},
        200,
    ),
]


@pytest.mark.parametrize(("payload", "status"), BAD_PAYLOADS, ids=range(len(BAD_PAYLOADS)))
def test_odd_input_is_a_4xx_or_served_never_a_500(client, payload, status):
    r = client.post("/img2img", json={"width": W, "height": H, "steps": 2, **payload})
    assert r.status_code == status, r.text
    if status != 200:
        assert isinstance(r.json()["detail"], str | list) and r.json()["detail"]
    else:
        assert decode(r.json()["images"][0]).size == (W, H)


def test_no_checkpoint_available(tmp_path):
    populate(tmp_path)
    with running_server(tmp_path, "--nowebui") as srv, httpx.Client(base_url=srv.url + "/sdapi/v1", timeout=60) as c:
        assert c.get("/sd-models").json() == []
        assert_error(c.post("/img2img", json=body()), 409, "no checkpoint")
        assert_error(c.post("/txt2img", json={"width": W, "height": H}), 409, "no checkpoint")
        assert_error(c.post("/depth", json={"image": img_b64()}), 409, "no checkpoint")
        assert_error(c.post("/reload-checkpoint"), 409, "no checkpoint")
        assert_error(c.post("/options", json={"sd_model_checkpoint": "tiny-depth"}), 404, "not found")
        assert c.get("/options").json()["sd_model_checkpoint"] == ""
        assert c.get("/progress").status_code == 200


def test_auth_and_body_limit(tmp_path, depth_ckpt):
    populate(tmp_path, depth_ckpt)
    flags = ("--nowebui", "--api-auth", "alice:s3cret,bob:pa:ss", "--max-body-mb", "0.05")
    with running_server(tmp_path, *flags) as srv:
        url = srv.url + "/sdapi/v1"
        for path in ("/sd-models", "/progress", "/options"):
            r = httpx.get(url + path)
            assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")
            assert r.json()["detail"]
            assert httpx.get(url + path, auth=("alice", "wrong")).status_code == 401
            assert httpx.get(url + path, auth=("mallory", "s3cret")).status_code == 401
            assert httpx.get(url + path, auth=("alice", "s3cret")).status_code == 200
            assert httpx.get(url + path, auth=("bob", "pa:ss")).status_code == 200
        assert httpx.post(url + "/img2img", json=body()).status_code == 401
        assert httpx.get(srv.url + "/docs").status_code == 401
        assert httpx.get(srv.url + "/openapi.json").status_code == 401
        assert httpx.get(srv.url + "/openapi.json", auth=("alice", "s3cret")).status_code == 200
        assert httpx.get(url + "/sd-models", headers={"authorization": "Basic !!!"}).status_code == 401
        flags_seen = httpx.get(url + "/cmd-flags", auth=("alice", "s3cret")).json()
        assert flags_seen["api_auth"] == "***"

        big = body(init_images=[b64(np.random.bytes(80_000))])
        r = httpx.post(url + "/img2img", json=big, auth=("alice", "s3cret"), timeout=30)
        assert_error(r, 413, "too large", "--max-body-mb")

        def chunks():  # no Content-Length: the limit counts the streamed bytes
            yield b'{"init_images": ["'
            for _ in range(10):
                yield b"A" * 10_000
            yield b'"]}'

        r = httpx.post(url + "/img2img", content=chunks(), auth=("alice", "s3cret"), timeout=30,
                       headers={"content-type": "application/json"})  # fmt: skip
        assert_error(r, 413, "too large")
        small = body(init_images=[img_b64(0, 64, 64)], width=64, height=64)
        assert httpx.post(url + "/img2img", json=small, auth=("alice", "s3cret"), timeout=60).status_code == 200


def _stub_app(**flags):
    """mount_api on a bare FastAPI app with a stub service (only what the tested routes call)."""
    from fastapi import FastAPI

    from modules.app import options as cmd_args
    from modules.frontends.api import mount_api

    class StubService:
        def memory(self):
            raise RuntimeError("boom\nsecond line")

    app = FastAPI()
    ui = FastAPI()  # stands in for the Gradio app mounted at "/" (it has its own log-in)
    ui.add_api_route("/upload", lambda: {"ok": True}, methods=["POST"])
    app.add_api_route("/extension-route", lambda: {"ok": True}, methods=["GET"])
    app.mount("/ui", ui)
    argv = ["--nowebui"] + [x for k, v in flags.items() for x in (f"--{k.replace('_', '-')}", v)]
    mount_api(app, StubService(), cmd_args.parse_args(argv))
    return app


def test_mount_api_leaves_other_paths_alone():
    """The body limit is for the API, auth for all but the mounted web UI, which keeps its own rules."""
    from fastapi.testclient import TestClient

    with TestClient(_stub_app(api_auth="a:b", max_body_mb="0.01")) as c:
        r = c.post("/ui/upload", content=b"x" * 50_000)
        assert r.status_code == 200 and "x-process-time" in r.headers
        assert c.post("/sdapi/v1/interrupt").status_code == 401
        assert c.get("/extension-route").status_code == 401  # routes outside the UI need the log-in too
        assert c.get("/extension-route", auth=("a", "b")).json() == {"ok": True}


def test_unexpected_errors_are_a_short_json_500_and_logged(caplog):
    from fastapi.testclient import TestClient

    with TestClient(_stub_app(), raise_server_exceptions=False) as c, caplog.at_level("ERROR"):
        r = c.get("/sdapi/v1/memory")
    assert r.status_code == 500
    assert r.json() == {"detail": "internal error: RuntimeError: boom (see the server log)", "error": "RuntimeError"}
    record = next(rec for rec in caplog.records if "API error" in rec.getMessage())
    assert "/sdapi/v1/memory" in record.getMessage() and record.exc_info is not None
