"""A1111's listing and option endpoints, and X/Y/Z plot with A1111's positional script_args.

Request shapes are those of A1111's own API tests (test_options_write, the listing GETs), of the
``webuiapi`` client (its get_* methods), and of clients that drive X/Y/Z plot by position.
"""

from __future__ import annotations

import base64
import io
import json
import logging

import numpy as np
import pytest
import webuiapi
from PIL import Image

from modules.core.a1111_options import A1111_OPTIONS
from modules.core.settings import Settings
from modules.frontends.api import a1111_lists, script_args
from tests.helpers.imaging import b64, png
from tests.helpers.server import populate

pytestmark = pytest.mark.usefixtures("depth_model_current")
W, H = 64, 64


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, depth_ckpt, sd2_ckpt):
    d = tmp_path_factory.mktemp("data")
    populate(d, depth_ckpt, sd2_ckpt)
    for folder, name in (("RealESRGAN", "RealESRGAN_x2plus.pth"), ("ESRGAN", "4x_foolhardy_Remacri.pth")):
        (d / "models" / folder).mkdir(parents=True)
        (d / "models" / folder / name).write_bytes(b"not loaded by a listing")
    return d


def picture(seed: int = 0) -> np.ndarray:
    rng = np.random.RandomState(seed)
    return rng.randint(0, 255, (H, W, 3)).astype(np.uint8)


def pixels(s: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(s))).convert("RGB"))


# --- listings ------------------------------------------------------------------------------------

SHAPES = {  # A1111's modules/api/models.py item fields
    "/upscalers": {"name", "model_name", "model_path", "model_url", "scale"},
    "/latent-upscale-modes": {"name"},
    "/realesrgan-models": {"name", "path", "scale"},
}
EMPTY = ["/sd-vae", "/sd-modules", "/hypernetworks", "/face-restorers", "/prompt-styles", "/loras"]


@pytest.mark.parametrize("path", list(SHAPES))
def test_listings_with_content_have_a1111_item_fields(client, path):
    items = client.get(path).json()
    assert items and all(set(i) == SHAPES[path] for i in items), items


def test_upscalers_list_the_builtins_and_the_model_files(client):
    items = {i["name"]: i for i in client.get("/upscalers").json()}
    assert list(items)[:3] == ["None", "Lanczos", "Nearest"]
    assert items["4x_foolhardy_Remacri"]["scale"] == 4.0 and items["4x_foolhardy_Remacri"]["model_name"] == "ESRGAN"
    assert items["RealESRGAN_x2plus"]["model_path"].endswith("RealESRGAN_x2plus.pth")
    modes = [m["name"] for m in client.get("/latent-upscale-modes").json()]
    assert modes[0] == "Latent" and "Latent (bicubic antialiased)" in modes


def test_realesrgan_models_are_the_files_in_models_realesrgan(client, data_dir):
    path = (data_dir / "models" / "RealESRGAN" / "RealESRGAN_x2plus.pth").resolve()
    assert client.get("/realesrgan-models").json() == [{"name": "RealESRGAN_x2plus", "path": str(path), "scale": 2}]


@pytest.mark.parametrize("path", EMPTY)
def test_listings_not_available_here_answer_empty_lists(client, path):
    r = client.get(path)
    assert r.status_code == 200 and r.json() == []


def test_embeddings_answer_a1111s_loaded_and_skipped(client):
    assert client.get("/embeddings").json() == {"loaded": {}, "skipped": {}}


def test_webuiapi_listing_methods(server):
    api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port)
    assert [u["name"] for u in api.get_upscalers()][:3] == ["None", "Lanczos", "Nearest"]
    assert "Latent" in [m["name"] for m in api.get_latent_upscale_modes()]
    assert [m["name"] for m in api.get_realesrgan_models()] == ["RealESRGAN_x2plus"]
    for method in (api.get_sd_vae, api.get_hypernetworks, api.get_face_restorers, api.get_prompt_styles,
                   api.get_loras):  # fmt: skip
        assert method() == []
    assert api.get_embeddings() == {"loaded": {}, "skipped": {}}


# --- options -------------------------------------------------------------------------------------


def test_get_options_has_a1111_names_with_their_defaults(client):
    opts = client.get("/options").json()
    assert opts["send_seed"] is True and opts["sd_vae"] == "Automatic" and opts["jpeg_quality"] == 80
    assert opts["CLIP_stop_at_last_layers"] == 1 and opts["samples_format"] == "png"  # real settings
    assert opts["show_progress_every_n_steps"] == Settings().show_progress_every_n_steps  # ours wins over A1111's 10
    assert "a1111_options" not in opts
    assert set(A1111_OPTIONS) <= set(opts)


def test_a1111s_test_options_write(client, data_dir):
    """A1111's own test: read send_seed, write the opposite, read it back; it is persisted in config.json."""
    before = client.get("/options").json()["send_seed"]
    r = client.post("/options", json={"send_seed": not before})
    assert r.status_code == 200, r.text
    assert client.get("/options").json()["send_seed"] is (not before)
    saved = json.loads((data_dir / "config.json").read_text())
    assert saved["a1111_options"]["send_seed"] is (not before)
    assert Settings.load(data_dir / "config.json").a1111_options["send_seed"] is (not before)
    client.post("/options", json={"send_seed": before})  # back to the default: no longer stored
    assert "send_seed" not in json.loads((data_dir / "config.json").read_text())["a1111_options"]


def test_options_mixing_real_and_a1111_names(client):
    r = client.post("/options", json={"CLIP_stop_at_last_layers": 2, "sd_vae": "None", "eta_noise_seed_delta": 31337})
    assert r.status_code == 200, r.text
    opts = client.get("/options").json()
    assert (opts["CLIP_stop_at_last_layers"], opts["sd_vae"], opts["eta_noise_seed_delta"]) == (2, "None", 31337)
    client.post("/options", json={"CLIP_stop_at_last_layers": 1, "sd_vae": "Automatic", "eta_noise_seed_delta": 0})


def test_posting_back_every_option_changes_nothing(client, data_dir):
    opts = client.get("/options").json()
    assert client.post("/options", json=opts).status_code == 200
    assert client.get("/options").json() == opts
    assert json.loads((data_dir / "config.json").read_text())["a1111_options"] == {}  # defaults are not stored


BAD_OPTIONS = [
    ({"send_seed": "yes"}, "send_seed"),
    ({"jpeg_quality": 80.5}, "jpeg_quality"),
    ({"sd_vae": "x" * 5000}, "sd_vae"),
    ({"quicksettings_list": ["sd_vae"] * 100}, "quicksettings_list"),
    ({"quicksettings_list": ["x" * 1000]}, "quicksettings_list"),
    ({"img_downscale_threshold": 1e300}, "img_downscale_threshold"),
    ({"no_such_option": 1}, "no_such_option"),
    ({"a1111_options": {"send_seed": False}}, "a1111_options"),  # internal: not an option name
]


@pytest.mark.parametrize(("payload", "field"), BAD_OPTIONS, ids=[f for _, f in BAD_OPTIONS])
def test_bad_a1111_option_values_are_a_422_naming_the_option(client, payload, field):
    before = client.get("/options").json()
    r = client.post("/options", json=payload)
    assert r.status_code == 422 and field in r.json()["detail"], r.text
    assert client.get("/options").json() == before


def test_options_with_no_effect_are_logged_once(caplog):
    writer = a1111_lists.OptionWriter()
    with caplog.at_level(logging.INFO, logger="modules.frontends.api.a1111_lists"):
        for _ in range(3):
            values = writer.values({"send_seed": False, "samples_format": "jpg"}, Settings())
    assert values == {"samples_format": "jpg", "a1111_options": {"send_seed": False}}
    assert sum("send_seed" in r.message for r in caplog.records) == 1


def test_a1111_config_json_is_read(tmp_path):
    """A flat A1111 config.json: our names applied, A1111's kept, others dropped."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"samples_format": "jpg", "send_seed": False, "sd_vae": "a.pt", "bogus": 1}))
    s = Settings.load(path)
    assert s.samples_format == "jpg" and s.a1111_options == {"send_seed": False}
    assert s.sd_vae == "a.pt"  # a real setting now (issue 17): ours win over the stored A1111 names


# --- X/Y/Z plot by position ------------------------------------------------------------------------


def test_axis_indices_follow_a1111s_lists_per_tab():
    txt, img = script_args.axis_labels("txt2img"), script_args.axis_labels("img2img")
    assert (txt[1], txt[7], txt[9], txt[11], txt[17], txt[24], txt[25]) == (
        "Seed", "Prompt S/R", "Sampler", "Checkpoint name", "Schedule type", "Clip skip", "Denoising")  # fmt: skip
    assert (img[5], img[6], img[9], img[10], img[16], img[22], img[24]) == (
        "CFG Scale", "Image CFG Scale", "Sampler", "Checkpoint name", "Schedule type", "Eta", "Denoising")  # fmt: skip


def xyz_positional(x_type: int, x_values: str, *, lone: bool = True, y_type: int = 0, y_values: str = "") -> list:
    """A1111 1.10's 18 arguments, as a client builds them."""
    return [x_type, x_values, [], y_type, y_values, [], 0, "", [], True, lone, False, False, False, False, False, 0,
            False]  # fmt: skip


def img2img(**extra):
    return {"init_images": [b64(png(picture()))], "width": W, "height": H, "steps": 2, "seed": 5, **extra}


def test_positional_xyz_equals_the_named_request(client):
    named = client.post("/img2img", json=img2img(script_name="X/Y/Z plot", script_args={
        "x_type": "Denoising", "x_values": "0.5,1.0", "y_type": "Seed", "y_values": "1,2"}))  # fmt: skip
    positional = client.post("/img2img", json=img2img(script_name="x/y/z plot",
                                                      script_args=xyz_positional(24, "0.5,1.0", y_type=1, y_values="1,2")))  # fmt: skip
    assert named.status_code == positional.status_code == 200, positional.text
    a, b = named.json()["images"], positional.json()["images"]
    assert len(a) == len(b) == 5  # the grid, then 2 x 2 cells
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(pixels(x), pixels(y))


def test_positional_xyz_without_lone_images_returns_only_the_grid(client):
    r = client.post("/img2img", json=img2img(script_name="X/Y/Z plot",
                                             script_args=xyz_positional(24, "0.5,1.0", lone=False)))  # fmt: skip
    assert r.status_code == 200 and len(r.json()["images"]) == 1


def test_positional_xyz_dropdown_values_and_sampler_axis(client):
    args = xyz_positional(9, "")
    args[2] = ["Euler", "DDIM"]  # A1111 reads an axis with choices from its dropdown unless csv_mode
    r = client.post("/img2img", json=img2img(script_name="X/Y/Z plot", script_args=args))
    assert r.status_code == 200, r.text
    infotexts = json.loads(r.json()["info"])["infotexts"]
    assert "Sampler: Euler," in infotexts[1] and "Sampler: DDIM," in infotexts[2]


def test_positional_xyz_warns_about_what_it_cannot_do(client):
    args = xyz_positional(24, "0.5")
    args[12], args[16] = True, 10  # no_fixed_seeds, margin_size
    r = client.post("/img2img", json=img2img(script_name="X/Y/Z plot", script_args=args))
    warnings = json.loads(r.json()["info"])["warnings"]
    assert any("no_fixed_seeds" in w and "margin_size" in w for w in warnings), warnings


@pytest.mark.parametrize(("x_type", "needle"), [(22, "'Eta'"), (60, "outside"), (True, "axis index")])
def test_positional_xyz_refuses_axes_we_do_not_have(client, x_type, needle):
    r = client.post("/img2img", json=img2img(script_name="X/Y/Z plot", script_args=xyz_positional(x_type, "1")))
    assert r.status_code == 422 and needle in r.json()["detail"], r.text


def test_positional_args_for_other_scripts_stay_refused(client):
    r = client.post("/img2img", json=img2img(script_name="no such script", script_args=[1, 2]))
    assert r.status_code == 422
