"""Issue 17 through ``process``: <lora:> tags, embeddings in prompts, the VAE choice, styles, tiling.

Every test compares images (numbers): a LoRA tag against a checkpoint with the change baked in, an
embedding against the words its vectors came from, a VAE file against a checkpoint holding that VAE.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from modules.core import extra_networks as tags
from modules.core import infotext
from modules.core.errors import UserError, ValidationError
from modules.core.request import GenerationRequest
from modules.core.settings import Settings
from modules.core.styles import StyleDatabase, merge_prompts
from modules.generation.processing import ProcessingContext, process
from modules.models.checkpoints import CheckpointRegistry, HashCache
from modules.models.extra_networks import ExtraNetworks
from modules.models.manager import ModelManager
from modules.models.networks import lora_hashes
from tests.helpers.ldm_layout import write_checkpoint
from tests.helpers.network_files import lora_targets, lora_tensors, randn, write_malicious
from tests.models.test_networks import bake_text_lora, ldm_transformer_modules, lora_delta

# --- the prompt syntax and styles (plain data) -------------------------------------------------------


def test_lora_tags_are_parsed_as_a1111_and_removed_from_the_text():
    parsed = tags.parse_prompt("a <lora:clay:0.8> cat, <lyco:ink:0.5:0.25> <lora:x:te=0.3:unet=0.7> <hypernet:h:1>")
    assert parsed.text == "a  cat,   "
    assert parsed.networks == (tags.NetworkTag("clay", 0.8, 0.8), tags.NetworkTag("ink", 0.5, 0.25),
                               tags.NetworkTag("x", 0.3, 0.7))  # fmt: skip
    assert parsed.other == ("<hypernet:h:1>",)
    assert tags.parse_prompt("<lora:plain>").networks == (tags.NetworkTag("plain", 1.0, 1.0),)
    both = tags.prompt_networks("<lora:a:1>", "<lora:b:0.5> <lora:off:0>")
    assert [t.name for t in both] == ["a", "b"]  # multiplier 0 is off
    with pytest.raises(ValidationError, match="not a multiplier"):
        tags.parse_prompt("<lora:a:strong>")
    with pytest.raises(ValidationError, match="negative_prompt"):
        tags.prompt_networks("", "<lora:a:nan>")


def test_styles_csv_as_a1111(tmp_path):
    assert merge_prompts("oil painting of {prompt}, thick paint", "a cat") == "oil painting of a cat, thick paint"
    assert merge_prompts("masterpiece", "a cat") == "a cat, masterpiece"
    assert merge_prompts("masterpiece", "") == "masterpiece"
    path = tmp_path / "styles.csv"
    path.write_text('name,prompt,negative_prompt\n"Oil","oil painting of {prompt}","blurry"\n'
                    '#hidden,x,y\nSharp,"sharp, detailed",lowres\n', encoding="utf-8")  # fmt: skip
    db = StyleDatabase(path)
    assert db.names() == ["Oil", "Sharp"]
    assert db.apply("a cat", "ugly", ["Oil", "Sharp", "Gone"]) == (
        "oil painting of a cat, sharp, detailed", "ugly, blurry, lowres", ["Gone"])  # fmt: skip
    path.write_text("name,prompt,negative_prompt\nNew,{prompt} new,\n", encoding="utf-8")
    assert db.names() == ["New"]  # read again after a change


# --- a data folder with one tiny SD2 checkpoint, LoRA / embeddings / VAE folders -----------------------


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("extra")
    models = root / "models" / "Stable-diffusion"
    models.mkdir(parents=True)
    base = write_checkpoint(models, "base", "sd2", seed=3)
    for sub in ("models/Lora", "models/VAE", "embeddings"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    return root, base


def manager_for(root: Path) -> ModelManager:
    registry = CheckpointRegistry([root / "models" / "Stable-diffusion"], HashCache(None))
    registry.refresh()
    return ModelManager(registry, device=torch.device("cpu"), dtype=torch.float32, keep_in_memory=3)


def extra_for(root: Path) -> ExtraNetworks:
    return ExtraNetworks.create(lora_dirs=[root / "models" / "Lora"], embedding_dirs=[root / "embeddings"],
                                vae_dirs=[root / "models" / "VAE"], checkpoint_dirs=[root / "models" / "Stable-diffusion"])  # fmt: skip


@pytest.fixture(scope="module")
def ctx(env):
    root, _ = env
    mm = manager_for(root)
    mm.load("base")
    return ProcessingContext(mm, Settings(), root, extra=extra_for(root), styles=StyleDatabase(root / "styles.csv"))


def req(**kw) -> GenerationRequest:
    base = dict(prompt="a red house", negative_prompt="blurry", width=64, height=64, steps=3, seed=11,
                save_images=False, sampler_name="Euler")  # fmt: skip
    return GenerationRequest(**{**base, **kw})


def run(ctx: ProcessingContext, **kw):
    return process(req(**kw), ctx)


def image(ctx: ProcessingContext, **kw) -> np.ndarray:
    return run(ctx, **kw).images[0].astype(int)


@pytest.fixture(scope="module")
def baked(env, ctx):
    """A kohya LoRA file (UNet in LDM names, text encoder in kohya names) and a checkpoint with it baked in at
    text-encoder multiplier 0.8 and UNet multiplier 0.5 (the LDM tensors changed by hand)."""
    root, base = env
    model = ctx.models.current.model
    gen = torch.Generator().manual_seed(7)
    sd = {k: v.clone() for k, v in base.state_dict.items()}
    file_sd = {}
    for ldm in ldm_transformer_modules(base.state_dict):
        weight = sd[f"model.diffusion_model.{ldm}.weight"]
        w = {"lora_down.weight": randn((4, weight.shape[1]), gen, 0.5),
             "lora_up.weight": randn((weight.shape[0], 4), gen, 0.5)}  # fmt: skip
        file_sd.update({f"lora_unet_{ldm.replace('.', '_')}.{r}": v for r, v in w.items()})
        file_sd[f"lora_unet_{ldm.replace('.', '_')}.alpha"] = torch.tensor(2.0)
        weight += 0.5 * (2.0 / 4) * lora_delta(w, weight.shape)
    for t in lora_targets(model, text=True):
        if t.component == "text_encoder":
            w = {k: v * 5 for k, v in lora_tensors(t.module, 2, gen).items()}
            file_sd.update({f"{t.kohya}.{r}": v for r, v in w.items()})
            bake_text_lora(sd, t.path, 0.8 * lora_delta(w, t.module.weight.shape))
    save_file(file_sd, str(root / "models" / "Lora" / "clay.safetensors"))
    folder = root / "baked"
    folder.mkdir(exist_ok=True)
    path = folder / "baked.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    shutil.copy(base.config_path, path.with_suffix(".yaml"))
    return path


def test_lora_tag_gives_the_image_of_the_checkpoint_with_the_lora_baked_in(env, ctx, baked, tmp_path):
    plain = image(ctx)
    with_lora = run(ctx, prompt="a red house <lora:clay:0.8:0.5>")
    ours = with_lora.images[0].astype(int)
    # the same prompt text (tags removed) on the baked checkpoint
    registry = CheckpointRegistry([baked.parent], HashCache(None))
    registry.refresh()
    mm = ModelManager(registry, device=torch.device("cpu"), dtype=torch.float32)
    mm.load("baked")
    reference = process(req(), ProcessingContext(mm, Settings(), tmp_path)).images[0].astype(int)
    assert np.abs(plain - reference).mean() > 5  # the LoRA changes the picture a lot
    assert np.abs(ours - reference).max() <= 1  # float rounding of the merged weights at most 1/255
    assert np.abs(ours - reference).mean() < 0.01
    text = infotext.parse(with_lora.infotexts[0])
    file_hash = ctx.extra.lora_registry.get("clay").shorthash
    assert text["Lora hashes"] == f"clay: {file_hash}"
    assert text["Prompt"] == "a red house <lora:clay:0.8:0.5>"  # the tags stay in the infotext's prompt
    assert infotext.to_request_fields(text)["prompt"] == "a red house <lora:clay:0.8:0.5>"


def test_same_lora_set_does_nothing_and_no_tags_restore_bit_identical_images(ctx, baked):
    plain = image(ctx)
    first = image(ctx, prompt="a red house <lora:clay:0.8:0.5>")
    stack = ctx.extra.networks
    again = image(ctx, prompt="a red house <lora:clay:0.8:0.5>", seed=11)
    assert stack.last_stats["merged"] == 0 and stack.last_stats["restored"] == 0  # nothing re-done
    assert np.array_equal(first, again)
    assert np.array_equal(image(ctx), plain)  # restored exactly
    assert stack.last_stats["restored"] > 0 and stack.applied(ctx.models.current.model) == []
    off = image(ctx, prompt="a red house <lora:clay:0>")
    assert np.array_equal(off, plain)  # multiplier 0 = off
    neg = image(ctx, negative_prompt="blurry <lora:clay:0.8:0.5>")
    assert np.abs(neg - plain).mean() > 1  # a tag in the negative prompt applies too


def test_unknown_lora_is_a_warning_and_the_image_is_the_plain_one(ctx):
    plain = image(ctx)
    r = run(ctx, prompt="a red house <lora:nowhere:1>")
    assert "couldn't find Lora with name nowhere" in r.warnings
    assert np.array_equal(r.images[0].astype(int), plain)


def test_embedding_of_two_words_gives_their_image(env, ctx):
    root, _ = env
    model = ctx.models.current.model
    ids = model.tokenizer.encode("red house")
    assert len(ids) == 2
    vectors = model.text_encoder.get_input_embeddings().weight[ids].detach().clone()
    torch.save(
        {"string_to_param": {"*": vectors}, "step": 300, "name": "redhouse"}, root / "embeddings" / "redhouse.pt"
    )
    words = run(ctx, prompt="a red house")
    emb = run(ctx, prompt="a redhouse")
    assert np.array_equal(emb.images[0], words.images[0])
    other = run(ctx, prompt="a blue house").images[0]
    assert not np.array_equal(other, words.images[0])
    text = infotext.parse(emb.infotexts[0])
    assert re.fullmatch(r"redhouse: [0-9a-f]{12}", text["TI hashes"])
    neg = run(ctx, negative_prompt="redhouse").images[0]
    assert np.array_equal(neg, run(ctx, negative_prompt="red house").images[0])  # in the negative prompt too


def vae_only(state_dict: dict) -> dict:
    return {k: v for k, v in state_dict.items() if k.startswith("first_stage_model.")}


def test_vae_file_gives_the_image_of_a_checkpoint_with_that_vae(env, ctx, tmp_path):
    root, base = env
    other = write_checkpoint(tmp_path, "other", "sd2", seed=9)
    save_file({k[len("first_stage_model."):]: v.contiguous() for k, v in vae_only(other.state_dict).items()},
              str(root / "models" / "VAE" / "other.vae.safetensors"))  # fmt: skip
    ctx.extra.vae_registry.refresh()
    combo = {**base.state_dict, **vae_only(other.state_dict)}
    folder = tmp_path / "combo"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in combo.items()}, str(folder / "combo.safetensors"))
    shutil.copy(base.config_path, folder / "combo.yaml")
    registry = CheckpointRegistry([folder], HashCache(None))
    registry.refresh()
    mm = ModelManager(registry, device=torch.device("cpu"), dtype=torch.float32)
    mm.load("combo")
    reference = process(req(), ProcessingContext(mm, Settings(), tmp_path)).images[0]
    plain = run(ctx).images[0]
    with_vae = run(ctx, override_settings={"sd_vae": "other.vae.safetensors"})
    assert np.array_equal(with_vae.images[0], reference)
    assert not np.array_equal(plain, reference)
    text = infotext.parse(with_vae.infotexts[0])
    assert text["VAE"] == "other.vae.safetensors"
    assert text["VAE hash"] == ctx.extra.vae_registry.resolve("other.vae.safetensors", None).shorthash
    assert np.array_equal(run(ctx).images[0], plain)  # the next job (Automatic) has the checkpoint's own again
    assert "VAE" not in infotext.parse(run(ctx).infotexts[0])
    with pytest.raises(UserError, match="not found"):
        run(ctx, override_settings={"sd_vae": "missing.safetensors"})


def test_styles_are_applied_and_unknown_ones_warned(env, ctx):
    root, _ = env
    (root / "styles.csv").write_text("name,prompt,negative_prompt\nHouse,a red {prompt},blurry\n", encoding="utf-8")
    styled = run(ctx, prompt="house", negative_prompt="", styles=["House", "Nope"])
    assert np.array_equal(styled.images[0], run(ctx).images[0])
    assert styled.prompts == ["a red house"] and styled.negative_prompts == ["blurry"]
    assert "styles not found in styles.csv: Nope" in styled.warnings


def seam(img: np.ndarray) -> tuple[float, float]:
    """(wrap-around difference: last column vs first, mean neighbour difference inside), both axes."""
    a = img.astype(float)
    wrap = (np.abs(a[:, -1] - a[:, 0]).mean() + np.abs(a[-1] - a[0]).mean()) / 2
    inner = (np.abs(np.diff(a, axis=1)).mean() + np.abs(np.diff(a, axis=0)).mean()) / 2
    return wrap, inner


def test_tiling_makes_the_image_wrap_around(ctx):
    plain = run(ctx, width=128, height=128)
    tiled = run(ctx, width=128, height=128, tiling=True)
    (wrap_plain, inner_plain), (wrap_tiled, inner_tiled) = seam(plain.images[0]), seam(tiled.images[0])
    # measured here: plain wrap 34.9 vs 25.8 between neighbours inside; tiled wrap 24.0 vs 25.8
    assert wrap_tiled < 1.05 * inner_tiled  # the edges continue each other as neighbours do
    assert wrap_plain > 1.25 * inner_plain  # without tiling they do not
    assert infotext.parse(tiled.infotexts[0])["Tiling"] == "True"
    assert infotext.to_request_fields(infotext.parse(tiled.infotexts[0]))["tiling"] is True
    model = ctx.models.current.model
    assert all(m.padding_mode == "zeros" for m in model.unet.modules() if isinstance(m, torch.nn.Conv2d))
    assert np.array_equal(run(ctx, width=128, height=128).images[0], plain.images[0])  # restored after


@pytest.mark.parametrize("kind", ["lora", "embedding", "vae"])
def test_malicious_pickles_are_refused_without_running_code(env, ctx, tmp_path, kind):
    root, _ = env
    marker = tmp_path / "pwned"
    if kind == "lora":
        write_malicious(root / "models" / "Lora" / "evil.pt", marker, {"lora_unet_x.alpha": torch.tensor(1.0)})
        with pytest.raises(UserError, match="evil"):
            run(ctx, prompt="a red house <lora:evil:1>")
        (root / "models" / "Lora" / "evil.pt").unlink()
    elif kind == "embedding":
        write_malicious(root / "embeddings" / "evilemb.pt", marker, {"string_to_param": {"*": torch.zeros(1, 8)}})
        r = run(ctx, prompt="a evilemb house")
        assert any(w.startswith("embedding evilemb not used") for w in r.warnings)
        (root / "embeddings" / "evilemb.pt").unlink()
    else:
        write_malicious(root / "models" / "VAE" / "evil.pt", marker, {"encoder.conv_in.weight": torch.zeros(1)})
        ctx.extra.vae_registry.refresh()
        with pytest.raises(UserError, match="evil"):
            run(ctx, override_settings={"sd_vae": "evil.pt"})
        (root / "models" / "VAE" / "evil.pt").unlink()
    assert not marker.exists()


def test_lora_hashes_infotext_round_trip(ctx, baked):
    r = run(ctx, prompt="<lora:clay:1> a red house, <lora:clay:0.5>")
    text = infotext.parse(r.infotexts[0])
    applied = ctx.extra.networks.applied(ctx.models.current.model)
    assert text["Lora hashes"] == lora_hashes(applied) and len(applied) == 2
    fields = infotext.to_request_fields(text)
    assert fields["prompt"] == "<lora:clay:1> a red house, <lora:clay:0.5>"
    pasted = {k: v for k, v in fields.items() if k != "override_settings"}
    again = process(GenerationRequest(**{**req().__dict__, **pasted}), ctx)
    assert np.array_equal(again.images[0], r.images[0])  # pasted back, the same picture


def test_xyz_prompt_sr_over_lora_weights_and_the_vae_axis(env, ctx, baked):
    import dataclasses

    from modules.app.extensions import BUILTIN_DIR, ExtensionRegistry

    root, _ = env
    save_file({k[len("first_stage_model.") :]: v.contiguous() for k, v in vae_only(
        write_checkpoint(root / "baked", "vae-src", "sd2", seed=12, with_yaml=False).state_dict).items()},
        str(root / "models" / "VAE" / "xyz.safetensors"))  # fmt: skip
    ctx.extra.vae_registry.refresh()
    xyz = dataclasses.replace(ctx, hooks=ExtensionRegistry.load([BUILTIN_DIR]))
    args = {"x_type": "Prompt S/R", "x_values": "clay:0.2,clay:0.6,clay:1.0", "y_type": "VAE",
            "y_values": "None,xyz.safetensors"}  # fmt: skip
    r = process(req(prompt="a red house <lora:clay:0.2>", script_name="X/Y/Z plot", script_args=args), xyz)
    cells = r.images[1:]
    assert len(cells) == 6
    for row in range(2):  # the LoRA weight changes the picture along each row
        a, b, c = (cells[row * 3 + i].astype(int) for i in range(3))
        assert np.abs(a - b).mean() > 0.5 and np.abs(b - c).mean() > 0.5
    assert np.array_equal(cells[2], image(ctx, prompt="a red house <lora:clay:1.0>").astype(np.uint8))
    assert np.abs(cells[0].astype(int) - cells[3].astype(int)).mean() > 0.5  # the VAE changes it too
    texts = [infotext.parse(t) for t in r.infotexts[1:]]
    assert [t["Prompt"] for t in texts[:3]] == [f"a red house <lora:clay:{w}>" for w in ("0.2", "0.6", "1.0")]
    assert "VAE" not in texts[0] and texts[3]["VAE"] == "xyz.safetensors"
    assert "VAE" not in infotext.parse(run(ctx).infotexts[0])  # the next job has the checkpoint's own VAE again
