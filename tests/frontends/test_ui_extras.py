"""The Extras tab's glue (sub-tabs -> images, the app's own messages) and the Hires. fix accordion's fields."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from modules.core.settings import Settings
from modules.frontends.ui import extras_tab, forms, hires
from modules.generation import extras
from modules.models.upscaling import UpscalerRegistry


class StubService:
    """The Service's extras door over the real postprocessing (no worker, no saving)."""

    def __init__(self, root):
        self.registry = UpscalerRegistry(root)

    def upscaler_names(self):
        return self.registry.names()

    def hires_upscaler_names(self):
        return self.registry.hires_names()

    def extras(self, items, values, *, save=False):
        return extras.run(items, extras.ExtrasParams.from_values(values), extras.Upscaling(self.registry), Settings())


@pytest.fixture()
def pictures(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i, size in enumerate([(40, 32), (24, 16)]):
        Image.fromarray(np.full((size[1], size[0], 3), 60 * i, np.uint8)).save(folder / f"p{i}.png")
    return folder


VALUES = {"resize_mode": 0, "upscaling_resize": 2.0, "extras_upscaler_1": "Lanczos"}


def test_single_files_and_folder_sub_tabs(tmp_path, pictures):
    service = StubService(tmp_path)
    single, text = extras_tab.run_extras(service, "Single Image", str(pictures / "p0.png"), None, "", VALUES)
    assert single[0][0].shape == (64, 80, 3) and "Postprocess upscaler: Lanczos" in text
    files, _ = extras_tab.run_extras(service, "Batch Process", None, [str(p) for p in sorted(pictures.iterdir())], "",
                                     VALUES)  # fmt: skip
    assert [im.shape for im, _ in files] == [(64, 80, 3), (32, 48, 3)]
    folder, _ = extras_tab.run_extras(service, "Batch from Directory", None, None, str(pictures), VALUES)
    assert [name for _, name in folder] == ["p0.png", "p1.png"]


@pytest.mark.parametrize(
    ("mode", "image", "folder", "message"),
    [("Single Image", None, "", "upload an image"), ("Batch from Directory", None, "/no/such/dir", "not a folder")],
)
def test_missing_inputs_get_the_apps_message(tmp_path, mode, image, folder, message):
    gallery, text = extras_tab.run_extras(StubService(tmp_path), mode, image, None, folder, VALUES)
    assert gallery == [] and message in text


def test_unknown_upscaler_is_reported(tmp_path, pictures):
    _, text = extras_tab.run_extras(StubService(tmp_path), "Single Image", str(pictures / "p0.png"), None, "",
                                    {**VALUES, "extras_upscaler_1": "Nope"})  # fmt: skip
    assert "unknown upscaler" in text


def test_hires_accordion_values_make_the_request():
    values = {"prompt": "x", "width": 64, "height": 64, "steps": 4, "cfg_scale": 7.0, "seed": 1, "enable_hr": True,
              "hr_upscaler": "Latent (bicubic)", "hr_second_pass_steps": 3, "hr_denoising_strength": 0.45,
              "hr_scale": 1.5, "hr_resize_x": 0, "hr_resize_y": 0, "hr_sampler_name": hires.SAME_SAMPLER,
              "hr_scheduler": "Karras", "hr_prompt": "", "hr_negative_prompt": "", "hr_cfg": 7.0}  # fmt: skip
    req = forms.build_request("txt2img", values)
    assert req.enable_hr and req.hr_upscaler == "Latent (bicubic)" and req.hr_second_pass_steps == 3
    assert req.denoising_strength == 0.45 and req.hr_scale == 1.5 and req.hr_sampler_name is None
    assert req.hr_scheduler == "Karras" and req.hr_cfg is None
    off = forms.build_request("txt2img", {**values, "enable_hr": False})
    assert not off.enable_hr


def test_controls_build(tmp_path):
    import gradio as gr

    with gr.Blocks():
        controls = hires.hires_controls(["Latent", "Lanczos"], ["Euler a"], ["Automatic"])
        extras_tab.build_extras_tab(StubService(tmp_path))
    assert set(controls) == set(hires.FIELDS)
