"""VAE files: the choices, the file layouts, loading into the model's VAE with an exact restore, safety."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from modules.core.errors import CheckpointError, UnsafeCheckpointError
from modules.models.checkpoints import load_model
from modules.models.vae_files import AUTOMATIC, NONE, VaeNotFoundError, VaeRegistry, VaeSwitcher
from tests.helpers.network_files import write_fsynced_checkpoint, write_malicious

VAE_PREFIX = "first_stage_model."


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Our checkpoint (seed 1) and another one (seed 5) whose VAE the files carry."""
    base = tmp_path_factory.mktemp("vae-ckpts")
    return write_fsynced_checkpoint(base / "ours", "tiny-depth", seed=1), write_fsynced_checkpoint(
        base / "other", "other", seed=5
    )


@pytest.fixture()
def model(ckpts):
    return load_model(ckpts[0].path)


@pytest.fixture(scope="module")
def other(ckpts):
    return load_model(ckpts[1].path)


def bare_vae(state_dict: dict) -> dict:
    return {k[len(VAE_PREFIX) :]: v.contiguous() for k, v in state_dict.items() if k.startswith(VAE_PREFIX)}


def vae_outputs(model) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 32, 32, generator=gen) * 2 - 1
    latents = torch.randn(1, 4, 4, 4, generator=gen)
    return model.encode_first_stage(image).mean, model.decode_first_stage(latents)


def vae_params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.vae.named_parameters()}


def switcher(tmp_path: Path, ckpt_dir: Path | None = None) -> VaeSwitcher:
    registry = VaeRegistry([tmp_path / "VAE"], [ckpt_dir] if ckpt_dir else [])
    registry.refresh()
    return VaeSwitcher(registry)


@pytest.fixture()
def vae_dir(tmp_path) -> Path:
    d = tmp_path / "VAE"
    (d / "nested").mkdir(parents=True)
    return d


def test_another_checkpoints_vae_gives_its_outputs_in_every_layout(model, other, ckpts, vae_dir, tmp_path):
    theirs = ckpts[1].state_dict
    save_file(bare_vae(theirs), str(vae_dir / "bare.safetensors"))
    torch.save({"state_dict": dict(theirs), "global_step": 3}, vae_dir / "nested" / "whole.ckpt")
    torch.save({f"first_stage_model.{k}": v for k, v in bare_vae(theirs).items()} | {"model_ema.decay": torch.tensor(0.9)},
               vae_dir / "prefixed.pt")  # fmt: skip
    save_file({k: v.contiguous() for k, v in other.vae.state_dict().items()}, str(vae_dir / "diffusers.safetensors"))
    own_params, own_out = vae_params(model), vae_outputs(model)
    expected = vae_outputs(other)
    vae = switcher(tmp_path)
    assert vae.registry.choices() == [AUTOMATIC, NONE, "bare.safetensors", "diffusers.safetensors", "prefixed.pt",
                                      "whole.ckpt"]  # fmt: skip
    for name in ("bare.safetensors", "whole.ckpt", "prefixed.pt", "diffusers.safetensors"):
        used = vae.apply(model, name, ckpts[0].path)
        assert used is not None and used.name == name and vae.current(model) == used
        for got, want in zip(vae_outputs(model), expected, strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    vae.apply(model, NONE, ckpts[0].path)
    assert vae.current(model) is None
    assert all(torch.equal(p, own_params[n]) for n, p in model.vae.named_parameters())
    assert all(torch.equal(a, b) for a, b in zip(vae_outputs(model), own_out, strict=True))


def test_restore_puts_back_the_checkpoints_own_tensors_and_the_same_file_is_no_work(model, ckpts, vae_dir, tmp_path):
    save_file(bare_vae(ckpts[1].state_dict), str(vae_dir / "x.safetensors"))
    vae = switcher(tmp_path)
    ptrs = {n: p.data_ptr() for n, p in model.vae.named_parameters()}
    vae.apply(model, "x", ckpts[0].path)  # by stem too
    swapped = {n: p.data_ptr() for n, p in model.vae.named_parameters()}
    assert all(swapped[n] != ptrs[n] for n in ptrs)
    vae.apply(model, "x.safetensors", ckpts[0].path)
    assert {n: p.data_ptr() for n, p in model.vae.named_parameters()} == swapped
    vae.load(model, None)
    assert {n: p.data_ptr() for n, p in model.vae.named_parameters()} == ptrs


def test_automatic_takes_the_vae_beside_the_checkpoint(model, other, ckpts, vae_dir, tmp_path):
    ckpt_dir = tmp_path / "Stable-diffusion"
    ckpt_dir.mkdir()
    ckpt_path = ckpt_dir / "tiny-depth.safetensors"
    shutil.copy(ckpts[0].path, ckpt_path)
    save_file(bare_vae(ckpts[1].state_dict), str(ckpt_dir / "tiny-depth.vae.safetensors"))
    vae = switcher(tmp_path, ckpt_dir)
    assert "tiny-depth.vae.safetensors" in vae.registry.choices()
    used = vae.apply(model, AUTOMATIC, ckpt_path)
    assert used is not None and used.name == "tiny-depth.vae.safetensors"
    torch.testing.assert_close(vae_outputs(model)[1], vae_outputs(other)[1], rtol=0, atol=0)
    assert vae.apply(model, AUTOMATIC, ckpts[1].path) is None  # nothing made for that checkpoint: its own VAE
    assert vae.registry.resolve(NONE, ckpt_path) is None
    with pytest.raises(VaeNotFoundError, match="not found"):
        vae.registry.resolve("missing.pt", ckpt_path)


def test_hash_and_infotext_are_a1111s(vae_dir, ckpts, tmp_path):
    save_file(bare_vae(ckpts[1].state_dict), str(vae_dir / "x.safetensors"))
    vae = switcher(tmp_path)
    file = vae.registry.resolve("x.safetensors", None)
    digest = hashlib.sha256((vae_dir / "x.safetensors").read_bytes()).hexdigest()
    assert file.infotext() == {"VAE hash": digest[:10], "VAE": "x.safetensors"}


def test_files_that_are_no_vae_of_this_model_are_refused_and_change_nothing(model, ckpts, vae_dir, tmp_path):
    save_file({"lora_unet_conv_in.lora_down.weight": torch.zeros(1, 5, 3, 3)}, str(vae_dir / "lora.safetensors"))
    wider = bare_vae(ckpts[1].state_dict)
    wider["quant_conv.weight"] = torch.zeros(16, 8, 1, 1)
    save_file(wider, str(vae_dir / "wider.safetensors"))
    half = bare_vae(ckpts[1].state_dict)
    del half["decoder.conv_out.weight"]
    save_file(half, str(vae_dir / "half.safetensors"))
    vae = switcher(tmp_path)
    before = vae_params(model)
    with pytest.raises(CheckpointError, match="holds no VAE weights"):
        vae.apply(model, "lora.safetensors", None)
    with pytest.raises(CheckpointError, match=r"another shape.*quant_conv"):
        vae.apply(model, "wider.safetensors", None)
    with pytest.raises(CheckpointError, match="missing"):
        vae.apply(model, "half.safetensors", None)
    assert all(torch.equal(p, before[n]) for n, p in model.vae.named_parameters())


@pytest.mark.parametrize("zip_format", [True, False])
def test_malicious_vae_is_refused_without_running_code(model, ckpts, vae_dir, tmp_path, zip_format):
    marker = tmp_path / "pwned"
    write_malicious(vae_dir / "evil.pt", marker, bare_vae(ckpts[1].state_dict), zip_format=zip_format)
    vae = switcher(tmp_path)
    with pytest.raises(UnsafeCheckpointError, match="Refused"):
        vae.apply(model, "evil.pt", None)
    assert not marker.exists() and vae.current(model) is None
