"""ControlNet-depth requests drive the SD2 depth model: the sd-webui-controlnet extension's endpoints and units.

Request shapes follow the clients' documented payloads: a Blender add-on (lists models and modules,
then sends its Z pass as a unit image with module "none" or a depth preprocessor), the ``webuiapi``
client's ControlNetUnit (alwayson_scripts "ControlNet"), the extension's legacy positional form and
the old top-level ``controlnet_units``.
"""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import webuiapi
from PIL import Image

from modules.frontends.api import controlnet
from tests.helpers.imaging import b64, png

pytestmark = pytest.mark.usefixtures("depth_model_current")
W, H = 64, 64


@pytest.fixture(scope="module")
def cn(server):
    import httpx

    with httpx.Client(base_url=server.url + "/controlnet", timeout=120) as c:
        yield c


def picture(seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 255, (H, W, 3)).astype(np.uint8)


def z_pass() -> str:
    """A 16-bit depth render (near at the left), as a Blender add-on exports it."""
    ramp = np.tile(np.linspace(65535, 0, W), (H, 1)).astype(np.uint16)
    return b64(png(ramp))


def pixels(s: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(s))))


def generate(client, path: str, **extra) -> dict:
    body = {"width": W, "height": H, "steps": 2, "seed": 11, "prompt": "a castle", **extra}
    if path == "/img2img":
        body.setdefault("init_images", [b64(png(picture()))])
    r = client.post(path, json=body)
    assert r.status_code == 200, r.text[:500]
    data = r.json()
    return {"image": pixels(data["images"][0]), "warnings": json.loads(data["info"])["warnings"], "data": data}


def unit(**fields) -> dict:
    return {"alwayson_scripts": {"controlnet": {"args": [fields]}}}


# --- the /controlnet endpoints -------------------------------------------------------------------


def test_version_settings_and_lists(cn):
    assert cn.get("/version").json() == {"version": 3}
    assert cn.get("/model_list").json() == {"model_list": [controlnet.MODEL_NAME]}
    body = cn.get("/module_list").json()
    assert body["module_list"][0] == "none"
    assert {"depth", "depth_leres", "depth_leres++", "depth_zoe", "depth_anything"} <= set(body["module_list"])
    assert set(body["module_detail"]) == set(body["module_list"])
    assert "depth_midas" in cn.get("/module_list", params={"alias_names": True}).json()["module_list"]
    assert cn.get("/settings").json() == {"control_net_unit_count": 1}


def test_detect_equals_the_depth_endpoint(cn, client):
    image = b64(png(picture(3)))
    r = cn.post("/detect", json={"controlnet_module": "depth_midas", "controlnet_input_images": [image, image]})
    assert r.status_code == 200 and r.json()["info"] == "Success"
    ours = pixels(client.post("/depth", json={"image": image}).json()["depth_image"])
    assert len(r.json()["images"]) == 2 and np.array_equal(pixels(r.json()["images"][0]), ours)


@pytest.mark.parametrize(("payload", "needle"), [
    ({"controlnet_module": "canny", "controlnet_input_images": ["x"]}, "canny"),
    ({"controlnet_module": "depth"}, "No image selected"),
    ({"controlnet_module": "depth", "controlnet_input_images": ["not base64!"]}, "controlnet_input_images[0]"),
])  # fmt: skip
def test_detect_refusals(cn, payload, needle):
    r = cn.post("/detect", json=payload)
    assert r.status_code == 422 and needle in r.json()["detail"], r.text


def test_webuiapi_controlnet_methods(server):
    api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port)
    assert api.controlnet_version() == 3
    assert api.controlnet_model_list() == [controlnet.MODEL_NAME]
    assert "depth" in api.controlnet_module_list()
    out = api.controlnet_detect([Image.fromarray(picture(3))], module="depth")  # sends controlnet_images
    assert len(out.images) == 1 and out.images[0].size == (W, H)


# --- units driving the depth model ---------------------------------------------------------------


def test_blender_z_pass_with_module_none_is_the_depth_map(client):
    """txt2img with the add-on's unit equals txt2img with the same map as depth_image."""
    direct = generate(client, "/txt2img", depth_image=z_pass())
    via_unit = generate(client, "/txt2img", **unit(input_image=z_pass(), module="none", model=controlnet.MODEL_NAME,
                                                   weight=1.0, guidance_start=0.0, guidance_end=1.0))  # fmt: skip
    assert np.array_equal(direct["image"], via_unit["image"])
    assert np.array_equal(pixels(direct["data"]["depth_images"][0]), pixels(via_unit["data"]["depth_images"][0]))
    assert via_unit["warnings"] == []  # no "unknown extension controlnet", nothing ignored


def test_preprocessor_on_the_init_image_is_plain_depth2img(client):
    plain = generate(client, "/img2img")
    via_unit = generate(client, "/img2img", **unit(module="depth_midas", model="control_v11f1p_sd15_depth [cfd03158]",
                                                   weight=0.6, guidance_end=0.8, control_mode=2))  # fmt: skip
    assert np.array_equal(plain["image"], via_unit["image"])
    named = [w for w in via_unit["warnings"] if "controlnet unit 0" in w]
    assert named and all(f in named[0] for f in ("weight", "guidance_end", "control_mode")), via_unit["warnings"]


def test_preprocessor_on_another_image_runs_midas_on_that_image(client, cn):
    other = b64(png(picture(7)))
    depth = cn.post("/detect", json={"controlnet_module": "depth", "controlnet_input_images": [other]}).json()
    expected = generate(client, "/img2img", depth_image=depth["images"][0])
    via_unit = generate(client, "/img2img", **unit(image=other, module="depth_zoe", model="None"))
    plain = generate(client, "/img2img")
    assert np.array_equal(expected["image"], via_unit["image"])
    assert not np.array_equal(plain["image"], via_unit["image"])
    assert any("depth_zoe" in w and "MiDaS" in w for w in via_unit["warnings"])


def test_legacy_positional_units_and_other_keys_are_the_same_unit(client):
    reference = generate(client, "/txt2img", depth_image=z_pass())["image"]
    legacy = [True, "none", controlnet.MODEL_NAME, 1.0, z_pass(), 1, False, 512, 64, 64, 0.0, 1.0, False, False, 0]
    shapes = [
        {"alwayson_scripts": {"ControlNet": {"args": legacy}}},
        {"alwayson_scripts": {"CONTROLNET": {"args": [None, {"image": {"image": z_pass()}, "model": "t2i_depth"}]}}},
        {"controlnet_units": [{"input_image": z_pass(), "module": "none", "model": "depth"}]},
    ]
    for shape in shapes:
        assert np.array_equal(generate(client, "/txt2img", **shape)["image"], reference), shape


def test_webuiapi_controlnet_unit(server):
    api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port)
    depth = Image.fromarray(np.tile(np.linspace(255, 0, W), (H, 1)).astype(np.uint8))
    u = webuiapi.ControlNetUnit(image=depth, module="none", model=controlnet.MODEL_NAME, weight=0.5)
    # alwayson_scripts given: webuiapi would otherwise add the unit to its shared default dict, and every
    # later txt2img call of the process (other test modules' too) would send it again
    out = api.txt2img(prompt="a castle", width=W, height=H, steps=2, seed=11, controlnet_units=[u], alwayson_scripts={})
    warnings = out.info["warnings"]
    assert out.image.size == (W, H) and any("weight" in w for w in warnings), warnings


def test_disabled_units_are_ignored(client):
    plain = generate(client, "/img2img")
    off = generate(client, "/img2img", **unit(enabled=False, module="canny", model="control_canny"))
    assert np.array_equal(plain["image"], off["image"])


@pytest.mark.parametrize("fields", [
    {"module": "canny", "model": "control_v11p_sd15_canny"},
    {"module": "openpose", "model": "None"},
    {"module": "none", "model": "control_v11p_sd15_lineart"},
])  # fmt: skip
def test_non_depth_units_are_a_422_naming_the_unit(client, fields):
    r = client.post("/img2img", json={"init_images": [b64(png(picture()))], "width": W, "height": H, "steps": 2,
                                      **unit(**fields)})  # fmt: skip
    assert r.status_code == 422, r.text
    assert "controlnet unit 0" in r.json()["detail"] and "depth" in r.json()["detail"]


def test_depth_unit_or_depth_image_with_a_model_without_depth_is_a_422(client, server):
    server.app.service.select_checkpoint("tiny-sd2")
    base = {"init_images": [b64(png(picture()))], "width": W, "height": H, "steps": 2}
    r = client.post("/img2img", json={**base, **unit(module="depth_midas")})
    assert (
        r.status_code == 422 and "controlnet unit 0" in r.json()["detail"] and "depth checkpoint" in r.json()["detail"]
    )
    r = client.post("/img2img", json={**base, "depth_image": z_pass()})
    assert r.status_code == 422 and "depth_image" in r.json()["detail"]
    assert client.post("/img2img", json=base).status_code == 200  # without depth: plain img2img
