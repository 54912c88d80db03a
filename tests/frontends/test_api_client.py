"""An existing A1111 client, unchanged: the ``webuiapi`` package from PyPI against our server.

If these pass, scripts and add-ons written against A1111 with that client work against us.
"""

from __future__ import annotations

import base64
import io
import threading
import time

import numpy as np
import pytest
import webuiapi
from PIL import Image

from tests.helpers.ldm_layout import write_checkpoint
from tests.helpers.server import populate, running_server

W, H = 96, 64


def picture(seed: int = 0, w: int = W, h: int = H) -> Image.Image:
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], -1)
    return Image.fromarray(np.clip(base + rng.randint(-20, 20, (h, w, 3)), 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def server(data_dir):
    with running_server(data_dir, "--nowebui") as srv:
        yield srv


@pytest.fixture
def api(server) -> webuiapi.WebUIApi:
    server.app.service.select_checkpoint("tiny-depth")
    return webuiapi.WebUIApi(host="127.0.0.1", port=server.port)


def test_img2img(api):
    result = api.img2img(images=[picture()], prompt="a red house", width=W, height=H, steps=4, seed=3,
                         denoising_strength=0.6, batch_size=2)  # fmt: skip
    assert len(result.images) == 2
    for img, text in zip(result.images, result.info["infotexts"], strict=True):
        assert img.size == (W, H)
        assert img.info["parameters"] == text and text.startswith("a red house\n")
    assert result.info["all_seeds"] == [3, 4] and result.info["sampler_name"] == "Euler a"
    assert result.parameters["prompt"] == "a red house" and result.parameters["init_images"] is None
    assert "Denoising strength: 0.6" in result.info["infotexts"][0]
    assert "Schedule type" not in result.info["infotexts"][0]  # the client's "automatic" is Automatic
    assert result.info["scheduler"] == "Automatic"


@pytest.mark.parametrize("inpaint_full_res", [False, True])
def test_inpainting_keeps_unmasked_pixels(api, inpaint_full_res):
    src = picture(5)
    mask = np.zeros((H, W), np.uint8)
    mask[16:48, 40:80] = 255
    result = api.img2img(images=[src], mask_image=Image.fromarray(mask), mask_blur=0, inpainting_fill=1,
                         inpaint_full_res=inpaint_full_res, denoising_strength=1.0, width=W, height=H, steps=4,
                         seed=7)  # fmt: skip
    out = np.asarray(result.image.convert("RGB"))
    keep = mask == 0
    assert out.shape == (H, W, 3)
    assert np.array_equal(out[keep], np.asarray(src)[keep])
    assert not np.array_equal(out[~keep], np.asarray(src)[~keep])
    assert "Mask blur: 0" in result.info["infotexts"][0]


def test_models_refresh_and_switching(api, data_dir):
    titles = api.util_get_model_names()
    assert len(titles) == 2 and any("[" in t for t in titles)  # the loaded one has its hash; the other when loaded
    models = api.get_sd_models()
    assert {m["model_name"] for m in models} == {"tiny-depth", "tiny-sd2"}
    sd2 = next(m["title"] for m in models if m["model_name"] == "tiny-sd2")
    depth = next(m["title"] for m in models if m["model_name"] == "tiny-depth")
    assert api.util_get_current_model() == depth

    api.util_set_model(sd2)
    sd2 = api.util_get_current_model()  # hashed by its first load (A1111's lazy hashing)
    assert sd2.startswith("tiny-sd2.safetensors [") and sd2 in api.util_get_model_names()
    result = api.txt2img(prompt="x", width=W, height=H, steps=2, seed=1)
    assert result.info["sd_model_name"] == "tiny-sd2"
    api.set_options({"sd_model_checkpoint": depth})
    assert api.get_options()["sd_model_checkpoint"] == depth

    folder = data_dir / "models" / "Stable-diffusion"
    write_checkpoint(folder, "tiny-new", "sd2", seed=4)
    try:
        assert api.refresh_checkpoints() is None
        assert any(t.startswith("tiny-new.safetensors") for t in api.util_get_model_names())
    finally:
        for p in folder.glob("tiny-new.*"):
            p.unlink()
        api.refresh_checkpoints()
    assert len(api.util_get_model_names()) == 2


def test_samplers_and_schedulers(api):
    names = api.util_get_sampler_names()
    assert {"Euler a", "Euler", "DPM++ 2M", "DDIM", "UniPC"} <= set(names)
    assert "karras" in api.util_get_scheduler_names()
    result = api.img2img(images=[picture()], width=W, height=H, steps=4, sampler_name="DPM++ 2M", scheduler="Karras")
    assert result.info["sampler_name"] == "DPM++ 2M" and "Schedule type: Karras" in result.info["infotexts"][0]


def test_progress_while_a_job_runs_then_interrupt(server, api):
    runner = webuiapi.WebUIApi(host="127.0.0.1", port=server.port)  # its own session, in its own thread
    out = {}
    job = {"images": [picture()], "width": W, "height": H, "steps": 60, "denoising_strength": 1.0, "n_iter": 20}
    thread = threading.Thread(target=lambda: out.update(result=runner.img2img(**job)), daemon=True)
    t0 = time.time()
    thread.start()
    seen, preview = None, None
    deadline = time.time() + 60
    while time.time() < deadline and preview is None:
        p = api.get_progress()
        if p["progress"] > 0:
            seen = p
            preview = p["current_image"]
        time.sleep(0.05)
    assert seen is not None and preview, "no progress or live preview while the job ran"
    assert seen["state"]["job_count"] == 20 and 0 < seen["progress"] < 1
    assert Image.open(io.BytesIO(base64.b64decode(preview))).format == "PNG"
    api.interrupt()
    thread.join(60)
    assert not thread.is_alive()
    result = out["result"]
    assert result.info["interrupted"] is True and 0 < len(result.images) < 20
    assert time.time() - t0 < 40
    assert api.get_progress()["progress"] == 0


def test_png_info_and_cmd_flags(api):
    result = api.img2img(images=[picture()], width=W, height=H, steps=3, seed=9)
    info = api.png_info(result.image)
    assert info.info == result.info["infotexts"][0]
    assert api.get_cmd_flags()["nowebui"] is True
    assert api.get_memory()["ram"]["total"] > 0


def test_auth_with_the_client(tmp_path, depth_ckpt):
    populate(tmp_path, depth_ckpt)
    with running_server(tmp_path, "--nowebui", "--api-auth", "alice:s3cret") as srv:
        good = webuiapi.WebUIApi(host="127.0.0.1", port=srv.port, username="alice", password="s3cret")
        assert len(good.get_sd_models()) == 1
        assert good.img2img(images=[picture()], width=W, height=H, steps=2).image.size == (W, H)
        bad = webuiapi.WebUIApi(host="127.0.0.1", port=srv.port, username="alice", password="nope")
        with pytest.raises(RuntimeError, match="401"):
            bad.img2img(images=[picture()], width=W, height=H, steps=2)
