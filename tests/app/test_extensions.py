"""Extensions: discovery and order, hooks, failures reported by name; the built-in X/Y/Z plot."""

from __future__ import annotations

import importlib
import shutil
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from modules.app.extensions import BUILTIN_DIR, ExtensionRegistry, discover
from modules.core.errors import ValidationError
from modules.core.progress import JobControl
from modules.core.request import GenerationRequest
from modules.core.settings import Settings
from modules.generation.processing import ProcessingContext, process
from modules.models.checkpoints import CheckpointRegistry, HashCache
from modules.models.manager import ModelManager
from tests.helpers.imaging import png
from tests.helpers.ldm_layout import write_checkpoint

W, H = 96, 64


def picture(seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 255, (H, W, 3)).astype(np.uint8)


def write_ext(folder, name: str, body: str) -> None:
    (folder / name).mkdir(parents=True)
    (folder / name / "__init__.py").write_text(textwrap.dedent(body))


@pytest.fixture(scope="module")
def models(tmp_path_factory, depth_ckpt):
    root = tmp_path_factory.mktemp("ext-models")
    shutil.copy(depth_ckpt.path, root / "a-depth.safetensors")
    shutil.copy(depth_ckpt.config_path, root / "a-depth.yaml")
    write_checkpoint(root, "b-depth", "sd2-depth", seed=5)
    reg = CheckpointRegistry([root], HashCache(None))
    reg.refresh()
    mm = ModelManager(reg, device=torch.device("cpu"), dtype=torch.float32, keep_in_memory=2)
    mm.load("a-depth")
    return mm


def ctx_with(models, registry, tmp_path, **settings) -> ProcessingContext:
    models.load("a-depth")
    return ProcessingContext(models, Settings().override(settings), tmp_path, hooks=registry, control=JobControl())


def req(**kw) -> GenerationRequest:
    base = dict(prompt="a house", init_images=[png(picture())], width=W, height=H, steps=3, seed=5, save_images=False)
    base.update(kw)
    return GenerationRequest(**base)


# --- the extension system ---------------------------------------------------------------------------


def test_discovery_order_builtin_then_user_sorted(tmp_path):
    user = tmp_path / "extensions"
    for name in ("zeta", "alpha"):
        write_ext(user, name, "def register(ext):\n    pass\n")
    (user / "not-an-extension").mkdir()
    found = [(p.name, builtin) for p, builtin in discover([BUILTIN_DIR, user])]
    builtin = [n for n, b in found if b]
    assert builtin == sorted(builtin) and {"xyz_plot", "prompt_prefix"} <= set(builtin)
    assert [n for n, b in found if not b] == ["alpha", "zeta"]


def test_hooks_change_request_latents_image_and_infotext(tmp_path, models):
    user = tmp_path / "extensions"
    write_ext(
        user,
        "tweaks",
        """
        import dataclasses
        seen = []
        def register(ext):
            ext.before_process(lambda r, a: dataclasses.replace(r, prompt=r.prompt + a.get("suffix", "")))
            ext.on_step(lambda s, a: seen.append(s.step) or (s.latents * 0 if a.get("zero") else None))
            ext.after_image(lambda info, a: 255 - info.image if a.get("invert") else None)
            ext.infotext_fields(lambda r, a: {"Tweaked": a.get("suffix", "").strip()} if a else {})
        """,
    )
    reg = ExtensionRegistry.load([user])
    ctx = ctx_with(models, reg, tmp_path)
    plain = process(req(), ctx)
    args = {"tweaks": {"suffix": " at night", "invert": True}}
    tweaked = process(req(extension_args=args), ctx)
    assert "a house at night" in tweaked.infotexts[0] and "Tweaked: at night" in tweaked.infotexts[0]
    ref = process(req(prompt="a house at night"), ctx)
    assert np.array_equal(tweaked.images[0], 255 - ref.images[0])
    assert "Tweaked" not in plain.infotexts[0]


def test_failing_extension_is_named_and_generation_continues(tmp_path, models):
    user = tmp_path / "extensions"
    write_ext(user, "broken", "def register(ext):\n    ext.on_step(lambda s, a: 1 / 0)\n")
    write_ext(user, "wont_load", "raise ImportError('missing dependency foo')\n")
    reg = ExtensionRegistry.load([user])
    status = {s["name"]: s for s in reg.status()}
    assert "missing dependency foo" in status["wont_load"]["error"]
    r = process(req(), ctx_with(models, reg, tmp_path))
    assert len(r.images) == 1
    assert any("broken" in w and "ZeroDivisionError" in w for w in r.warnings)


def test_disabled_extensions_do_not_load(tmp_path):
    user = tmp_path / "extensions"
    write_ext(user, "noisy", "raise RuntimeError('should not be imported')\n")
    reg = ExtensionRegistry.load([user], disabled=["noisy"])
    assert reg.status()[0]["enabled"] is False and reg.status()[0]["error"] is None


def test_example_extension_prompt_prefix(tmp_path, models):
    reg = ExtensionRegistry.load([BUILTIN_DIR])
    ctx = ctx_with(models, reg, tmp_path)
    r = process(req(extension_args={"prompt_prefix": {"enabled": True, "prefix": "oil painting"}}), ctx)
    assert r.infotexts[0].startswith("oil painting, a house") and "Prompt prefix: oil painting" in r.infotexts[0]
    off = process(req(extension_args={"prompt_prefix": {"enabled": False, "prefix": "x"}}), ctx)
    assert off.infotexts[0].startswith("a house")


# --- X/Y/Z plot -------------------------------------------------------------------------------------


def load_xyz():
    """The built-in extension's axes module, imported as the extension loader imports it."""
    ExtensionRegistry.load([BUILTIN_DIR])
    return importlib.import_module("sd_extension_builtin_xyz_plot.axes")


@pytest.mark.parametrize(
    "text, kind, expected",
    [("1-5", "int", [1, 2, 3, 4, 5]), ("1-9 (+3)", "int", [1, 4, 7]), ("10-1 (-4)", "int", [10, 6, 2]),
     ("1-10 [4]", "int", [1, 4, 7, 10]), ("0.4-1.0 (+0.2)", "float", [0.4, 0.6, 0.8, 1.0]),
     ("0.4,0.7,1.0", "float", [0.4, 0.7, 1.0]), ("0-1 [5]", "float", [0.0, 0.25, 0.5, 0.75, 1.0]),
     ("3, 1-2", "int", [3, 1, 2])],
)  # fmt: skip
def test_axis_value_parsing(text, kind, expected):
    axes = load_xyz()
    items = axes.split_values(text)
    assert (axes.parse_ints if kind == "int" else axes.parse_floats)(items) == expected


def test_quoted_values_keep_commas():
    axes = load_xyz()
    assert axes.split_values('cat, "red, blue", dog') == ["cat", "red, blue", "dog"]


def test_xyz_grid_over_checkpoints_and_strengths(tmp_path, models):
    reg = ExtensionRegistry.load([BUILTIN_DIR])
    ctx = ctx_with(models, reg, tmp_path)
    args = {
        "x_type": "Denoising",
        "x_values": "0.4,0.7,1.0",
        "y_type": "Checkpoint name",
        "y_values": "a-depth,b-depth",
    }
    r = process(req(script_name="X/Y/Z plot", script_args=args, save_images=True), ctx)
    assert len(r.images) == 1 + 6 and len(r.infotexts) == 7
    assert ctx.models.current.info.name == "a-depth.safetensors"  # restored after the plot
    grid_mod = importlib.import_module("sd_extension_builtin_xyz_plot.grid")
    size, top, left = grid_mod.layout(["Denoising: 0.4", "Denoising: 0.7", "Denoising: 1.0"],
                                      ["Checkpoint name: a-depth", "Checkpoint name: b-depth"], W, H)
    assert r.grid.shape == (top + 2 * H, left + 3 * W, 3)
    for c, value in enumerate(["0.4", "0.7", "1.0"]):
        label = grid_mod.render_label(f"Denoising: {value}", W, top, size)
        assert np.array_equal(r.grid[:top, left + c * W : left + (c + 1) * W], label)
    for row, name in enumerate(["a-depth", "b-depth"]):
        label = grid_mod.render_label(f"Checkpoint name: {name}", left, H, size)
        assert np.array_equal(r.grid[top + row * H : top + (row + 1) * H, :left], label)
    # every cell equals the single generation with the same settings
    cells = r.images[1:]
    for k, (name, strength) in enumerate((n, s) for n in ("a-depth", "b-depth") for s in (0.4, 0.7, 1.0)):
        single = process(req(denoising_strength=strength, override_settings={"sd_model_checkpoint": name}), ctx)
        assert np.array_equal(cells[k], single.images[0]), (name, strength)
        assert np.array_equal(
            r.grid[top + (k // 3) * H : top + (k // 3 + 1) * H, left + (k % 3) * W :][:, :W], cells[k]
        )
        assert f"Denoising strength: {strength:g}" in r.infotexts[1 + k] and f"Model: {name}" in r.infotexts[1 + k]
    grids = list((tmp_path / "outputs" / "img2img-grids").rglob("*-grid.png"))
    assert grids and Image.open(grids[0]).size == (r.grid.shape[1], r.grid.shape[0])


def test_xyz_z_axis_and_seed_fixed(tmp_path, models):
    reg = ExtensionRegistry.load([BUILTIN_DIR])
    ctx = ctx_with(models, reg, tmp_path)
    args = {"x_type": "Steps", "x_values": "2-3", "z_type": "Sampler", "z_values": "Euler,DDIM"}
    r = process(req(seed=-1, script_name="X/Y/Z plot", script_args=args), ctx)
    assert len(r.images) == 5 and len(set(r.seeds[1:])) == 1


@pytest.mark.parametrize(
    "args, field",
    [({"x_type": "Bogus", "x_values": "1"}, "script_args.x_type"),
     ({"x_type": "Steps", "x_values": "a-b"}, "script_args.x_values"),
     ({"x_type": "Sampler", "x_values": "Nope"}, "script_args.x_values"),
     ({"x_type": "Denoising", "x_values": ""}, "script_args.x_values")],
)  # fmt: skip
def test_xyz_bad_arguments_name_the_field(tmp_path, models, args, field):
    reg = ExtensionRegistry.load([BUILTIN_DIR])
    with pytest.raises(ValidationError) as e:
        process(req(script_name="X/Y/Z plot", script_args=args), ctx_with(models, reg, tmp_path))
    assert e.value.field == field


def test_unknown_script(tmp_path, models):
    reg = ExtensionRegistry.load([BUILTIN_DIR])
    with pytest.raises(ValidationError, match="X/Y/Z plot"):
        process(req(script_name="Nope"), ctx_with(models, reg, tmp_path))


def test_xyz_labels_fit_their_cells():
    """Long labels (checkpoint titles) are broken and the font shrinks until they fit (A1111 fits them too)."""
    ExtensionRegistry.load([BUILTIN_DIR])  # imports the built-in extensions as the app does
    grid_mod = importlib.import_module("sd_extension_builtin_xyz_plot.grid")
    title = "Checkpoint name: 512-depth-ema-finetuned-on-many-concept-renders.safetensors [0123456789]"
    size, top, left = grid_mod.layout([title, "Denoising: 0.4"], [title], 128, 128)
    fnt = grid_mod.font(size)
    for width, height in ((128, top), (left, 128)):
        lines = grid_mod.wrap(title, fnt, width - 2 * grid_mod.PAD)
        assert "".join(lines).replace(" ", "") == title.replace(" ", "")  # nothing dropped
        assert all(fnt.getlength(line) <= width - 2 * grid_mod.PAD for line in lines)  # nothing runs over
        assert len(lines) * grid_mod.line_height(fnt) + 2 * grid_mod.PAD <= height
    assert top <= 128 // 2 and size < grid_mod.font_size(128, 128)
