"""A1111-shaped requests for the Extras endpoints, png-info on their output, hires. fix and SD upscale over HTTP."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

from tests.helpers.imaging import png
from tests.helpers.server import populate, running_server
from tests.models.test_upscalers import tiny_esrgan

INFOTEXT = "a red house\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 40x32"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, depth_ckpt, sd2_ckpt):
    d = tmp_path_factory.mktemp("extras-data")
    populate(d, depth_ckpt, sd2_ckpt)
    (d / "models" / "ESRGAN").mkdir(parents=True)
    torch.save(tiny_esrgan(scale=2), d / "models" / "ESRGAN" / "2x_tiny.pth")  # (.pth: the safe unpickler)
    return d


@pytest.fixture(scope="module")
def client(data_dir):
    with running_server(data_dir, "--api") as srv:
        srv.app.service.select_checkpoint("tiny-sd2")
        with httpx.Client(base_url=srv.url + "/sdapi/v1", timeout=120) as c:
            yield c


def b64_picture(w: int = 40, h: int = 32, text: str | None = INFOTEXT) -> str:
    rng = np.random.RandomState(0)
    img = Image.fromarray(rng.randint(0, 255, (h, w, 3), dtype=np.uint8))
    meta = PngImagePlugin.PngInfo()
    if text:
        meta.add_text("parameters", text)
    buf = io.BytesIO()
    img.save(buf, "PNG", pnginfo=meta)
    return base64.b64encode(buf.getvalue()).decode()


def opened(b64: str) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(b64)))
    img.load()
    return img


def test_single_image_resize_by_keeps_infotext_and_adds_postprocessing(client):
    r = client.post("/extra-single-image", json={"image": b64_picture(), "upscaling_resize": 2, "upscaler_1": "Lanczos"})
    assert r.status_code == 200, r.text
    body = r.json()
    img = opened(body["image"])
    assert img.size == (80, 64)
    assert img.info["parameters"] == INFOTEXT
    assert img.info["postprocessing"] == "Postprocess upscale by: 2, Postprocess upscaler: Lanczos"
    assert "Postprocess upscaler: Lanczos" in body["html_info"]
    info = client.post("/png-info", json={"image": body["image"]}).json()  # PNG Info reads both texts
    assert info["info"] == INFOTEXT and info["parameters"]["Prompt"] == "a red house"
    assert info["items"]["postprocessing"].startswith("Postprocess upscale by: 2")


def test_single_image_model_upscaler_resize_to_with_crop_and_second_upscaler(client):
    body = {"image": b64_picture(), "resize_mode": 1, "upscaling_resize_w": 100, "upscaling_resize_h": 60,
            "upscaling_crop": True, "upscaler_1": "2x_tiny", "upscaler_2": "Nearest",
            "extras_upscaler_2_visibility": 0.5}  # fmt: skip
    r = client.post("/extra-single-image", json=body)
    assert r.status_code == 200, r.text
    img = opened(r.json()["image"])
    assert img.size == (100, 60)
    text = img.info["postprocessing"]
    assert "Postprocess upscale to: 100x60" in text and "Postprocess crop to: 100x60" in text
    assert "Postprocess upscaler: 2x_tiny" in text and "Postprocess upscaler 2: Nearest" in text


def test_none_upscaler_leaves_the_picture(client):
    r = client.post("/extra-single-image", json={"image": b64_picture(text=None), "upscaler_1": "None"})
    img = opened(r.json()["image"])
    assert img.size == (40, 32) and "postprocessing" not in img.info and r.json()["html_info"] == ""


def test_batch_images_image_list_of_data_and_name(client):
    items = [{"data": b64_picture(), "name": "a.png"}, {"data": b64_picture(24, 16), "name": "b.png"}]
    r = client.post("/extra-batch-images", json={"imageList": items, "upscaling_resize": 1.5, "upscaler_1": "Nearest"})
    assert r.status_code == 200, r.text
    sizes = [opened(x).size for x in r.json()["images"]]
    assert sizes == [(56, 48), (32, 24)]  # A1111: each side x1.5, rounded down to a multiple of 8


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"image": b64_picture(), "upscaler_1": "Nope"}, 404, "Nope"),
        ({"image": b64_picture(), "upscaler_1": "Lanczos", "upscaling_resize": 0}, 422, "upscaling_resize"),
        ({"image": b64_picture(), "upscaler_1": "Lanczos", "gfpgan_visibility": 1}, 422, "face restoration"),
        ({"image": "not base64!", "upscaler_1": "Lanczos"}, 422, "image"),
        ({"image": ""}, 422, "image"),
    ],
)
def test_bad_extras_requests_get_a_reason(client, body, status, field):
    r = client.post("/extra-single-image", json=body)
    assert r.status_code == status and field in r.text


def test_batch_without_images_is_refused(client):
    r = client.post("/extra-batch-images", json={"imageList": []})
    assert r.status_code == 422 and "imageList" in r.text


def test_txt2img_hires_fix_over_the_api(client):
    body = {"prompt": "x", "width": 64, "height": 64, "steps": 2, "seed": 1, "enable_hr": True, "hr_scale": 1.5,
            "hr_upscaler": "Latent", "denoising_strength": 0.5, "hr_second_pass_steps": 1}  # fmt: skip
    r = client.post("/txt2img", json=body)
    assert r.status_code == 200, r.text
    assert opened(r.json()["images"][0]).size == (96, 96)
    infotext = r.json()["info"]
    assert "Hires upscale: 1.5" in infotext and "Hires steps: 1" in infotext
    bad = client.post("/txt2img", json={**body, "hr_upscaler": "Nope"})
    assert bad.status_code == 422 and "hr_upscaler" in bad.text


def test_img2img_sd_upscale_with_a1111s_positional_script_args(client):
    body = {"init_images": [base64.b64encode(png(np.full((40, 48, 3), 120, np.uint8))).decode()], "width": 64,
            "height": 64, "steps": 2, "seed": 1, "denoising_strength": 0.3, "script_name": "sd upscale",
            "script_args": ["", 16, "Lanczos", 2.0]}  # fmt: skip
    r = client.post("/img2img", json=body)
    assert r.status_code == 200, r.text
    assert opened(r.json()["images"][0]).size == (96, 80)
    assert "SD upscale upscaler: Lanczos" in r.json()["info"]
