"""The web UI in a real browser (Debian's Chromium through Playwright) against the running app.

One server (the whole app, as ``launch.py`` builds it) and one browser page for the module, a tiny
depth checkpoint, tiny images.  Screenshots of every tab at 1280x800 go to tests/artifacts/.
"""

from __future__ import annotations

import base64
import io
import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modules.core import images
from tests.helpers.server import populate, running_server

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
W, H = 192, 128
TIMEOUT_MS = 60_000

try:
    from playwright.sync_api import Locator, Page, expect, sync_playwright
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
except ImportError:  # the browser tests need the playwright package
    sync_playwright = None

pytestmark = [
    pytest.mark.skipif(sync_playwright is None, reason="the playwright python package is not installed"),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"Chromium is not installed at {CHROMIUM}"),
]


def picture() -> np.ndarray:
    rng = np.random.RandomState(0)
    yy, xx = np.mgrid[0:H, 0:W]
    base = np.stack([xx * 255 / W, yy * 255 / H, (xx + yy) * 127 / (W + H)], -1)
    return np.clip(base + rng.randint(-20, 20, (H, W, 3)), 0, 255).astype(np.uint8)


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ui-browser")
    (root / "models" / "Stable-diffusion").mkdir(parents=True)
    return root


@pytest.fixture(scope="module")
def server(data_dir):
    with running_server(data_dir) as running:
        yield running


@pytest.fixture(scope="module")
def picture_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ui-pictures") / "picture.png"
    Image.fromarray(picture()).save(path)
    return path


@pytest.fixture(scope="module")
def page(server):
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        context.set_default_timeout(TIMEOUT_MS)
        # assertions wait for server round trips (Send to img2img, settings): on a loaded CI machine one
        # took longer than Playwright's 5 s default
        expect.set_options(timeout=TIMEOUT_MS // 4)
        pg = context.new_page()
        pg.goto(server.url)
        expect(pg.get_by_label("Stable Diffusion checkpoint")).to_be_visible()
        yield pg
        browser.close()


@pytest.fixture
def depth_loaded(server, data_dir, depth_ckpt):
    """The tiny depth checkpoint is in the folder and loaded (whatever ran before)."""
    service = server.app.service
    if not (data_dir / "models" / "Stable-diffusion" / depth_ckpt.path.name).exists():
        populate(data_dir, depth_ckpt)
        service.refresh_checkpoints()
    current = service.current_checkpoint()
    if current is None or current.model_name != "tiny-depth":
        service.select_checkpoint("tiny-depth")
    return service


# --- helpers --------------------------------------------------------------------------------------


def open_tab(page: Page, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).first.click()


def open_mode(page: Page, name: str) -> None:
    """An img2img sub-tab: img2img, Inpaint, Inpaint upload."""
    page.locator("#mode_img2img").get_by_role("tab", name=name, exact=True).click()


def panel(page: Page, tab: str) -> Locator:
    return page.locator(f"#tab_{tab}")


def set_number(scope: Locator, label: str, value: float) -> None:
    """Type into a slider's number box (or a Number) and leave it, as a user would."""
    box = scope.get_by_label(f"number input for {label}", exact=True)
    if box.count() == 0:
        box = scope.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Tab")


def upload(scope: Locator, path: Path) -> None:
    scope.locator("input[type=file]").first.set_input_files(str(path))


def wait_for_info(page: Page, tab: str, text: str) -> str:
    info = page.locator(f"#{tab}_html_info")
    expect(info).to_contain_text(text, timeout=TIMEOUT_MS)
    return info.inner_text()


_FETCH_BASE64 = """async (src) => {
    const response = await fetch(src);
    if (!response.ok) throw new Error(`${response.status} for ${src}`);
    const bytes = new Uint8Array(await response.arrayBuffer());
    let text = "";
    for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
    return btoa(text);
}"""


def fetch_image(page: Page, img: Locator) -> np.ndarray:
    """The image's file as the browser gets it.

    Fetched by the page itself, not by Playwright's request context: that one reuses a kept-alive
    connection the server may have just closed as idle, and fails with ECONNRESET instead of retrying.
    """
    data = base64.b64decode(page.evaluate(_FETCH_BASE64, img.get_attribute("src")))
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def shot(page: Page, name: str, full_page: bool = False) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full_page)


def prepare_img2img(page: Page, picture_file: Path, sub_tab: str, *, seed: int, steps: int = 4) -> Locator:
    open_tab(page, "img2img")
    open_mode(page, sub_tab)
    scope = panel(page, "img2img")
    set_number(scope, "Width", W)
    set_number(scope, "Height", H)
    set_number(scope, "Sampling steps", steps)
    set_number(scope, "Batch count", 1)
    set_number(scope, "Seed", seed)
    scope.get_by_label("Prompt", exact=True).fill("a red house by a lake")
    return scope


# --- tests ----------------------------------------------------------------------------------------


def test_no_checkpoint_then_copy_refresh_and_select(page, server, data_dir, depth_ckpt, sd2_ckpt):
    notice = page.locator("#no_checkpoint_notice")
    expect(notice).to_be_visible()
    expect(notice).to_contain_text("models/Stable-diffusion/")
    expect(notice).to_contain_text("512-depth-ema.ckpt")
    expect(notice).to_contain_text(".yaml")
    shot(page, "no_checkpoint")

    populate(data_dir, depth_ckpt)  # a file copied in while the server runs
    page.locator("#refresh_sd_checkpoint").click()
    status = page.locator("#checkpoint_status")
    expect(notice).to_be_hidden()
    # the only checkpoint, with none loaded, is selected and loaded by the refresh itself (issue 18)
    dropdown = page.get_by_label("Stable Diffusion checkpoint")
    expect(dropdown).to_have_value(re.compile(r"^tiny-depth\.safetensors"))
    expect(status).to_contain_text(re.compile(r"Loaded tiny-depth\.safetensors \[[0-9a-f]{10}\] in \d+\.\ds"))
    assert server.app.service.current_checkpoint().model_name == "tiny-depth"

    populate(data_dir, sd2_ckpt)
    page.locator("#refresh_sd_checkpoint").click()
    expect(status).to_contain_text("Found 2 checkpoints")
    dropdown.click()
    expect(page.get_by_role("option", name=re.compile(r"^tiny-sd2\.safetensors"))).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.get_by_role("option", name=re.compile(r"^tiny-sd2\.safetensors"))).to_be_hidden()
    expect(dropdown).to_have_value(re.compile(r"^tiny-depth\.safetensors"))


def test_tabs_controls_and_screenshots(page, depth_loaded):
    for name in ("txt2img", "img2img", "PNG Info", "Settings"):
        open_tab(page, name)
        shot(page, f"tab_{name.replace(' ', '_')}")
    open_tab(page, "img2img")
    scope = panel(page, "img2img")
    for sub in ("img2img", "Inpaint", "Inpaint upload"):
        open_mode(page, sub)
        shot(page, f"tab_img2img_{sub.replace(' ', '_')}", full_page=True)
    open_mode(page, "Inpaint")
    for label in ("Mask blur", "Only masked padding, pixels"):
        expect(scope.get_by_label(f"range slider for {label}")).to_be_visible()
    for label in ("Mask mode", "Masked content", "Inpaint area", "Resize mode", "Depth source"):
        expect(scope.get_by_text(label, exact=True).first).to_be_visible()
    for label in ("Sampling steps", "Width", "Height", "Batch count", "Batch size", "CFG Scale", "Denoising strength"):
        expect(scope.get_by_label(f"range slider for {label}")).to_be_visible()
    for label in ("Sampling method", "Schedule type", "Seed", "Prompt", "Negative prompt"):
        expect(scope.get_by_label(label, exact=True)).to_be_visible()
    slider = scope.get_by_label("range slider for Denoising strength")
    assert (slider.get_attribute("min"), slider.get_attribute("max"), slider.get_attribute("step")) == (
        "0",
        "1",
        "0.01",
    )
    expect(scope.get_by_label("number input for Denoising strength")).to_have_value("0.75")
    open_mode(page, "img2img")
    expect(scope.get_by_label("range slider for Mask blur")).to_be_hidden()
    # the results stay in view while the parameters below are scrolled to (1280x800)
    page.locator("#img2img_depth").scroll_into_view_if_needed()
    gallery = page.locator("#img2img_gallery").bounding_box()
    assert 0 <= gallery["y"] and gallery["y"] + gallery["height"] <= 800, gallery
    page.mouse.wheel(0, -5000)


def test_img2img_generate_shows_output_depth_and_infotext(page, depth_loaded, picture_file):
    scope = prepare_img2img(page, picture_file, "img2img", seed=101)
    upload(scope.locator("#img2img_image"), picture_file)
    expect(scope.locator("#img2img_image img")).to_be_visible()

    slider = scope.get_by_label("range slider for Denoising strength")
    slider.scroll_into_view_if_needed()
    box = slider.bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.4, box["y"] + box["height"] / 2)  # a user moving the slider
    strength = float(scope.get_by_label("number input for Denoising strength").input_value())
    assert 0.3 < strength < 0.5

    scope.locator("#img2img_generate").click()
    text = wait_for_info(page, "img2img", "Seed: 101")
    assert f"Denoising strength: {strength:g}" in text
    assert "Size: 192x128" in text and "Steps: 4" in text and "Depth source: MiDaS" in text
    assert "Time taken" in text
    output = scope.locator("#img2img_gallery img").first
    expect(output).to_be_visible()
    assert fetch_image(page, output).shape == (H, W, 3)
    depth_img = scope.locator("#img2img_depth_used img")
    expect(depth_img).to_be_visible()
    depth = fetch_image(page, depth_img)
    assert depth.shape == (H, W, 3) and depth.max() > depth.min()
    page.locator("#img2img_gallery").scroll_into_view_if_needed()
    shot(page, "img2img_result")
    # 🎲 sets -1, ♻ brings back the seed of the image shown
    seed_box = scope.get_by_label("Seed", exact=True)
    scope.locator("#img2img_random_seed").click()
    expect(seed_box).to_have_value("-1")
    scope.locator("#img2img_reuse_seed").click()
    expect(seed_box).to_have_value("101")


def test_txt2img_with_depth_model_and_no_depth_map_says_what_is_needed(page, depth_loaded):
    open_tab(page, "txt2img")
    scope = panel(page, "txt2img")
    set_number(scope, "Width", 64)
    set_number(scope, "Height", 64)
    scope.locator("#txt2img_generate").click()
    expect(page.locator("#txt2img_html_info .sd-error")).to_contain_text("needs an input image or a depth map")


def test_interrupt_a_long_run(page, depth_loaded, picture_file):
    scope = prepare_img2img(page, picture_file, "img2img", seed=303, steps=150)
    upload(scope.locator("#img2img_image"), picture_file)
    set_number(scope, "Batch count", 20)
    set_number(scope, "Denoising strength", 1)
    started = time.monotonic()
    scope.locator("#img2img_generate").click()
    bar = page.locator("#img2img_progress .sd-progress-bar")
    expect(bar).to_be_visible()
    expect(page.locator("#img2img_progress")).to_contain_text("step")
    shot(page, "img2img_progress")
    scope.locator("#img2img_interrupt").click()
    text = wait_for_info(page, "img2img", "Interrupted")
    elapsed = time.monotonic() - started
    assert elapsed < 30, elapsed
    assert re.search(r"Interrupted: stopped at step \d+/150 of image \d+/20", text), text
    expect(bar).to_be_hidden()
    assert not depth_loaded.worker.busy


def test_png_info_reads_parameters_and_sends_them_to_img2img(page, depth_loaded, tmp_path):
    text = "a castle on a hill\nNegative prompt: fog\nSteps: 7, Sampler: DDIM, CFG scale: 5.5, Seed: 4242, Size: 128x96"
    path = tmp_path / "with-info.png"
    path.write_bytes(images.encode_image(picture(), text, "png"))
    open_tab(page, "PNG Info")
    upload(panel(page, "pnginfo"), path)
    info = page.locator("#pnginfo_html")
    expect(info).to_contain_text("Steps: 7")
    expect(info).to_contain_text("a castle on a hill")
    shot(page, "pnginfo")
    page.locator("#pnginfo_send_img2img").click()
    scope = panel(page, "img2img")
    expect(scope.get_by_label("Prompt", exact=True)).to_have_value("a castle on a hill")
    expect(scope.get_by_label("Negative prompt", exact=True)).to_have_value("fog")
    expect(scope.get_by_label("number input for Sampling steps")).to_have_value("7")
    expect(scope.get_by_label("number input for CFG Scale")).to_have_value("5.5")
    expect(scope.get_by_label("Seed", exact=True)).to_have_value("4242")
    expect(scope.get_by_label("number input for Width")).to_have_value("128")
    expect(scope.locator("#img2img_image img")).to_be_visible()


def open_settings_page(page: Page, name: str) -> None:
    """A page of the Settings tab (A1111's list of pages on the left)."""
    page.locator("#settings_pages").get_by_label(name, exact=True).check()


def test_settings_are_applied_and_saved(page, server, data_dir):
    open_tab(page, "Settings")
    scope = panel(page, "settings")
    open_settings_page(page, "Saving images")
    box = scope.get_by_label("Always save all generated images")
    expect(box).to_be_checked()
    box.uncheck()
    pattern = scope.get_by_label("Images filename pattern (empty: NNNNN-[seed])")
    pattern.fill("[seed]-[prompt_words]")
    scope.locator("#settings_submit").click()
    expect(page.locator("#settings_result")).to_contain_text("Saved 2 settings")
    saved = (data_dir / "config.json").read_text("utf-8")
    assert '"samples_save": false' in saved and "[seed]-[prompt_words]" in saved
    assert server.app.service.settings.samples_save is False
    open_settings_page(page, "Paths")
    expect(scope.get_by_label("Output directory for img2img images")).to_have_value("outputs/img2img-images")
    shot(page, "settings_applied")
    # a bad value is refused with the setting's name, and nothing is saved
    open_settings_page(page, "Saving images")
    box.check()
    open_settings_page(page, "Limits")
    number = scope.get_by_label("Most images one request may make (batch count x batch size)")
    expect(number).to_have_value("64")  # the page shown has its value before we type
    number.fill("0")
    number.press("Tab")
    expect(number).to_have_value("0")
    scope.locator("#settings_submit").click()
    expect(page.locator("#settings_result .sd-status-error")).to_contain_text("max_batch_images")
    assert server.app.service.settings.samples_save is False
    number.fill("64")
    scope.locator("#settings_submit").click()
    expect(page.locator("#settings_result")).to_contain_text("Saved 1 setting")


# --- scripts, extensions, batch ------------------------------------------------------------------------


def gallery_images(page: Page, tab: str, count: int) -> list[Locator]:
    """The gallery's `count` images in order, once they are all there (grid or preview layout alike)."""
    gallery = page.locator(f"#{tab}_gallery")
    expect(gallery.get_by_role("button", name=f"Thumbnail {count} of {count}", exact=True).first).to_be_attached()
    thumbs = gallery.locator(".thumbnail-item img")
    by_src: dict[str, Locator] = {}
    for i in range(thumbs.count()):
        by_src.setdefault(thumbs.nth(i).get_attribute("src"), thumbs.nth(i))
    assert len(by_src) == count, list(by_src)
    return list(by_src.values())


def choose(page: Page, dropdown: Locator, option: str | re.Pattern) -> None:
    """Pick `option` in a Gradio dropdown as a user does: open it, click the option. A list opened while
    the page was still applying new choices (a busy machine) is closed and opened again, as a user would."""
    item = page.get_by_role("option", name=option, exact=True) if isinstance(option, str) else \
        page.get_by_role("option", name=option)  # fmt: skip
    for _ in range(3):
        dropdown.click()
        try:
            item.wait_for(state="visible", timeout=TIMEOUT_MS // 4)
            break
        except PlaywrightTimeoutError:
            page.keyboard.press("Escape")
    item.click()
    expect(dropdown).to_have_value(option)
    expect(page.get_by_role("listbox")).to_have_count(0)  # the list has closed


def test_xyz_plot_in_img2img_shows_grid_then_cells(page, depth_loaded, picture_file):
    scope = prepare_img2img(page, picture_file, "img2img", seed=404)
    upload(scope.locator("#img2img_image"), picture_file)
    expect(scope.locator("#img2img_image img")).to_be_visible()
    script = scope.get_by_label("Script", exact=True)
    group = scope.locator("#img2img_script_x_y_z_plot").first  # Gradio nests a second div with the id
    expect(script).to_have_value("None")
    expect(group).to_be_hidden()
    script.scroll_into_view_if_needed()
    choose(page, script, "X/Y/Z plot")
    expect(group).to_be_visible()
    choose(page, group.get_by_label("X type", exact=True), "Denoising")
    group.get_by_label("X values", exact=True).fill("0.4,1.0")
    group.scroll_into_view_if_needed()
    shot(page, "script_controls")

    scope.locator("#img2img_generate").click()
    text = wait_for_info(page, "img2img", "select a cell")
    assert "Denoising strength: 0.4" in text and "Seed: 404" in text  # the grid's text: its first cell's
    thumbs = gallery_images(page, "img2img", 3)
    grid, first, second = (fetch_image(page, thumb) for thumb in thumbs)
    assert first.shape == second.shape == (H, W, 3)
    assert grid.shape[1] > first.shape[1] and grid.shape[0] > first.shape[0], (grid.shape, first.shape)
    depth_used = scope.locator("#img2img_depth_used img")
    expect(depth_used).to_be_hidden()  # the grid has no depth map of its own
    page.locator("#img2img_html_info").scroll_into_view_if_needed()
    shot(page, "script_result")
    thumbs[2].click()
    wait_for_info(page, "img2img", "Denoising strength: 1")
    expect(depth_used).to_be_visible()
    assert fetch_image(page, depth_used).shape[:2] == (H, W)
    shot(page, "script_cell_selected")
    choose(page, script, "None")  # the tests after this one generate plain images
    expect(group).to_be_hidden()


def test_extensions_tab_lists_and_disables(page, server):
    open_tab(page, "Extensions")
    table = page.locator("#extensions_table")
    for text in ("xyz_plot", "prompt_prefix", "built-in", "X/Y/Z plot: the same job", "extensions-builtin"):
        expect(table).to_contain_text(text)
    shot(page, "tab_Extensions")
    boxes = page.locator("#extensions_enabled")
    boxes.get_by_label("prompt_prefix", exact=True).uncheck()
    page.locator("#extensions_apply").click()
    result = page.locator("#extensions_result")
    expect(result).to_contain_text("Disabled prompt_prefix: stopped now")
    expect(table).to_contain_text("disabled")
    assert server.app.service.settings.disabled_extensions == ["prompt_prefix"]
    assert "prompt_prefix" not in [e.name for e in server.app.service.extensions.enabled()]
    boxes.get_by_label("prompt_prefix", exact=True).check()
    page.locator("#extensions_apply").click()
    expect(result).to_contain_text("Enabled prompt_prefix again")
    assert server.app.service.settings.disabled_extensions == []


def test_batch_sub_tab_runs_a_folder(page, depth_loaded, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    for name, shift in (("a.png", 0), ("b.png", 60)):
        Image.fromarray(np.roll(picture(), shift, axis=1)).save(inp / name)
    open_tab(page, "img2img")
    open_mode(page, "Batch")
    scope = panel(page, "img2img")
    set_number(scope, "Width", W)
    set_number(scope, "Height", H)
    set_number(scope, "Sampling steps", 3)
    set_number(scope, "Seed", 505)
    scope.get_by_label("Input directory", exact=True).fill(str(inp))
    scope.get_by_label("Output directory", exact=True).fill(str(out))
    expect(scope.get_by_label("range slider for Mask blur")).to_be_visible()  # for a mask folder
    page.locator("#mode_img2img").scroll_into_view_if_needed()
    shot(page, "tab_img2img_Batch")
    scope.locator("#img2img_generate").click()
    text = wait_for_info(page, "img2img", "Batch finished")
    assert "2 done, 0 skipped (output exists), 0 failed, of 2" in text and "Done: a.png, b.png" in text
    assert sorted(p.name for p in out.iterdir()) == ["a-depth.png", "a.png", "b-depth.png", "b.png"]
    thumbs = gallery_images(page, "img2img", 2)
    for thumb, name in zip(thumbs, ("a.png", "b.png"), strict=True):
        assert np.array_equal(fetch_image(page, thumb), np.asarray(Image.open(out / name).convert("RGB")))
    page.locator("#img2img_gallery").scroll_into_view_if_needed()
    shot(page, "batch_result")
    open_mode(page, "img2img")


# --- the mask brush last: the editor's canvas keeps software WebGL busy and slows later steps ----------


def _image_rect(editor: Locator) -> tuple[float, float, float]:
    """(left, top, scale) of the image on screen: the editor centres it in its canvas at the shown zoom."""
    canvas = editor.locator("canvas").first.bounding_box()
    scale = float(editor.locator(".zoom-number").inner_text().strip().rstrip("%")) / 100
    left = canvas["x"] + (canvas["width"] - W * scale) / 2
    top = canvas["y"] + (canvas["height"] - H * scale) / 2
    return left, top, scale


def _paint_stroke(page: Page, editor: Locator, start: tuple[int, int], end: tuple[int, int]) -> None:
    """Drag the brush from `start` to `end` (image pixels), as a user paints."""
    left, top, scale = _image_rect(editor)
    page.mouse.move(left + start[0] * scale, top + start[1] * scale)
    page.mouse.down()
    for i in range(1, 5):
        x = start[0] + (end[0] - start[0]) * i / 4
        y = start[1] + (end[1] - start[1]) * i / 4
        page.mouse.move(left + x * scale, top + y * scale)
    page.mouse.up()


def _distance_to_segment(start: tuple[int, int], end: tuple[int, int]) -> np.ndarray:
    """Distance of every pixel centre to the segment start-end, HxW."""
    yy, xx = np.mgrid[0:H, 0:W] + 0.5
    (x0, y0), (x1, y1) = start, end
    t = np.clip(((xx - x0) * (x1 - x0) + (yy - y0) * (y1 - y0)) / ((x1 - x0) ** 2 + (y1 - y0) ** 2), 0, 1)
    return np.hypot(xx - (x0 + t * (x1 - x0)), yy - (y0 + t * (y1 - y0)))


def test_inpaint_stroke_changes_only_the_painted_area(page, depth_loaded, picture_file):
    scope = prepare_img2img(page, picture_file, "Inpaint", seed=202)
    set_number(scope, "Mask blur", 0)
    set_number(scope, "Denoising strength", 1)
    editor = scope.locator("#img2maskimg")
    upload(editor, picture_file)
    expect(editor.locator("canvas").first).to_be_visible()
    expect(editor.locator(".zoom-number")).to_contain_text("%")
    editor.scroll_into_view_if_needed()
    start, end = (60, 64), (130, 64)
    _paint_stroke(page, editor, start, end)
    shot(page, "inpaint_stroke")

    scope.locator("#img2img_generate").click()
    text = wait_for_info(page, "img2img", "Seed: 202")
    assert "Mask blur: 0" in text and "Masked content: original" in text
    out = fetch_image(page, scope.locator("#img2img_gallery img").first)
    assert out.shape == (H, W, 3)
    changed = np.abs(out.astype(int) - picture().astype(int)).max(-1) > 0
    # the stroke is a capsule around the dragged segment; the brush radius shows in its height
    rows = np.nonzero(changed.any(1))[0]
    assert len(rows), "nothing changed"
    radius = (rows.max() - rows.min() + 1) / 2
    assert 2 <= radius < 40, f"the changed area is not a brush stroke (half height {radius})"
    assert abs((rows.min() + rows.max() + 1) / 2 - start[1]) <= 3, "the stroke is not where it was painted"
    distance = _distance_to_segment(start, end)
    assert changed[distance < radius - 3].mean() > 0.9, "the result does not differ inside the stroke"
    assert not changed[distance > radius + 3].any(), "pixels outside the stroke changed"
    assert changed.mean() < 0.5
    shot(page, "inpaint_result")
    # the result goes on to img2img with one click
    page.locator("#img2img_send_to_img2img").click()
    expect(page.locator("#mode_img2img").get_by_role("tab", name="img2img", exact=True)).to_have_attribute(
        "aria-selected", "true"
    )
    sent = scope.locator("#img2img_image img")
    expect(sent).to_be_visible()
    assert np.array_equal(fetch_image(page, sent), out)
