"""The checkpoint list: scanning, titles and hashes, yaml pairing, refresh, aliases; the model manager."""

from __future__ import annotations

import hashlib
import shutil

import pytest
import torch

from modules.core.errors import CheckpointNotFoundError, NoModelLoadedError, UnsafeCheckpointError
from modules.models import checkpoints
from modules.models.checkpoints import CheckpointRegistry, HashCache
from modules.models.manager import ModelManager


@pytest.fixture()
def model_dir(tmp_path, depth_ckpt, sd1_ckpt):
    root = tmp_path / "models" / "Stable-diffusion"
    (root / "sub").mkdir(parents=True)
    shutil.copy(depth_ckpt.path, root / "b-depth.safetensors")
    shutil.copy(depth_ckpt.config_path, root / "b-depth.yaml")
    shutil.copy(sd1_ckpt.path, root / "sub" / "a-sd1.ckpt")
    shutil.copy(sd1_ckpt.config_path, root / "sub" / "a-sd1.yaml")
    (root / "vae.vae.safetensors").write_bytes(b"x")
    (root / "notes.txt").write_text("not a model")
    return root


def test_scan_titles_hashes_and_yaml_pairing(model_dir, tmp_path):
    reg = CheckpointRegistry([model_dir], HashCache(tmp_path / "cache.json"))
    items = reg.refresh()
    assert [i.name for i in items] == ["b-depth.safetensors", "sub/a-sd1.ckpt"]
    depth = items[0]
    digest = hashlib.sha256((model_dir / "b-depth.safetensors").read_bytes()).hexdigest()
    assert depth.sha256 == digest and depth.title == f"b-depth.safetensors [{digest[:10]}]"
    assert depth.config.endswith("b-depth.yaml") and items[1].model_name == "sub_a-sd1"


def test_hashes_are_cached_by_path_and_mtime(model_dir, tmp_path, monkeypatch):
    calls = []
    real = checkpoints.sha256_file
    monkeypatch.setattr(checkpoints, "sha256_file", lambda p: calls.append(p) or real(p))
    CheckpointRegistry([model_dir], HashCache(tmp_path / "cache.json")).refresh()
    assert len(calls) == 2
    CheckpointRegistry([model_dir], HashCache(tmp_path / "cache.json")).refresh()
    assert len(calls) == 2  # a new process reads the cache file
    target = model_dir / "b-depth.safetensors"
    target.write_bytes(target.read_bytes())  # same content, new mtime
    CheckpointRegistry([model_dir], HashCache(tmp_path / "cache.json")).refresh()
    assert len(calls) == 3


def test_refresh_picks_up_new_files(model_dir, tmp_path, depth_ckpt):
    reg = CheckpointRegistry([model_dir], HashCache(None))
    assert len(reg.refresh()) == 2
    shutil.copy(depth_ckpt.path, model_dir / "c-new.safetensors")
    assert "c-new.safetensors" in [i.name for i in reg.refresh()]


def test_extra_folder_and_no_hashing(model_dir, tmp_path, sd1_ckpt):
    extra = tmp_path / "elsewhere"
    extra.mkdir()
    shutil.copy(sd1_ckpt.path, extra / "z.ckpt")
    reg = CheckpointRegistry([model_dir, extra], HashCache(None), hashing=False)
    items = reg.refresh()
    assert "z.ckpt" in [i.name for i in items]
    assert all(i.sha256 is None and "[" not in i.title for i in items)


def test_lookup_by_every_alias_and_never_by_path(model_dir):
    reg = CheckpointRegistry([model_dir], HashCache(None))
    info = reg.refresh()[0]
    for alias in (info.title, info.name, info.model_name, info.sha256, info.shorthash, "b-depth"):
        assert reg.get(alias) == info
    for bad in ("../../etc/passwd", "/etc/passwd", str(model_dir / "b-depth.safetensors") + "x", "nothing"):
        with pytest.raises(CheckpointNotFoundError, match="not found"):
            reg.get(bad)


def test_manager_loads_switches_and_keeps_limit(model_dir):
    reg = CheckpointRegistry([model_dir], HashCache(None))
    reg.refresh()
    mm = ModelManager(reg, device=torch.device("cpu"), dtype=torch.float32, keep_in_memory=1)
    first = mm.get()
    assert first.info.name == "b-depth.safetensors" and first.model.is_depth
    second = mm.load("sub/a-sd1.ckpt")
    assert mm.current is second and mm.loaded_titles() == [second.info.title]
    mm.set_keep_in_memory(2)
    mm.load(first.info.title)
    assert len(mm.loaded_titles()) == 2
    again = mm.load(second.info.title)
    assert again is second  # still in memory: no reload
    mm.unload()
    assert mm.current is None


def test_manager_without_checkpoints_says_where_to_put_them(tmp_path):
    mm = ModelManager(CheckpointRegistry([tmp_path], HashCache(None)), device=torch.device("cpu"), dtype=torch.float32)
    with pytest.raises(NoModelLoadedError, match="models/Stable-diffusion"):
        mm.get()


def test_manager_refuses_malicious_checkpoint_and_keeps_serving(model_dir, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"state_dict": {}, "x": Evil()}, model_dir / "evil.ckpt")
    reg = CheckpointRegistry([model_dir], HashCache(None))
    reg.refresh()
    mm = ModelManager(reg, device=torch.device("cpu"), dtype=torch.float32)
    with pytest.raises(UnsafeCheckpointError):
        mm.load("evil.ckpt")
    assert not marker.exists() and "evil.ckpt" in mm.last_error
    assert mm.load("b-depth.safetensors").model.is_depth


def test_lazy_listing_hashes_nothing_and_a_load_hashes_that_checkpoint(model_dir, tmp_path, monkeypatch):
    """The app lists new checkpoints at once (A1111 hashes lazily): each is hashed when first loaded."""
    calls = []
    real = checkpoints.sha256_file
    monkeypatch.setattr(checkpoints, "sha256_file", lambda p: calls.append(p.name) or real(p))
    registry = CheckpointRegistry([model_dir], HashCache(tmp_path / "cache.json"), lazy=True)
    items = registry.refresh()
    assert calls == [] and all(i.sha256 is None and "[" not in i.title for i in items)
    assert {i.name for i in registry.unhashed()} == {"b-depth.safetensors", "sub/a-sd1.ckpt"}
    manager = ModelManager(registry, device=torch.device("cpu"), dtype=torch.float32)
    loaded = manager.load("b-depth")
    digest = hashlib.sha256((model_dir / "b-depth.safetensors").read_bytes()).hexdigest()
    assert calls == ["b-depth.safetensors"] and loaded.info.sha256 == digest
    assert registry.get("b-depth").title == f"b-depth.safetensors [{digest[:10]}]"  # the list shows it now
    assert [i.name for i in registry.unhashed()] == ["sub/a-sd1.ckpt"]
    again = CheckpointRegistry([model_dir], HashCache(tmp_path / "cache.json"), lazy=True).refresh()
    assert calls == ["b-depth.safetensors"]  # a new process lists the cached hash without hashing
    assert {i.name: i.shorthash for i in again} == {"b-depth.safetensors": digest[:10], "sub/a-sd1.ckpt": None}
