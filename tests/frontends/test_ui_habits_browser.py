"""Issue 18 in a real browser: the small habits an A1111 user brings, looked at as a person sees them.

One server and one page for the module (a tiny depth checkpoint, tiny images); screenshots go to
tests/artifacts/habits_*.png.  The order matters a little: the first test finds an empty model folder.
"""

from __future__ import annotations

import io
import re
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.frontends.test_ui_browser import (
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    TIMEOUT_MS,
    H,
    W,
    _paint_stroke,
    choose,
    fetch_image,
    gallery_images,
    open_mode,
    open_tab,
    panel,
    picture,
    set_number,
    upload,
    wait_for_info,
)  # fmt: skip
from tests.helpers.server import populate, running_server

try:
    from playwright.sync_api import Page, expect, sync_playwright
except ImportError:
    sync_playwright = None

pytestmark = [
    pytest.mark.skipif(sync_playwright is None, reason="the playwright python package is not installed"),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"Chromium is not installed at {CHROMIUM}"),
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ui-habits")
    (root / "models" / "Stable-diffusion").mkdir(parents=True)
    return root


@pytest.fixture(scope="module")
def server(data_dir):
    with running_server(data_dir) as running:
        yield running


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("habit-files")
    good = folder / "picture.png"
    Image.fromarray(picture()).save(good)
    data = good.read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    (folder / "garbage.png").write_bytes(b"this is not a picture at all" * 10)
    return {"good": good, "truncated": folder / "truncated.png", "garbage": folder / "garbage.png"}


@pytest.fixture(scope="module")
def browser_page(server):
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        context.set_default_timeout(TIMEOUT_MS)
        expect.set_options(timeout=TIMEOUT_MS // 4)
        pg = context.new_page()
        pg.goto(server.url)
        expect(pg.get_by_label("Stable Diffusion checkpoint")).to_be_visible()
        yield pg
        browser.close()


@pytest.fixture
def page(browser_page):
    return browser_page


@pytest.fixture
def depth_loaded(server, data_dir, depth_ckpt):
    service = server.app.service
    if not (data_dir / "models" / "Stable-diffusion" / depth_ckpt.path.name).exists():
        populate(data_dir, depth_ckpt)
        service.refresh_checkpoints()
    if service.current_checkpoint() is None:
        service.select_checkpoint("tiny-depth")
    return service


def shot(page: Page, name: str, full_page: bool = False) -> None:
    page.screenshot(path=str(ARTIFACTS / f"habits_{name}.png"), full_page=full_page)


def error_area(page: Page, tab: str):
    return page.locator(f"#{tab}_html_info .sd-error")


def img2img_ready(page: Page, sub: str = "img2img", *, steps: int = 3, seed: int = 7):
    open_tab(page, "img2img")
    open_mode(page, sub)
    scope = panel(page, "img2img")
    open_size_tab(page, "Resize to")
    set_number(scope, "Width", W)
    set_number(scope, "Height", H)
    set_number(scope, "Sampling steps", steps)
    set_number(scope, "Batch count", 1)
    set_number(scope, "Seed", seed)
    return scope


def open_size_tab(page: Page, name: str) -> None:
    page.locator("#img2img_tabs_resize").get_by_role("tab", name=name, exact=True).click()


# --- checkpoints and icon buttons -------------------------------------------------------------------------


def test_refresh_with_one_checkpoint_loads_it_and_icons_have_names(page, server, data_dir, depth_ckpt):
    refresh = page.locator("#refresh_sd_checkpoint")
    tip = "Refresh the list (rescan the folder)"
    expect(refresh).to_have_attribute("title", tip)
    expect(refresh).to_have_attribute("aria-label", tip)
    expect(page.get_by_role("button", name=tip)).to_have_count(1)
    expect(page.locator("#refresh_sd_vae")).to_have_attribute("aria-label", "Refresh the VAE list (rescan models/VAE)")
    # this machine has no emoji font: the icons read as words, not as empty boxes
    assert page.evaluate("document.body.classList.contains('sd-no-emoji')")
    expect(refresh).to_have_text("Refresh")
    expect(page.locator("#txt2img_random_seed")).to_have_text("Random")
    expect(page.locator("#txt2img_reuse_seed")).to_have_attribute("aria-label", "Reuse the seed of the selected image")

    populate(data_dir, depth_ckpt)
    refresh.click()
    status = page.locator("#checkpoint_status")
    expect(status).to_contain_text(re.compile(r"Loaded tiny-depth\.safetensors \[[0-9a-f]{10}\] in \d+\.\ds"),
                                   timeout=TIMEOUT_MS)  # fmt: skip
    expect(page.get_by_label("Stable Diffusion checkpoint")).to_have_value(re.compile(r"^tiny-depth\.safetensors"))
    assert server.app.service.current_checkpoint().model_name == "tiny-depth"
    shot(page, "refresh_loaded")


# --- errors in the app's own words ------------------------------------------------------------------------


def test_unreadable_uploads_are_named_in_the_error_area(page, depth_loaded, files):
    scope = img2img_ready(page)
    scope.get_by_label("Prompt", exact=True).fill("a red house by a lake")
    upload(scope.locator("#img2img_image"), files["truncated"])
    scope.locator("#img2img_generate").click()
    expect(error_area(page, "img2img")).to_have_text("Error: the init image could not be read: truncated PNG")
    expect(page.locator(".toast-body")).to_have_count(0)  # no Gradio toast, no traceback, no temp path
    expect(scope.get_by_label("Prompt", exact=True)).to_have_value("a red house by a lake")  # the form is kept
    shot(page, "truncated_upload")

    upload(scope.locator("#img2img_image"), files["garbage"])
    scope.locator("#img2img_generate").click()
    expect(error_area(page, "img2img")).to_contain_text("the init image could not be read: not an image file")
    expect(page.locator(".toast-body")).to_have_count(0)

    open_mode(page, "Inpaint upload")
    upload(scope.locator("#img_inpaint_base"), files["good"])
    upload(scope.locator("#img_inpaint_mask"), files["truncated"])
    scope.locator("#img2img_generate").click()
    expect(error_area(page, "img2img")).to_have_text("Error: the mask could not be read: truncated PNG")

    open_mode(page, "img2img")
    depth_source = scope.get_by_label("Depth map (upload)", exact=True)
    depth_source.check()
    upload(scope.locator("#img2img_depth_map"), files["truncated"])
    upload(scope.locator("#img2img_image"), files["good"])
    scope.locator("#img2img_generate").click()
    expect(error_area(page, "img2img")).to_have_text("Error: the depth map could not be read: truncated PNG")
    scope.get_by_label("MiDaS (estimate from the image)", exact=True).check()

    open_tab(page, "PNG Info")
    upload(panel(page, "pnginfo"), files["garbage"])
    expect(page.locator("#pnginfo_html .sd-error")).to_contain_text("the PNG Info image could not be read")
    expect(page.locator(".toast-body")).to_have_count(0)


def test_messages_use_labels_and_txt2img_points_to_the_depth_map(page, depth_loaded):
    scope = img2img_ready(page, "Sketch")  # nothing uploaded there yet
    scope.locator("#img2img_generate").click()
    area = error_area(page, "img2img")
    expect(area).to_have_text("Error: the init image: upload an image into the Sketch canvas first")
    assert "init_images" not in area.inner_text()

    open_tab(page, "txt2img")
    tscope = panel(page, "txt2img")
    set_number(tscope, "Width", 64)
    set_number(tscope, "Height", 64)
    tscope.locator("#txt2img_generate").click()
    text = error_area(page, "txt2img")
    expect(text).to_contain_text("needs an input image or a depth map")
    expect(text).to_contain_text("Depth -> Depth map (upload)")
    expect(text).to_contain_text("base (non-depth) checkpoint")
    shot(page, "txt2img_depth_hint")


# --- prompt token counters --------------------------------------------------------------------------------


def test_token_counters_count_in_chunks_of_75(page, depth_loaded):
    open_tab(page, "txt2img")
    counter = page.locator("#txt2img_token_counter")
    expect(counter).to_have_text("0/75")
    page.locator("#txt2img_prompt textarea").fill("a red house by a lake")
    expect(counter).to_have_text("6/75")
    page.locator("#txt2img_prompt textarea").fill(", ".join(["a red house"] * 30))
    expect(counter).to_have_text("119/150")
    page.locator("#txt2img_neg_prompt textarea").fill("blurry, low quality")
    expect(page.locator("#txt2img_negative_token_counter")).to_have_text("4/75")
    shot(page, "token_counters")
    page.locator("#txt2img_prompt textarea").fill("")


# --- size: Resize to / Resize by ------------------------------------------------------------------------


def test_resize_by_scale_and_copy_size_from_the_image(page, depth_loaded, files, data_dir):
    scope = img2img_ready(page, steps=2, seed=55)
    set_number(scope, "Width", 512)
    set_number(scope, "Height", 512)
    upload(scope.locator("#img2img_image"), files["good"])
    expect(scope.locator("#img2img_image img")).to_be_visible()
    detect = page.locator("#img2img_detect_image_size_btn")
    expect(detect).to_have_attribute("aria-label", "Copy the width and height from the image")
    detect.click()
    expect(scope.get_by_label("number input for Width")).to_have_value(str(W))
    expect(scope.get_by_label("number input for Height")).to_have_value(str(H))

    open_size_tab(page, "Resize by")
    set_number(scope, "Scale", 1.5)
    expect(page.locator("#img2img_scale_info")).to_contain_text("Resize by 1.5: 192x128 → 288x192")
    shot(page, "resize_by")
    scope.locator("#img2img_generate").click()
    text = wait_for_info(page, "img2img", "Seed: 55")
    assert "Size: 288x192" in text
    out = fetch_image(page, scope.locator("#img2img_gallery img").first)
    assert out.shape == (192, 288, 3)
    open_size_tab(page, "Resize to")


# --- under the gallery: Save, Zip, Open folder, Send to extras, full screen ---------------------------------


def test_gallery_tools_save_zip_folder_extras_and_lightbox(page, depth_loaded, files, data_dir):
    scope = img2img_ready(page, steps=2, seed=60)
    upload(scope.locator("#img2img_image"), files["good"])
    set_number(scope, "Batch count", 2)
    scope.locator("#img2img_generate").click()
    wait_for_info(page, "img2img", "Seed: 60")
    thumbs = gallery_images(page, "img2img", 2)

    page.locator("#img2img_save").click()
    message = page.locator("#img2img_gallery_message")
    expect(message).to_contain_text("Saved to")
    saved = sorted((data_dir / "log" / "images").glob("*.png"))
    assert [p.name for p in saved] == ["00000-60.png"]
    assert "Seed: 60" in Image.open(saved[0]).info["parameters"]
    expect(page.locator("#img2img_download_files")).to_be_visible()

    page.locator("#img2img_zip").click()
    expect(message).to_contain_text("2 image(s) in")
    zip_path = Path(re.search(r"in (\S+\.zip)", message.inner_text()).group(1))
    with zipfile.ZipFile(zip_path) as archive:
        names = archive.namelist()
        assert names == ["00000-60.png", "00001-61.png"]
        first = np.asarray(Image.open(io.BytesIO(archive.read(names[0]))).convert("RGB"))
    assert np.array_equal(first, fetch_image(page, thumbs[0]))

    page.locator("#img2img_open_folder").click()
    expect(message).to_contain_text(f"Outputs are saved on the server machine in {data_dir / 'outputs/img2img-images'}")
    page.locator("#img2img_gallery").scroll_into_view_if_needed()
    shot(page, "gallery_tools")

    # lightbox: a thumbnail opens the large view; the arrow keys go through the images; full screen is there
    thumbs[0].click()
    preview = page.locator("#img2img_gallery .preview img, #img2img_gallery img[data-testid='detailed-image']").first
    expect(preview).to_be_visible()
    first_src = preview.get_attribute("src")
    seed_box = scope.locator("#img2img_seed input")
    page.keyboard.press("ArrowRight")
    expect(preview).not_to_have_attribute("src", first_src)
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowLeft")
    expect(preview).to_have_attribute("src", first_src)
    # keys pressed faster than their selects come back, then a click: the picture on the page counts
    scope.locator("#img2img_reuse_seed").click()
    expect(seed_box).to_have_value("60")
    expect(page.locator("#img2img_gallery").get_by_label("Fullscreen")).to_have_count(1)
    shot(page, "lightbox")

    page.locator("#img2img_send_to_extras").click()
    expect(page.get_by_role("tab", name="Extras", exact=True).first).to_have_attribute("aria-selected", "true")
    sent = page.locator("#extras_image img")
    expect(sent).to_be_visible()
    assert np.array_equal(fetch_image(page, sent), first)
    shot(page, "sent_to_extras")


# --- progress: ETA, Skip, Interrupt -----------------------------------------------------------------------


def test_eta_skip_keeps_the_image_and_interrupt_says_where_it_stopped(page, depth_loaded, files):
    scope = img2img_ready(page, steps=150, seed=70)
    upload(scope.locator("#img2img_image"), files["good"])
    set_number(scope, "Denoising strength", 1)
    set_number(scope, "Batch count", 2)
    page.evaluate("""() => { window.__progress = [];
        window.__watch = setInterval(() => { const e = document.querySelector('#img2img_progress');
            if (e && e.innerText.trim()) window.__progress.push(e.innerText.trim()); }, 30); }""")
    scope.locator("#img2img_generate").click()
    progress = page.locator("#img2img_progress")
    expect(progress).to_contain_text(re.compile(r"ETA \d"))
    seen = [t for t in page.evaluate("window.__progress") if "step" in t]
    assert seen and "ETA estimating…" in seen[0], seen[:5]  # no ETA from the first, slow steps
    assert all("ETA estimating" in t for t in seen if re.search(r"step [0-2]/150 · image 1/2", t))
    scope.locator("#img2img_skip").click()  # the first image is finished where it is, the second runs
    expect(progress).to_contain_text("image 2/2", timeout=TIMEOUT_MS)
    scope.locator("#img2img_interrupt").click()
    text = wait_for_info(page, "img2img", "Interrupted")
    match = re.search(r"Interrupted: stopped at step (\d+)/150 of image 2/2", text)
    assert match and 0 < int(match.group(1)) < 150, text
    thumbs = gallery_images(page, "img2img", 2)  # the skipped image is kept, the interrupted one too
    assert all(fetch_image(page, t).shape == (H, W, 3) for t in thumbs)
    shot(page, "interrupted")


# --- settings: search, pages, refusing a / in a file name, Reload UI ----------------------------------------


def test_settings_search_pages_pattern_and_reload(page, server, data_dir):
    open_tab(page, "Settings")
    scope = panel(page, "settings")
    search = page.locator("#settings_search textarea, #settings_search input").first
    search.fill("filename pattern")
    pattern = scope.get_by_label("Images filename pattern (empty: NNNNN-[seed])")
    expect(pattern).to_be_visible()
    expect(scope.get_by_label("Directory name pattern")).to_be_visible()
    expect(scope.get_by_label("Always save all generated images")).to_be_hidden()
    expect(scope.get_by_label("Output directory for img2img images")).to_be_hidden()
    shot(page, "settings_search")
    pattern.fill("[date]/[seed]")
    scope.locator("#settings_submit").click()
    result = page.locator("#settings_result .sd-status-error")
    expect(result).to_contain_text("Images filename pattern (empty: NNNNN-[seed])")
    expect(result).to_contain_text("/ cannot be part of a file name")
    assert server.app.service.settings.samples_filename_pattern == ""
    assert "[date]/[seed]" not in (data_dir / "config.json").read_text("utf-8") if (data_dir / "config.json").exists() \
        else True  # fmt: skip
    pattern.fill("[date]-[seed]")
    scope.locator("#settings_submit").click()
    expect(page.locator("#settings_result")).to_contain_text("Saved 1 setting")
    assert server.app.service.settings.samples_filename_pattern == "[date]-[seed]"

    search.fill("")
    page.locator("#settings_pages").get_by_label("Show all pages", exact=True).check()
    for label in ("Always save all generated images", "Output directory for img2img images",
                  "Most images one request may make (batch count x batch size)"):  # fmt: skip
        expect(scope.get_by_label(label).first).to_be_visible()
    shot(page, "settings_all_pages", full_page=True)
    page.locator("#settings_pages").get_by_label("Paths", exact=True).check()
    expect(scope.get_by_label("Always save all generated images")).to_be_hidden()
    expect(scope.get_by_label("Output directory for img2img images")).to_be_visible()

    page.evaluate("window.__before_reload = 1")
    page.locator("#settings_restart_gradio").click()
    page.wait_for_function("window.__before_reload === undefined")
    expect(page.get_by_label("Stable Diffusion checkpoint")).to_be_visible()
    expect(page.get_by_label("Stable Diffusion checkpoint")).to_have_value(re.compile(r"^tiny-depth"))


# --- extensions -------------------------------------------------------------------------------------------


def test_extensions_tab_says_how_to_install_and_disabled_controls_go(page, server):
    open_tab(page, "Extensions")
    install = page.locator("#extensions_install")
    expect(install).to_contain_text("put its folder into extensions/")
    expect(install).to_contain_text("register(ext)")
    expect(install).to_contain_text("then restart the web UI")
    install.get_by_role("link", name="How to write one: the guide").click()
    page.locator("#extension_guide").get_by_text("How to write an extension").click()
    expect(page.locator("#extension_guide_text")).to_contain_text("A complete example")
    shot(page, "extensions_install")

    boxes = page.locator("#extensions_enabled")
    boxes.get_by_label("xyz_plot", exact=True).uncheck()
    page.locator("#extensions_apply").click()
    expect(page.locator("#extensions_result")).to_contain_text("Disabled xyz_plot")
    open_tab(page, "txt2img")
    script = panel(page, "txt2img").get_by_label("Script", exact=True)
    script.click()
    expect(page.get_by_role("option", name="None", exact=True)).to_be_visible()
    expect(page.get_by_role("option", name="X/Y/Z plot", exact=True)).to_have_count(0)
    page.keyboard.press("Escape")
    open_tab(page, "Extensions")
    boxes.get_by_label("xyz_plot", exact=True).check()
    page.locator("#extensions_apply").click()
    expect(page.locator("#extensions_result")).to_contain_text("Enabled xyz_plot again")
    open_tab(page, "txt2img")
    choose(page, script, "X/Y/Z plot")
    choose(page, script, "None")


# --- img2img Sketch and Inpaint sketch; the eraser's size ---------------------------------------------------


def test_eraser_starts_at_the_brush_size(page):
    sizes = page.evaluate("""() => window.gradio_config.components
        .filter(c => ["img2maskimg", "img2img_sketch", "inpaint_sketch"].includes(c.props.elem_id))
        .map(c => [c.props.elem_id, c.props.brush.default_size, c.props.eraser.default_size])""")
    assert len(sizes) == 3 and all(brush == eraser for _, brush, eraser in sizes), sizes


def test_sketch_paints_colour_into_the_image(page, depth_loaded, files):
    scope = img2img_ready(page, "Sketch", steps=2, seed=80)
    editor = scope.locator("#img2img_sketch")
    upload(editor, files["good"])
    expect(editor.locator("canvas").first).to_be_visible()
    expect(editor.locator(".zoom-number")).to_contain_text("%")
    editor.scroll_into_view_if_needed()
    _paint_stroke(page, editor, (40, 64), (150, 64))
    shot(page, "sketch_stroke")
    # what the UI hands the Service (the tiny random VAE would not give the colours back in the output)
    sent = []
    submit = depth_loaded.submit
    depth_loaded.submit = lambda request: sent.append(request) or submit(request)
    try:
        scope.locator("#img2img_generate").click()
        text = wait_for_info(page, "img2img", "Seed: 80")
    finally:
        del depth_loaded.submit
    assert "Mask blur" not in text and sent[-1].mask is None  # a plain img2img of the painted picture
    init = np.asarray(Image.open(io.BytesIO(sent[-1].init_images[0])).convert("RGB")).astype(int)
    assert init.shape == (H, W, 3)
    brush = np.abs(init - np.array([0xE0, 0x20, 0x20])).max(-1) <= 3  # the default colour, #e02020
    assert brush[58:70, 50:140].mean() > 0.95, "the red stroke is not in the image"
    assert brush.mean() < 0.3 and not brush[:30].any() and not brush[100:].any()
    assert np.array_equal(init[:30], picture()[:30].astype(int))  # the rest is the picture as uploaded


def test_inpaint_sketch_repaints_only_the_strokes(page, depth_loaded, files):
    scope = img2img_ready(page, "Inpaint sketch", steps=3, seed=90)
    set_number(scope, "Mask blur", 0)
    set_number(scope, "Denoising strength", 1)
    editor = scope.locator("#inpaint_sketch")
    upload(editor, files["good"])
    expect(editor.locator("canvas").first).to_be_visible()
    expect(editor.locator(".zoom-number")).to_contain_text("%")
    editor.scroll_into_view_if_needed()
    _paint_stroke(page, editor, (60, 64), (130, 64))
    scope.locator("#img2img_generate").click()
    text = wait_for_info(page, "img2img", "Seed: 90")
    assert "Mask blur: 0" in text
    out = fetch_image(page, scope.locator("#img2img_gallery img").first).astype(int)
    changed = np.abs(out - picture().astype(int)).max(-1) > 0
    assert changed[60:69, 70:120].mean() > 0.9 and not changed[:30].any() and not changed[100:].any()
    shot(page, "inpaint_sketch_result")


# --- theme ------------------------------------------------------------------------------------------------


def test_dark_theme_from_the_url_and_from_the_flag(page, server, tmp_path):
    page.goto(f"{server.url}/?__theme=dark")
    expect(page.get_by_label("Stable Diffusion checkpoint")).to_be_visible()
    assert page.evaluate("document.body.classList.contains('dark')")
    shot(page, "dark_url")
    (tmp_path / "models" / "Stable-diffusion").mkdir(parents=True)
    with running_server(tmp_path, "--theme", "dark") as dark:
        page.goto(dark.url)
        expect(page.get_by_label("Stable Diffusion checkpoint")).to_be_visible()
        page.wait_for_function("document.body.classList.contains('dark')")
        background = page.evaluate("getComputedStyle(document.querySelector('gradio-app') || document.body)"
                                   ".backgroundColor")  # fmt: skip
        shot(page, "dark_flag")
        page.goto(f"{dark.url}/?__theme=light")
        expect(page.get_by_label("Stable Diffusion checkpoint")).to_be_visible()
        time.sleep(0.5)
        assert not page.evaluate("document.body.classList.contains('dark')")
    assert background
    page.goto(server.url)
    expect(page.get_by_label("Stable Diffusion checkpoint")).to_be_visible()


# --- X/Y/Z plot: 📒 fill, the choices dropdown, swapping axes ------------------------------------------------


def test_xyz_fill_choices_and_swap(page, depth_loaded):
    from modules.core import samplers

    open_tab(page, "txt2img")
    scope = panel(page, "txt2img")
    script = scope.get_by_label("Script", exact=True)
    script.scroll_into_view_if_needed()
    choose(page, script, "X/Y/Z plot")
    group = scope.locator("#txt2img_script_x_y_z_plot").first
    choose(page, group.get_by_label("X type", exact=True), "Sampler")
    fill = page.locator("#txt2img_xyz_x_fill")
    expect(fill).to_have_attribute("aria-label", "Fill in every value this axis takes")
    fill.click()
    x_values = group.get_by_label("X values", exact=True)
    expect(x_values).to_have_value(", ".join(samplers.sampler_names()))
    expect(page.locator("#txt2img_xyz_x_choices")).to_be_visible()  # an enumerated axis offers a dropdown
    choose(page, group.get_by_label("Y type", exact=True), "Checkpoint name")
    page.locator("#txt2img_xyz_y_fill").click()
    y_values = group.get_by_label("Y values", exact=True)
    expect(y_values).to_have_value(depth_loaded.current_checkpoint().title)
    group.scroll_into_view_if_needed()
    shot(page, "xyz_filled")
    page.locator("#txt2img_xyz_swap_xy").click()
    expect(group.get_by_label("X type", exact=True)).to_have_value("Checkpoint name")
    expect(x_values).to_have_value(depth_loaded.current_checkpoint().title)
    expect(group.get_by_label("Y type", exact=True)).to_have_value("Sampler")
    expect(y_values).to_have_value(", ".join(samplers.sampler_names()))
    choose(page, script, "None")
