"""--medvram / --lowvram (modules.offload): the same images, and every weight on the execution device when used.

There is no GPU here, so the execution device is the CPU too and nothing physically moves; what a GPU
would catch (a weight used while its part is still in RAM: a device mismatch) is checked against the
offloader's own account of what is on the device, for every torch call the pipeline makes.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from modules.app import options as cmd_args
from modules.core.hooks import Hooks
from modules.core.progress import JobControl
from modules.core.request import GenerationRequest
from modules.core.settings import Settings
from modules.frontends.batch import cli as batch_cli
from modules.generation.processing import ProcessingContext, process
from modules.models import devices, offload, optimizations
from modules.models.checkpoints import CheckpointRegistry, HashCache
from modules.models.manager import ModelManager
from modules.models.sd_model import StableDiffusionModel
from tests.generation.test_engine import H, W, picture, png

# calls that look at or move a weight without computing with it
BOOKKEEPING = {"to", "__get__", "__set__", "_has_compatible_shallow_copy_type", "is_floating_point", "is_complex",
               "element_size", "numel", "size", "dim", "data_ptr", "is_contiguous", "__hash__"}  # fmt: skip


class ResidencyCheck(TorchFunctionMode):
    """Records every computation given a weight whose part is not on the device by the offloader's account."""

    def __init__(self, offloader: offload.Offloader):
        super().__init__()
        self.offloader = offloader
        self.owner = {
            id(p): m for m in (*offloader.shell, *(u.module for u in offloader.units)) for p in m.parameters()
        }
        self.used: set[int] = set()
        self.violations: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") not in BOOKKEEPING:
            resident = {id(m) for m in self.offloader.resident()}
            for t in tree_leaves((args, kwargs)):
                if isinstance(t, nn.Parameter) and id(t) in self.owner:
                    self.used.add(id(t))
                    if id(self.owner[id(t)]) not in resident:
                        self.violations.append(f"{func.__name__} used a {tuple(t.shape)} weight left in RAM")
        return func(*args, **kwargs)


def manager(tmp_path, ckpt, mode: str, keep: int = 1, also=(), dtype: torch.dtype = torch.float32) -> ModelManager:
    registry = CheckpointRegistry([ckpt.path.parent, *(c.path.parent for c in also)], HashCache(None))
    registry.refresh()
    return ModelManager(registry, device=torch.device("cpu"), dtype=dtype, offload_mode=mode, keep_in_memory=keep)


def generate(mm: ModelManager, tmp_path, clip_skip: int = 1) -> np.ndarray:
    request = GenerationRequest(prompt="a house", negative_prompt="blur", init_images=[png(picture())], width=W,
                                height=H, steps=3, seed=5, denoising_strength=0.8, save_images=False)  # fmt: skip
    settings = Settings().override({"CLIP_stop_at_last_layers": clip_skip})
    return process(request, ProcessingContext(mm, settings, tmp_path, hooks=Hooks(), control=JobControl())).images[0]


@pytest.fixture(scope="module")
def reference(depth_ckpt, tmp_path_factory) -> dict[str, np.ndarray]:
    mm = manager(tmp_path_factory.mktemp("plain"), depth_ckpt, "none")
    mm.load("tiny-depth")
    out = tmp_path_factory.mktemp("out")
    return {kind: generate(mm, out, **extra) for kind, extra in (("img2img", {}), ("clip skip", {"clip_skip": 2}))}


@pytest.mark.parametrize("mode", ["med", "low"])
def test_offloaded_images_equal_the_plain_ones_and_no_weight_is_used_from_ram(mode, depth_ckpt, reference, tmp_path):
    mm = manager(tmp_path, depth_ckpt, mode)
    model = mm.load("tiny-depth").model
    offloader = model.offloader
    assert offloader is not None and model.device == torch.device("cpu") and offloader.current is None
    with ResidencyCheck(offloader) as check:
        out = generate(mm, tmp_path)
        skipped = generate(mm, tmp_path, clip_skip=2)  # the text encoder's final norm called on its own
    assert not check.violations, check.violations[:5]
    assert np.array_equal(out, reference["img2img"]) and np.array_equal(skipped, reference["clip skip"])
    # every part ran: MiDaS, the text encoder, the VAE both ways, every UNet block
    for unit in offloader.units:
        assert any(id(p) in check.used for p in unit.module.parameters()), f"{unit.name} never ran"
    assert offloader.moves >= len(offloader.units)
    assert offloader.peak_bytes == offloader.most_bytes < offloader.total_bytes


def test_every_weight_is_in_exactly_one_part(depth_model):
    everything = {id(p) for m in (depth_model.unet, depth_model.vae, depth_model.text_encoder, depth_model.depth_model)
                  for p in m.parameters()}  # fmt: skip
    for mode in ("med", "low"):
        units, shell = offload.plan(depth_model, mode)
        owned = [id(p) for m in (*shell, *(u.module for u in units)) for p in m.parameters()]
        assert len(owned) == len(set(owned)) and set(owned) == everything, mode
    units, shell = offload.plan(depth_model, "low")
    names = {u.name for u in units}
    assert {"unet.down_blocks.0", "unet.mid_block", "unet.up_blocks.0", "vae.encoder", "vae.decoder",
            "text_encoder.embeddings", "text_encoder.layers.0", "depth_model"} <= names  # fmt: skip
    assert sum(offload.nbytes(m) for m in shell) < 0.05 * offload.nbytes(depth_model.unet)
    text_parts = [u for u in units if u.name.startswith("text_encoder.")]
    assert len(text_parts) == 1 + len(depth_model.text_encoder.encoder.layers)
    with pytest.raises(ValueError, match="unknown offload mode"):
        offload.plan(depth_model, "ultra")


def test_switching_models_sends_the_old_ones_part_back(depth_ckpt, sd2_ckpt, tmp_path):
    mm = manager(tmp_path, depth_ckpt, "med", keep=2, also=[sd2_ckpt])
    depth = mm.load("tiny-depth").model
    generate(mm, tmp_path)
    assert depth.offloader.current is not None
    mm.load("tiny-sd2")
    assert depth.offloader.current is None  # kept loaded, nothing on the device
    mm.load("tiny-depth")
    assert np.array_equal(generate(mm, tmp_path), generate(mm, tmp_path))


def test_moving_the_model_turns_offloading_off(depth_ckpt, tmp_path):
    mm = manager(tmp_path, depth_ckpt, "low")
    model = mm.load("tiny-depth").model
    block = model.unet.down_blocks[0]
    assert hasattr(block, "_hf_hook")
    model.to("cpu", torch.float32)
    assert model.offloader is None and model.execution_device is None
    assert not any(hasattr(m, "_hf_hook") for m in model.unet.modules())
    assert block.forward.__func__ is type(block).forward  # the class's own forward again


def test_compile_is_not_combined_with_offloading(depth_ckpt, tmp_path, caplog):
    model = manager(tmp_path, depth_ckpt, "med").load("tiny-depth").model
    with caplog.at_level(logging.WARNING):
        applied = optimizations.apply(model, Settings().override({"opt_torch_compile": True}))
    assert applied["compile"] is False and "torch.compile is not used" in caplog.text
    assert not hasattr(model.unet, "_orig_mod")


def test_flags_choose_the_mode_and_cpu_ignores_them(caplog):
    assert devices.offload_mode(torch.device("cuda"), medvram=True) == "med"
    assert devices.offload_mode(torch.device("cuda"), lowvram=True) == "low"
    assert devices.offload_mode(torch.device("mps")) == "none"
    with caplog.at_level(logging.WARNING):
        assert devices.offload_mode(torch.device("cpu"), medvram=True) == "none"
    assert "no effect on the CPU" in caplog.text
    args = cmd_args.parse_args(["--lowvram"])
    assert args.lowvram and not args.medvram
    with pytest.raises(SystemExit):
        cmd_args.parse_args(["--medvram", "--lowvram"])
    batch = batch_cli.build_parser().parse_args(["--input", "in", "--output", "out", "--medvram", "--device", "cuda"])
    passed = cmd_args.Options.from_namespace(batch)
    assert passed.medvram and not passed.lowvram and passed.device == "cuda"
    with pytest.raises(ValueError, match="unknown offload mode"):
        ModelManager(CheckpointRegistry([], HashCache(None)), device=torch.device("cpu"), dtype=torch.float32,
                     offload_mode="high")  # fmt: skip


def test_on_a_gpu_only_the_current_model_is_there(depth_ckpt, sd2_ckpt, tmp_path, monkeypatch):
    """sd_checkpoints_keep_in_cpu (on by default): where each model is sent when the current one changes."""
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "tiny-broken.safetensors").write_bytes(b"not a checkpoint")
    mm = manager(tmp_path, depth_ckpt, "none", keep=3, also=[sd2_ckpt])
    mm.registry.folders.append(broken)
    mm.registry.refresh()
    depth, sd2 = mm.load("tiny-depth").model, mm.load("tiny-sd2").model
    # no GPU here: record where each model is sent instead of moving it
    where: dict[int, torch.device] = {}
    moves: list[tuple[str, str]] = []

    def to(m, device, dtype):
        where[id(m)] = torch.device(device)
        moves.append(("depth" if m is depth else "sd2", where[id(m)].type))

    monkeypatch.setattr(StableDiffusionModel, "device", property(lambda m: where.get(id(m), torch.device("cpu"))))
    monkeypatch.setattr(StableDiffusionModel, "to", to)
    mm.device = torch.device("cuda")

    def placed() -> tuple[str, str]:
        return depth.device.type, sd2.device.type

    mm.load("tiny-depth")
    assert placed() == ("cuda", "cpu")
    mm.load("tiny-sd2")
    assert placed() == ("cpu", "cuda")
    moves.clear()
    with pytest.raises(Exception, match="tiny-broken|safetensors|header"):
        mm.load("tiny-broken")
    assert moves == [("sd2", "cpu"), ("sd2", "cuda")]  # to RAM to make room, back when loading failed
    assert placed() == ("cpu", "cuda") and mm.current.model is sd2
    mm.set_keep_in_cpu(False)
    assert placed() == ("cuda", "cuda")
    mm.load("tiny-depth")
    assert placed() == ("cuda", "cuda")
    mm.set_keep_in_cpu(True)
    assert placed() == ("cuda", "cpu")
