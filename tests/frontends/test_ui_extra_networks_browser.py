"""Issue 17 in a real browser (Chromium through Playwright): the Extra Networks cards insert their tag
into the prompt, search filters them, Styles apply to the prompt, the SD VAE dropdown sits in the top bar."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from modules.frontends.ui.extra_networks import insert_text
from tests.frontends.test_ui_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, sync_playwright
from tests.helpers.server import populate, running_server

pytestmark = [
    pytest.mark.skipif(sync_playwright is None, reason="the playwright python package is not installed"),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"Chromium is not installed at {CHROMIUM}"),
]


def test_insert_text_adds_once_and_a_second_click_takes_it_out():
    assert insert_text("", "<lora:clay:1>") == "<lora:clay:1>"
    assert insert_text("a house ", "<lora:clay:1>") == "a house <lora:clay:1>"
    assert insert_text("a house <lora:clay:1>", "<lora:clay:1>") == "a house"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, sd2_ckpt) -> Path:
    root = tmp_path_factory.mktemp("ui-extra")
    populate(root, sd2_ckpt)
    lora = root / "models" / "Lora"
    lora.mkdir(parents=True)
    meta = {"ss_tag_frequency": json.dumps({"1_clay": {"claymation": 7}})}
    save_file({"lora_unet_x.alpha": torch.tensor(1.0)}, str(lora / "clay.safetensors"), metadata=meta)
    save_file({"lora_unet_x.alpha": torch.tensor(1.0)}, str(lora / "inkwash.safetensors"))
    Image.new("RGB", (120, 90), (220, 120, 40)).save(lora / "clay.preview.png")
    (root / "models" / "VAE").mkdir(parents=True)
    (root / "styles.csv").write_text("name,prompt,negative_prompt\nOil,oil painting of {prompt},blurry\n", "utf-8")
    return root


@pytest.fixture(scope="module")
def page(data_dir):
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(exist_ok=True)
    with running_server(data_dir) as srv, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.set_default_timeout(TIMEOUT_MS)
        expect.set_options(timeout=TIMEOUT_MS // 4)
        pg = context.new_page()
        pg.goto(srv.url)
        expect(pg.get_by_label("Stable Diffusion checkpoint")).to_be_visible()
        yield pg
        browser.close()


def test_card_click_inserts_the_lora_tag_and_search_filters(page):
    from playwright.sync_api import expect

    expect(page.locator("#sd_vae")).to_be_visible()
    prompt = page.locator("#txt2img_prompt textarea")
    prompt.fill("a house")
    page.locator("#txt2img_extra_networks").get_by_text("Extra Networks").first.click()
    cards = page.locator("#txt2img_lora_cards .sd-card")
    expect(cards).to_have_count(2)
    clay = page.locator('#txt2img_lora_cards .sd-card[title="<lora:clay:1>"]')
    expect(clay.locator("img")).to_be_visible()  # the preview beside the file
    expect(clay).to_contain_text("claymation")  # the trigger words from the training tags
    page.screenshot(path=str(ARTIFACTS / "extra_networks_cards.png"), full_page=True)
    clay.click()
    expect(prompt).to_have_value("a house <lora:clay:1>")
    page.locator("#txt2img_extra_search textarea, #txt2img_extra_search input").first.fill("ink")
    expect(cards).to_have_count(1)
    expect(cards.first).to_have_attribute("title", "<lora:inkwash:1>")
    cards.first.click()
    expect(prompt).to_have_value("a house <lora:clay:1> <lora:inkwash:1>")


def test_styles_apply_to_the_prompt(page):
    from playwright.sync_api import expect

    prompt = page.locator("#txt2img_prompt textarea")
    negative = page.locator("#txt2img_neg_prompt textarea")
    prompt.fill("a cat")
    negative.fill("")
    page.locator("#txt2img_styles input").first.click()
    page.get_by_role("option", name="Oil").click()
    page.keyboard.press("Escape")
    page.locator("#txt2img_style_apply").click()
    expect(prompt).to_have_value("oil painting of a cat")
    expect(negative).to_have_value("blurry")
    page.screenshot(path=str(ARTIFACTS / "extra_networks_styles.png"), full_page=False)
