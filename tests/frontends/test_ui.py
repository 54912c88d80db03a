"""The web UI without a browser: request building, masks, handlers over a real Service, settings, mounting."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import gradio as gr
import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from modules.app import bootstrap
from modules.app import options as cmd_args
from modules.core import images, infotext
from modules.core.errors import ValidationError
from modules.core.request import InpaintArea, MaskedContent, MaskMode, ResizeMode
from modules.frontends.ui import blocks, build_ui, forms, make_handlers, render, settings_tab, tabs
from modules.frontends.ui.outputs import ShownResult
from tests.helpers.server import populate, running_server

W, H = 96, 64


def picture(seed: int = 0) -> np.ndarray:
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    base = np.stack([xx * 255 / W, yy * 255 / H, (xx + yy) * 127 / (W + H)], -1)
    return np.clip(base + rng.randint(-20, 20, (H, W, 3)), 0, 255).astype(np.uint8)


def save(tmp_path: Path, arr: np.ndarray, name: str, mode: str | None = None) -> str:
    path = tmp_path / name
    Image.fromarray(arr, mode).save(path)
    return str(path)


def base_values(**kw) -> dict:
    values = {"prompt": "a house", "negative_prompt": "fog", "sampler_name": "DDIM", "scheduler": "Automatic",
              "steps": 4.0, "width": W, "height": H, "n_iter": 1, "batch_size": 1, "cfg_scale": 5.5, "seed": 7.0,
              "seed_extra": False, "subseed": 99, "subseed_strength": 0.3, "seed_resize_from_w": 0,
              "seed_resize_from_h": 0, "resize_mode": "Crop and resize", "denoising_strength": 0.42,
              "depth_source": forms.DEPTH_MIDAS, "depth_map": None, "depth_invert": False}  # fmt: skip
    values.update(kw)
    return values


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


# --- request building ---------------------------------------------------------------------------------


def test_img2img_request_from_controls(tmp_path):
    path = save(tmp_path, picture(), "in.png")
    req = forms.build_request("img2img", base_values(init_image=path))
    assert req.init_images == [Path(path).read_bytes()]  # the upload as it is, not re-encoded
    assert (req.prompt, req.negative_prompt, req.sampler_name, req.scheduler) == ("a house", "fog", "DDIM", "Automatic")
    assert (req.steps, req.width, req.height, req.seed, req.cfg_scale) == (4, W, H, 7, 5.5)
    assert isinstance(req.steps, int) and isinstance(req.seed, int)
    assert req.resize_mode == ResizeMode.CROP_AND_RESIZE and req.denoising_strength == 0.42
    assert req.mask is None and req.depth_map is None
    assert (req.subseed, req.subseed_strength) == (-1, 0.0)  # "Extra" is off: no variation seed


def test_seed_extras_only_when_ticked(tmp_path):
    path = save(tmp_path, picture(), "in.png")
    req = forms.build_request("img2img", base_values(init_image=path, seed_extra=True, seed_resize_from_w=128,
                                                       seed_resize_from_h=96))  # fmt: skip
    assert (req.subseed, req.subseed_strength, req.seed_resize_from_w, req.seed_resize_from_h) == (99, 0.3, 128, 96)


def test_missing_inputs_name_the_field(tmp_path):
    with pytest.raises(ValidationError) as e:
        forms.build_request("img2img", base_values(init_image=None))
    assert e.value.field == "init_images"
    path = save(tmp_path, picture(), "in.png")
    with pytest.raises(ValidationError) as e:
        forms.build_request("img2img", base_values(init_image=path, depth_source=forms.DEPTH_UPLOAD))
    assert e.value.field == "depth_map" and "MiDaS" in e.value.message
    with pytest.raises(ValidationError) as e:
        forms.build_request("img2img", base_values(init_image=path, width=100))
    assert e.value.field == "width"
    with pytest.raises(ValidationError) as e:
        forms.build_request("inpaint_upload", base_values(inpaint_image=path, inpaint_mask=None))
    assert e.value.field == "mask"


def test_uploaded_depth_map_keeps_16_bits(tmp_path):
    path = save(tmp_path, picture(), "in.png")
    depth16 = (np.linspace(0, 65535, W * H).reshape(H, W)).astype(np.uint16)
    depth_path = tmp_path / "depth.png"
    Image.fromarray(depth16).save(depth_path)
    req = forms.build_request("img2img", base_values(init_image=path, depth_source=forms.DEPTH_UPLOAD,
                                                       depth_map=str(depth_path), depth_invert=True))  # fmt: skip
    assert req.depth_map == depth_path.read_bytes() and req.depth_invert is True
    assert decode(req.depth_map).dtype == np.uint16
    # with MiDaS chosen, a depth map left in the upload box is not used
    req = forms.build_request("img2img", base_values(init_image=path, depth_map=str(depth_path), depth_invert=True))
    assert req.depth_map is None and req.depth_invert is False


def test_txt2img_request_uses_a_depth_map_when_given(tmp_path):
    req = forms.build_request("txt2img", base_values())
    assert not req.init_images and req.depth_map is None and req.denoising_strength == 0.75
    depth_path = save(tmp_path, picture()[..., 0], "depth.png")
    req = forms.build_request("txt2img", base_values(depth_map=depth_path))
    assert req.depth_map == Path(depth_path).read_bytes()


def _stroke_layer(size=(W, H), box=(20, 10, 50, 30), alpha=200) -> Image.Image:
    layer = np.zeros((size[1], size[0], 4), np.uint8)
    x0, y0, x1, y1 = box
    layer[y0:y1, x0:x1] = (255, 255, 255, alpha)
    return Image.fromarray(layer, "RGBA")


def test_inpaint_mask_from_the_editor_layers():
    background = Image.fromarray(picture()).convert("RGBA")
    editor = {"background": background, "layers": [_stroke_layer(), _stroke_layer(box=(70, 40, 90, 60), alpha=40)],
              "composite": background}  # fmt: skip
    req = forms.build_request("inpaint", base_values(inpaint_editor=editor, mask_blur=0, mask_mode="Inpaint not masked",
                                                       masked_content="latent noise", inpaint_area="Only masked",
                                                       inpaint_full_res_padding=16))  # fmt: skip
    mask = decode(req.mask)
    assert mask.shape == (H, W) and set(np.unique(mask)) == {0, 255}
    expected = np.zeros((H, W), np.uint8)
    expected[10:30, 20:50] = 255
    expected[40:60, 70:90] = 255  # any paint counts, however transparent the brush
    assert np.array_equal(mask, expected)
    assert np.array_equal(decode(req.init_images[0])[..., :3], picture())
    assert (req.mask_blur_x, req.mask_blur_y) == (0, 0)
    assert req.inpainting_mask_invert == MaskMode.INPAINT_NOT_MASKED
    assert req.inpainting_fill == MaskedContent.LATENT_NOISE
    assert req.inpaint_full_res == InpaintArea.ONLY_MASKED and req.inpaint_full_res_padding == 16


def test_inpaint_mask_is_scaled_to_the_image_and_must_not_be_empty():
    background = Image.fromarray(picture()).convert("RGBA")
    big = _stroke_layer(size=(W * 2, H * 2), box=(40, 20, 100, 60))
    mask = forms.mask_from_layers([big], background.size)
    assert mask.shape == (H, W) and mask[10:30, 20:50].all() and mask.sum() == 255 * 20 * 30
    with pytest.raises(ValidationError) as e:
        forms.editor_image_and_mask({"background": background, "layers": [_stroke_layer(alpha=0)]})
    assert e.value.field == "mask"
    with pytest.raises(ValidationError) as e:
        forms.editor_image_and_mask({"background": None, "layers": []})
    assert e.value.field == "init_images"


def test_inpaint_upload_passes_both_files(tmp_path):
    image = save(tmp_path, picture(), "in.png")
    mask = np.zeros((H, W), np.uint8)
    mask[5:20, 5:20] = 255
    mask_path = save(tmp_path, mask, "mask.png")
    req = forms.build_request("inpaint_upload", base_values(inpaint_image=image, inpaint_mask=mask_path))
    assert req.init_images == [Path(image).read_bytes()] and req.mask == Path(mask_path).read_bytes()
    assert req.inpainting_fill == MaskedContent.ORIGINAL and req.inpaint_full_res == InpaintArea.WHOLE_PICTURE


def test_infotext_to_control_values_roundtrip(tmp_path):
    req = forms.build_request("inpaint_upload", base_values(
        inpaint_image=save(tmp_path, picture(), "a.png"), inpaint_mask=save(tmp_path, np.full((H, W), 255, np.uint8), "m.png"),
        seed_extra=True, mask_blur=6, masked_content="fill", inpaint_area="Only masked"))  # fmt: skip
    text = infotext.build(req, prompt=req.prompt, negative_prompt=req.negative_prompt, seed=7, subseed=99,
                          sampler="DDIM", schedule="Uniform", model_name="m", model_hash="0123456789")  # fmt: skip
    values = forms.infotext_to_values(text)
    assert values["prompt"] == "a house" and values["negative_prompt"] == "fog"
    assert (values["steps"], values["cfg_scale"], values["seed"], values["width"], values["height"]) == (
        4,
        5.5,
        7,
        W,
        H,
    )
    assert values["sampler_name"] == "DDIM" and values["denoising_strength"] == 0.42
    assert (values["subseed"], values["subseed_strength"], values["seed_extra"]) == (99, 0.3, True)
    assert (values["mask_blur"], values["masked_content"], values["inpaint_area"]) == (6, "fill", "Only masked")
    assert forms.infotext_to_values("") == {}


# --- HTML pieces -------------------------------------------------------------------------------------


def test_progress_html():
    idle = render.progress_html({"active": False, "queued": 2})
    assert "2 ahead" in idle
    busy = render.progress_html({"active": True, "progress": 0.375, "eta_relative": 12.3,
                                 "state": {"sampling_step": 3, "sampling_steps": 8, "job_no": 1, "job_count": 4}})  # fmt: skip
    assert 'style="width:38%"' in busy and "ETA 12s" in busy and "step 3/8" in busy and "image 2/4" in busy
    stopping = render.progress_html({"active": True, "progress": 0.1, "state": {"interrupted": True}})
    assert "interrupting" in stopping


def test_info_and_notice_html_escape_and_explain(tmp_path):
    from modules.core.request import GenerationResult

    result = GenerationResult(images=[picture()], infotexts=["<b>x</b>\nSteps: 4"], interrupted=True,
                              warnings=["could not save"], timings={"total": 1.25})  # fmt: skip
    html = render.info_html(result)
    assert "&lt;b&gt;x&lt;/b&gt;" in html and "Time taken: 1.2s" in html and "Interrupted: 1 image(s) done" in html
    assert "could not save" in html
    notice = render.no_checkpoint_html(tmp_path / "models" / "Stable-diffusion")
    assert "512-depth-ema.ckpt" in notice and ".safetensors" in notice and "512-depth-ema.yaml" in notice
    assert "models/Stable-diffusion/" in notice


# --- settings form -----------------------------------------------------------------------------------


def test_settings_form_conversion():
    assert settings_tab.to_form("disabled_extensions", ["a", "b"]) == "a, b"
    values = settings_tab.from_form({"disabled_extensions": "a, ,b ", "max_batch_images": 12.0, "outdir_save": None})
    assert values == {"disabled_extensions": ["a", "b"], "max_batch_images": 12, "outdir_save": ""}
    names = [f.name for fields in settings_tab.sections().values() for f in fields]
    assert "sd_model_checkpoint" not in names and "samples_save" in names and "default_sampler" in names


# --- handlers over a real Service --------------------------------------------------------------------


@pytest.fixture(scope="module")
def service(tmp_path_factory, depth_ckpt):
    data_dir = tmp_path_factory.mktemp("ui-service")
    populate(data_dir, depth_ckpt)
    args = cmd_args.parse_args(["--data-dir", str(data_dir), "--skip-install", "--log-level", "WARNING"])
    svc = bootstrap.create_service(args)
    yield svc
    svc.worker.stop()


@pytest.fixture(scope="module")
def handlers(service, tmp_path_factory):
    return make_handlers(service, tmp_path_factory.mktemp("ui-outputs"))


def _final(generator) -> tuple:
    *_, last = list(generator)
    return last


def test_generate_writes_pngs_with_infotext_and_the_depth_map(handlers, tmp_path):
    path = save(tmp_path, picture(), "in.png")
    values = base_values(init_image=path, n_iter=1, batch_size=2, sampler_name="Euler a")
    gallery, depth_image, info, progress, shown, selected = _final(handlers.generate("img2img", values))
    assert len(gallery) == 2 and progress == "" and selected == 0
    for file, text in zip(gallery, shown["infotexts"], strict=True):
        data = Path(file).read_bytes()
        assert images.read_infotext(data) == text and "Denoising strength: 0.42" in text
        assert decode(data).shape == (H, W, 3)
    assert shown["seeds"] == [7, 8] and "Seed: 7" in info and "Time taken" in info
    depth = decode(Path(depth_image).read_bytes())
    assert depth.shape == (H, W) and depth.max() > depth.min()
    # selecting the second image shows its own depth map and infotext
    depth2, info2 = handlers.select_image(shown, 1)
    assert depth2 == shown["depth_maps"][1] and "Seed: 8" in info2
    assert handlers.last_seed(shown, 1) == 8 and handlers.last_seed(shown, None) == 7


def test_generate_errors_are_shown(handlers):
    steps = list(handlers.generate("txt2img", base_values()))  # the depth model without a depth map
    gallery, _, info, progress, shown, _ = steps[-1]
    assert 'class="sd-error"' in info and "needs an input image or a depth map" in info
    assert "Depth -&gt; Depth map (upload)" in info and "base (non-depth) checkpoint" in info  # where to go
    assert gallery is None and progress == "" and ShownResult.from_dict(shown).images == []
    early = list(handlers.generate("img2img", base_values(init_image=None)))
    assert len(early) == 1 and "the init image: upload an image for img2img" in early[0][2]
    assert "init_images" not in early[0][2]  # the label a person sees, not the API's field name


def test_checkpoint_refresh_select_and_errors(handlers, service, depth_ckpt, sd2_ckpt, tmp_path):
    folder = service.registry.folders[0]
    shutil.copy(sd2_ckpt.path, folder / sd2_ckpt.path.name)
    dropdown, status, notice = list(handlers.refresh_checkpoints())[-1]
    # listed at once, hashed when first loaded (A1111's lazy hashing): the message says what lacks its hash
    assert "tiny-sd2.safetensors" in dropdown["choices"] and "Found 2 checkpoints" in status
    assert "not hashed yet" in status and len(service.unhashed_checkpoints()) >= 1
    steps = list(handlers.select_checkpoint("tiny-sd2.safetensors"))  # (this copy has no yaml: it fails to load)
    assert any(t.startswith("tiny-sd2.safetensors [") for t in steps[-1][0]["choices"])  # hashed by the load
    assert notice["visible"] is False
    title = next(t for t in dropdown["choices"] if t.startswith("tiny-depth"))
    steps = list(handlers.select_checkpoint(title))
    assert "Loading" in steps[0][1] and steps[-1][0]["value"] == title
    assert f"{title} in " in steps[-1][1]

    class Evil:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    torch.save({"state_dict": {}, "x": Evil()}, folder / "evil.ckpt")
    list(handlers.refresh_checkpoints())
    bad = list(handlers.select_checkpoint("evil.ckpt"))[-1]
    assert "sd-status-error" in bad[1] and "evil.ckpt" in bad[1] and "forbidden" in bad[1]
    assert bad[0]["value"] == title  # the dropdown goes back to the model still loaded
    assert not (tmp_path / "pwned").exists()
    assert "sd-status-error" in handlers.checkpoint_status()
    unknown = list(handlers.select_checkpoint("nope"))[-1]
    assert "not found" in unknown[1]
    (folder / "evil.ckpt").unlink()
    (folder / sd2_ckpt.path.name).unlink()
    list(handlers.refresh_checkpoints())


def test_apply_settings_persists_and_refuses_bad_values(handlers, service):
    path = service.settings_path
    assert "Nothing changed" in handlers.apply_settings(service.settings.to_dict())
    status = handlers.apply_settings(settings_tab.from_form({"samples_save": False, "default_sampler": "DDIM",
                                                             "samples_filename_pattern": "[seed]-[prompt_words]",
                                                             "outdir_img2img_samples": "out/i2i"}))  # fmt: skip
    assert "Saved 4 settings" in status
    saved = json.loads(path.read_text("utf-8"))
    assert saved["samples_save"] is False and saved["default_sampler"] == "DDIM"
    assert saved["samples_filename_pattern"] == "[seed]-[prompt_words]" and saved["outdir_img2img_samples"] == "out/i2i"
    bad = handlers.apply_settings({"samples_format": "gif"})
    assert "sd-status-error" in bad and "samples_format" in bad
    assert service.settings.samples_format == "png"
    handlers.apply_settings({"samples_save": True, "default_sampler": "Euler a"})


def test_png_info_handler(handlers, tmp_path):
    path = tmp_path / "info.png"
    path.write_bytes(images.encode_image(picture(), "a cat\nSteps: 5, Sampler: DDIM, Seed: 3", "png"))
    html, text = handlers.png_info(str(path))
    assert text.startswith("a cat") and "<th>Sampler</th><td>DDIM</td>" in html
    plain = tmp_path / "plain.png"
    Image.fromarray(picture()).save(plain)
    html, text = handlers.png_info(str(plain))
    assert text == "" and "no generation parameters" in html


# --- the page ----------------------------------------------------------------------------------------


def test_every_select_runs_the_users_last_choice(handlers):
    """A tab, dropdown or gallery pick made while the previous pick's event is still on its way runs after it:
    Gradio's default for select ("once") drops it, and the page then shows one choice while the server holds
    another (the lightbox's arrow keys sent the wrong picture to Extras; tests/frontends/test_ui_habits_browser)."""
    demo = build_ui(handlers)
    selects = [fn for fn in demo.fns.values() if any(event == "select" for _, event in fn.targets)]
    assert len(selects) >= 8  # checkpoint, VAE, galleries, img2img/inpaint tabs, size tabs, Extras tabs
    dropping = [(fn.name, [demo.blocks[i].elem_id for i, _ in fn.targets if i in demo.blocks]) for fn in selects
                if fn.trigger_mode != "always_last"]  # fmt: skip
    assert dropping == []
    picks = [fn for fn in demo.fns.values() if fn.js and "thumbnail-item" in fn.js]
    assert len(picks) >= 2 * 5  # per gallery: Save, Send to img2img / inpaint / extras, Reuse seed (and subseed)


def test_blocks_have_a1111_labels_ranges_and_defaults(handlers):
    demo = build_ui(handlers)
    by_label: dict[str, list] = {}
    for block in demo.blocks.values():
        label = getattr(block, "label", None)
        if label:
            by_label.setdefault(str(label), []).append(block)
    for label in ("Stable Diffusion checkpoint", "Prompt", "Negative prompt", "Sampling method", "Schedule type",
                  "Sampling steps", "Resize mode", "Width", "Height", "Batch count", "Batch size", "CFG Scale",
                  "Denoising strength", "Seed", "Variation seed", "Variation strength", "Mask blur", "Mask mode",
                  "Masked content", "Inpaint area", "Only masked padding, pixels", "Depth source", "Output",
                  "Depth map used", "Image for img2img", "Image for inpainting with mask", "Mask", "Source"):  # fmt: skip
        assert label in by_label, label
    (denoise,) = [d for d in by_label["Denoising strength"] if d.elem_id != "txt2img_denoising_strength"]  # not hires
    assert (denoise.minimum, denoise.maximum, denoise.step, denoise.value) == (0, 1, 0.01, 0.75)
    for width in by_label["Width"]:
        assert (width.minimum, width.maximum, width.step, width.value) == (64, 2048, 8, 512)
    for cfg in by_label["CFG Scale"]:
        assert (cfg.minimum, cfg.maximum, cfg.step, cfg.value) == (1, 30, 0.5, 7)
    for steps in by_label["Sampling steps"]:
        assert (steps.minimum, steps.maximum, steps.value) == (1, 150, 20)
    assert by_label["Batch size"][0].maximum == 8 and by_label["Mask blur"][0].value == 4
    assert by_label["Masked content"][0].value == "original" and by_label["Inpaint area"][0].value == "Whole picture"
    padding = by_label["Only masked padding, pixels"][0]
    assert (padding.minimum, padding.maximum, padding.step, padding.value) == (0, 256, 4, 32)
    assert all(seed.value == -1 for seed in by_label["Seed"])
    assert isinstance(by_label["Image for inpainting with mask"][0], gr.ImageMask)
    buttons = {b.value for b in demo.blocks.values() if isinstance(b, gr.Button)}
    assert {"🔄", "🎲", "♻", "Generate", "Interrupt", "Skip", "Send to inpaint", "Send to img2img"} <= buttons


def test_send_to_inpaint_moves_image_parameters_and_mode(handlers):
    with gr.Blocks():
        with gr.Tabs() as top:
            with gr.Tab("txt2img", id="txt2img"):
                txt2img = tabs.build_txt2img_tab(handlers)
            with gr.Tab("img2img", id="img2img"):
                img2img = tabs.build_img2img_tab(handlers)
    targets = blocks.Targets(top, txt2img, img2img)
    text = "a house\nNegative prompt: fog\nSteps: 9, Sampler: DDIM, Seed: 5, Size: 128x96, Mask blur: 2"
    outputs = targets.outputs("inpaint")
    updates = blocks.send_updates(targets, "inpaint", "/tmp/result.png", text)
    assert len(outputs) == len(updates)
    sent = dict(zip(outputs, updates, strict=True))
    assert sent[img2img.fields["inpaint_editor"]] == {"background": "/tmp/result.png", "layers": [],
                                                      "composite": "/tmp/result.png"}  # fmt: skip
    assert sent[img2img.extra["mode"]] == "inpaint" and sent[img2img.extra["inpaint_group"]]["visible"] is True
    assert sent[img2img.fields["prompt"]] == "a house" and sent[img2img.fields["steps"]] == 9
    assert sent[img2img.fields["mask_blur"]] == 2 and sent[img2img.fields["seed"]] == 5
    assert sent[img2img.fields["denoising_strength"]] == gr.skip()  # not in the text: left as it is
    assert sent[top].selected == "img2img" and sent[img2img.extra["mode_tabs"]].selected == "inpaint"
    to_txt = dict(zip(targets.outputs("txt2img"), blocks.send_updates(targets, "txt2img", None, text), strict=True))
    assert to_txt[txt2img.fields["width"]] == 128 and "mask_blur" not in txt2img.fields


def test_gradio_auth_protects_the_page(tmp_path):
    with running_server(tmp_path, "--gradio-auth", "ann:secret") as server:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            assert client.get("/config").status_code == 401
            ok = client.post("/login", data={"username": "ann", "password": "secret"})
            assert ok.status_code == 200
            assert client.get("/config").status_code == 200
            assert client.post("/login", data={"username": "ann", "password": "nope"}).status_code == 400


def test_the_ui_raises_limits_only_when_logged_in_or_local(service, tmp_path):
    from modules.app.options import parse_args
    from modules.frontends.ui import _on_network
    from modules.frontends.ui.handlers import UiHandlers
    from modules.frontends.ui.outputs import OutputStore

    on_lan = UiHandlers(service, OutputStore(tmp_path), may_raise_limits=False)
    limit = service.settings.max_output_pixels
    refused = on_lan.apply_settings({"max_output_pixels": limit * 2})
    assert "sd-status-error" in refused and "raised only by a logged-in request" in refused
    assert service.settings.max_output_pixels == limit
    lowered = on_lan.apply_settings({"max_output_pixels": limit // 2})
    assert "Saved 1 setting" in lowered and service.settings.max_output_pixels == limit // 2
    service.update_settings({"max_output_pixels": limit})
    assert _on_network(parse_args(["--listen"])) and not _on_network(parse_args([]))
