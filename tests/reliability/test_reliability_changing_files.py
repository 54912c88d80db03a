"""Files changing under the running program (issue 15): a checkpoint truncated or rewritten in place after it
was loaded, bytes written back with the same size and mtime, symbolic links that dangle, loop or point out of
the model folders, the last used checkpoint gone at start-up, and yaml configs with numbers no model fits.

The truncation runs in a child process: with memory-mapped weights it killed the whole process with SIGBUS
(rc -7 / 135), which no in-process test can survive to report.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from modules.app import bootstrap
from modules.app import options as cmd_args
from modules.core.errors import CheckpointError, ConfigError
from modules.core.progress import JobControl
from modules.core.request import GenerationRequest
from modules.core.settings import Settings
from modules.frontends.ui import make_handlers
from modules.generation.processing import ProcessingContext, process
from modules.models import checkpoints
from modules.models import ldm_config as model_config
from modules.models.checkpoints import CheckpointRegistry, FileStamp, HashCache, load_model
from modules.models.manager import ModelManager
from tests.helpers.imaging import png
from tests.helpers.ldm_layout import tiny_config, write_checkpoint
from tests.helpers.server import populate, running_server

ROOT = Path(__file__).resolve().parents[2]
W = H = 64


def picture() -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W]
    return np.stack([xx * 4, yy * 4, (xx + yy) * 2], -1).clip(0, 255).astype(np.uint8)


def req(**kw) -> GenerationRequest:
    base = dict(prompt="a house", init_images=[png(picture())], width=W, height=H, steps=2, seed=3, save_images=False)
    return GenerationRequest(**{**base, **kw})


def run(mm: ModelManager, **kw):
    ctx = ProcessingContext(mm, Settings(), mm.registry.folders[0], control=JobControl())
    return process(req(**kw), ctx)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def other_depth(tmp_path_factory):
    """Another tiny depth checkpoint of the same layout (so the same size) with other random weights."""
    return write_checkpoint(tmp_path_factory.mktemp("other"), "other", "sd2-depth", seed=5)


@pytest.fixture()
def folder(tmp_path, depth_ckpt) -> Path:
    d = tmp_path / "models"
    d.mkdir()
    shutil.copy(depth_ckpt.path, d / "m.safetensors")
    shutil.copy(depth_ckpt.config_path, d / "m.yaml")
    return d


def manager(folder: Path, cache: Path | None = None) -> ModelManager:
    reg = CheckpointRegistry([folder], HashCache(cache))
    reg.refresh()
    return ModelManager(reg, device=torch.device("cpu"), dtype=torch.float32)


def rewrite_in_place(path: Path, data: bytes, *, keep_times: bool = False) -> None:
    """Overwrite the file's bytes through the same inode (as `cp` over it or `dd conv=notrunc` do)."""
    st = path.stat()
    with path.open("r+b") as f:
        f.write(data)
        f.truncate(len(data))
    if keep_times:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


# --- truncated under a loaded model: refused, never SIGBUS ----------------------------------------

CHILD = textwrap.dedent(
    """
    import os, sys, torch
    sys.path.insert(0, sys.argv[2])
    torch.set_num_threads(2)
    from pathlib import Path
    from tests.reliability.test_reliability_changing_files import manager, run
    from modules.core.errors import CheckpointError
    folder = Path(sys.argv[1]); path = folder / "m.safetensors"
    original = path.read_bytes()
    mm = manager(folder)
    first = run(mm)
    maps = Path("/proc/self/maps").read_text()
    print("MAPPED" if str(path.resolve()) in maps else "NOT MAPPED")
    os.truncate(path, os.path.getsize(path) // 3)  # a copy or re-download starting over the file
    unet = mm.current.model.unet  # every weight page touched: a mapped file would SIGBUS here
    total = sum(float(p.double().abs().sum()) for p in unet.parameters())
    print("TOUCHED", total > 0)
    try:
        run(mm)
        print("NOT REFUSED")
    except CheckpointError as e:
        print("REFUSED", e)
    try:
        run(mm)
        print("NOT REFUSED AGAIN")
    except CheckpointError as e:
        print("REFUSED AGAIN", "changed on disk" in str(e))
    path.write_bytes(original)  # the copy finished: the same file again
    again = run(mm)
    print("RESTORED", (again.images[0] == first.images[0]).all(), again.infotexts[0] == first.infotexts[0])
    """
)


def test_truncating_the_loaded_checkpoint_is_refused_in_a_child_that_survives(folder):
    proc = subprocess.run([sys.executable, "-c", CHILD, str(folder), str(ROOT)], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)  # fmt: skip
    out = proc.stdout
    assert proc.returncode == 0, (proc.returncode, out, proc.stderr[-3000:])
    assert "NOT MAPPED" in out and "TOUCHED True" in out
    refused = next(line for line in out.splitlines() if line.startswith("REFUSED "))
    assert "m.safetensors changed on disk since it was loaded" in refused and "old weights are not used" in refused
    assert "ended inside tensor" in refused or "outside the file" in refused
    assert "REFUSED AGAIN True" in out and "RESTORED True True" in out


MAPPED_CHILD = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, sys.argv[2])
    from modules.models import safe_load
    sd = safe_load.read_state_dict(sys.argv[1], mmap=True)
    os.truncate(sys.argv[1], 4096)
    print(sum(float(t.double().sum()) for t in sd.values()))
    """
)


def test_memory_mapped_weights_do_crash_on_truncation_so_the_test_above_means_something(tmp_path, depth_ckpt):
    path = tmp_path / "mapped.safetensors"
    shutil.copy(depth_ckpt.path, path)
    proc = subprocess.run([sys.executable, "-c", MAPPED_CHILD, str(path), str(ROOT)], capture_output=True,
                          timeout=120, cwd=ROOT)  # fmt: skip
    assert proc.returncode == -signal.SIGBUS, (proc.returncode, proc.stderr[-2000:])


def test_a_file_that_shrinks_while_it_is_read_is_a_checkpoint_error(tmp_path, depth_ckpt):
    from modules.models import safe_load

    path = tmp_path / "half.safetensors"
    shutil.copy(depth_ckpt.path, path)
    header, start = safe_load._check_safetensors_header(path)
    os.truncate(path, start + (path.stat().st_size - start) // 2)  # after the header was checked
    with pytest.raises(CheckpointError, match="ended inside tensor .* truncated or is being rewritten"):
        safe_load._read_safetensors_into_memory(path, header, start)


# --- overwritten in place with other weights ------------------------------------------------------


def test_overwritten_in_place_the_next_job_uses_the_new_weights_and_hash(folder, other_depth, caplog):
    mm = manager(folder)
    path = folder / "m.safetensors"
    before = run(mm)
    old_hash = sha(path)[:10]
    assert f"Model hash: {old_hash}" in before.infotexts[0]
    new_bytes = other_depth.path.read_bytes()
    assert len(new_bytes) == path.stat().st_size  # same size: only the contents differ
    rewrite_in_place(path, new_bytes, keep_times=True)  # even with the old mtime
    with caplog.at_level(logging.WARNING):
        after = run(mm)
    new_hash = hashlib.sha256(new_bytes).hexdigest()[:10]
    assert new_hash != old_hash and f"Model hash: {new_hash}" in after.infotexts[0]
    assert "changed on disk since it was loaded" in caplog.text
    assert not np.array_equal(after.images[0], before.images[0])
    fresh = manager(other_depth.path.parent)  # the new weights loaded from scratch give the same image
    assert np.array_equal(run(fresh).images[0], after.images[0])
    assert mm.registry.list()[0].title == f"m.safetensors [{new_hash}]"


def test_selecting_the_new_title_after_a_refresh_reloads(folder, other_depth):
    mm = manager(folder)
    mm.load("m")
    old_model = mm.current.model
    rewrite_in_place(folder / "m.safetensors", other_depth.path.read_bytes())
    new_title = next(i.title for i in mm.registry.refresh())
    loaded = mm.load(new_title)
    assert loaded.info.title == new_title and loaded.model is not old_model
    key = "model.diffusion_model.input_blocks.0.0.weight"
    assert torch.equal(loaded.model.unet.conv_in.weight, other_depth.state_dict[key])
    assert mm.get() is loaded  # unchanged since: no further reload


def test_a_deleted_file_keeps_serving_the_weights_that_were_read(folder, caplog):
    mm = manager(folder)
    first = run(mm)
    (folder / "m.safetensors").unlink()
    with caplog.at_level(logging.WARNING):
        again = run(mm)
    assert np.array_equal(first.images[0], again.images[0]) and first.infotexts[0] == again.infotexts[0]
    assert "was deleted or moved" in caplog.text


def test_a_file_replaced_by_an_invalid_one_is_refused_until_it_is_valid(folder, depth_ckpt):
    mm = manager(folder)
    first = run(mm)
    path = folder / "m.safetensors"
    tmp = folder / "m.tmp"
    tmp.write_bytes(b"not a model at all")
    os.replace(tmp, path)  # a new inode under the same name
    for _ in range(2):
        with pytest.raises(CheckpointError, match="changed on disk since it was loaded and cannot be loaded again"):
            run(mm)
    assert mm.current is None and "changed on disk" in mm.last_error
    shutil.copy(depth_ckpt.path, tmp)
    os.replace(tmp, path)
    assert np.array_equal(run(mm).images[0], first.images[0])
    assert mm.last_error is None


# --- the hash cache keys on more than size + mtime ------------------------------------------------


def test_same_size_same_mtime_rewrite_is_hashed_again(folder, tmp_path, other_depth):
    cache = tmp_path / "cache.json"
    path = folder / "m.safetensors"
    first = CheckpointRegistry([folder], HashCache(cache)).refresh()[0]
    assert first.sha256 == sha(path)
    rewrite_in_place(path, other_depth.path.read_bytes(), keep_times=True)
    st = path.stat()
    assert (st.st_size, st.st_mtime_ns) == (first.stamp.size, first.stamp.mtime_ns)  # what the old cache keyed on
    again = CheckpointRegistry([folder], HashCache(cache)).refresh()[0]  # a new process, reading cache.json
    assert again.sha256 == sha(path) != first.sha256
    entry = json.loads(cache.read_text())["hashes"][f"checkpoint/{path.resolve()}"]
    assert {"size", "mtime_ns", "ctime_ns", "ino", "dev", "sha256"} <= set(entry) and entry["sha256"] == sha(path)


def test_an_old_cache_entry_without_inode_and_ctime_is_hashed_again(folder, tmp_path):
    path = folder / "m.safetensors"
    cache = tmp_path / "cache.json"
    st = path.stat()
    stale = {"mtime": st.st_mtime, "size": st.st_size, "sha256": "0" * 64}  # the format before issue 15
    cache.write_text(json.dumps({"hashes": {f"checkpoint/{path.resolve()}": stale}}))
    assert CheckpointRegistry([folder], HashCache(cache)).refresh()[0].sha256 == sha(path)


def test_a_file_changing_while_it_is_hashed_is_hashed_again(folder, other_depth, monkeypatch, caplog):
    path = folder / "m.safetensors"
    real = checkpoints.sha256_file
    calls = []

    def hash_while_written(p):
        calls.append(p)
        digest = real(p)
        if len(calls) == 1:
            rewrite_in_place(path, other_depth.path.read_bytes())  # lands during the first hash
        return digest

    monkeypatch.setattr(checkpoints, "sha256_file", hash_while_written)
    with caplog.at_level(logging.WARNING):
        info = CheckpointRegistry([folder], HashCache(None)).refresh()[0]
    assert len(calls) == 2 and info.sha256 == sha(path) == hashlib.sha256(other_depth.path.read_bytes()).hexdigest()
    assert "changed while it was hashed" in caplog.text and info.stamp == FileStamp.of(path)


# --- symbolic links in the model folders ----------------------------------------------------------


def hostile_links(folder: Path, outside: Path) -> None:
    os.symlink("nowhere.safetensors", folder / "dangling.safetensors")
    os.symlink("loop-b.ckpt", folder / "loop-a.ckpt")
    os.symlink("loop-a.ckpt", folder / "loop-b.ckpt")
    (folder / "sub").mkdir()
    os.symlink("..", folder / "sub" / "up")  # a folder loop
    os.symlink(outside, folder / "passwd.ckpt")  # out of the folders, as `passwd.ckpt -> /etc/passwd`
    os.symlink("../m.safetensors", folder / "sub" / "inner.safetensors")  # inside: fine (the same file)


@pytest.fixture()
def outside(tmp_path) -> Path:
    secret = tmp_path / "elsewhere" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    return secret


def test_bad_links_are_skipped_with_a_log_line(folder, outside, caplog):
    hostile_links(folder, outside)
    with caplog.at_level(logging.WARNING):
        items = CheckpointRegistry([folder], HashCache(None)).refresh()
    assert [i.name for i in items] == ["m.safetensors"]
    log = caplog.text
    assert "dangling.safetensors: a dangling link" in log
    assert "loop-a.ckpt: a link loop" in log and "loop-b.ckpt: a link loop" in log
    assert "sub/up: a link loop" in log
    assert f"passwd.ckpt: a link to {outside}, outside the model folders" in log and "--allow-symlinks-out" in log


def test_links_out_are_listed_only_when_allowed(folder, outside):
    hostile_links(folder, outside)
    items = CheckpointRegistry([folder], HashCache(None), allow_links_out=True).refresh()
    assert sorted(i.name for i in items) == ["m.safetensors", "passwd.ckpt"]
    assert next(i for i in items if i.name == "passwd.ckpt").filename == str(outside)
    assert cmd_args.parse_args(["--allow-symlinks-out"]).allow_symlinks_out
    assert not cmd_args.parse_args([]).allow_symlinks_out


@pytest.fixture(scope="module")
def linked_data_dir(tmp_path_factory, depth_ckpt, sd2_ckpt) -> Path:
    d = tmp_path_factory.mktemp("linked")
    folder = populate(d, depth_ckpt, sd2_ckpt)
    secret = d / "secret.txt"
    secret.write_text("root:x:0:0\n")
    hostile_links(folder, secret)
    bad = folder / "bad-numbers.safetensors"
    shutil.copy(depth_ckpt.path, bad)
    cfg = tiny_config("sd2-depth")
    cfg["model"]["params"]["unet_config"]["params"]["model_channels"] = 30
    bad.with_suffix(".yaml").write_text(yaml.safe_dump(cfg))
    return d


@pytest.fixture(scope="module")
def linked_server(linked_data_dir):
    """A server started over a model folder full of bad links (start-up must not fail) with `--api`."""
    with running_server(linked_data_dir, "--api") as srv:
        yield srv


def test_server_starts_and_refreshes_over_bad_links(linked_server):
    import httpx

    with httpx.Client(base_url=linked_server.url + "/sdapi/v1", timeout=60) as c:
        for _ in range(2):
            assert c.post("/refresh-checkpoints").status_code == 200
        names = sorted(m["model_name"] for m in c.get("/sd-models").json())
    assert names == ["bad-numbers", "tiny-depth", "tiny-sd2"]


def test_bad_yaml_numbers_are_a_400_naming_the_key(linked_server):
    import httpx

    key = "model.params.unet_config.params.model_channels"
    with httpx.Client(base_url=linked_server.url + "/sdapi/v1", timeout=60) as c:
        r = c.post("/options", json={"sd_model_checkpoint": "bad-numbers"})
        assert r.status_code == 400, r.text
        assert key in r.json()["detail"] and "bad-numbers.yaml" in r.json()["detail"]
        body = {"prompt": "x", "width": W, "height": H, "steps": 1, "init_images": [_b64(png(picture()))],
                "override_settings": {"sd_model_checkpoint": "bad-numbers"}}  # fmt: skip
        r = c.post("/img2img", json=body)
        assert r.status_code == 400 and key in r.json()["detail"], r.text
    handlers = make_handlers(linked_server.app.service)
    title = next(i.title for i in linked_server.app.service.checkpoints() if i.model_name == "bad-numbers")
    *_, (_dropdown, status) = list(handlers.select_checkpoint(title))
    assert "Could not load" in status and key in status


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


# --- start-up with the last used checkpoint gone ---------------------------------------------------


@pytest.mark.parametrize(
    ("wanted", "expected", "reason"),
    [
        ("gone.safetensors [0123456789]", "tiny-depth.safetensors", "not found"),  # renamed or deleted
        ("tiny-sd2.safetensors [0123456789]", "tiny-sd2.safetensors", "not found"),  # same name, new contents
    ],
)
def test_start_up_falls_back_to_an_available_checkpoint_and_says_so(tmp_path, depth_ckpt, sd2_ckpt, wanted,
                                                                       expected, reason, caplog):  # fmt: skip
    populate(tmp_path, depth_ckpt, sd2_ckpt)
    (tmp_path / "config.json").write_text(json.dumps({"sd_model_checkpoint": wanted}))
    options = cmd_args.parse_args(["--data-dir", str(tmp_path), "--skip-install"])
    service = bootstrap.create_service(options)
    try:
        with caplog.at_level(logging.WARNING):
            bootstrap.load_initial_model(service, options)
        current = service.current_checkpoint()
        assert current is not None and current.name == expected
        assert wanted in service.last_error and reason in service.last_error
        assert f"loaded {current.title} instead" in service.last_error
        assert f"loaded {current.title} instead" in caplog.text
        assert service.settings.sd_model_checkpoint == current.title  # the next start loads it directly
    finally:
        service.close()


def test_start_up_with_a_broken_last_checkpoint_loads_the_next_one(tmp_path, depth_ckpt, sd2_ckpt):
    folder = populate(tmp_path, depth_ckpt, sd2_ckpt)
    broken = folder / "a-broken.safetensors"  # listed first
    broken.write_bytes(b"half a download")
    (tmp_path / "config.json").write_text(json.dumps({"sd_model_checkpoint": "a-broken"}))
    options = cmd_args.parse_args(["--data-dir", str(tmp_path), "--skip-install"])
    service = bootstrap.create_service(options)
    try:
        bootstrap.load_initial_model(service, options)
        assert service.current_checkpoint().name == "tiny-depth.safetensors"
        assert "a-broken" in service.last_error and "instead" in service.last_error
    finally:
        service.close()


# --- yaml configs with numbers no model fits -------------------------------------------------------

U = "model.params.unet_config.params"
D = "model.params.first_stage_config.params.ddconfig"


def _set(cfg: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    node = cfg
    for part in parents:
        node = node[part]
    if value is None:
        del node[last]
    else:
        node[last] = value


BAD_NUMBERS = [
    ("sd2-depth", f"{U}.model_channels", 30, "not divisible by the 32 GroupNorm groups"),
    ("sd2-depth", f"{U}.num_head_channels", 24, "does not divide"),
    ("sd1", f"{U}.num_heads", 3, "does not divide"),
    ("sd2-depth", f"{U}.channel_mult", [], "is empty"),
    ("sd2-depth", f"{U}.channel_mult", [1, 0], "whole number from 1"),
    ("sd2-depth", f"{U}.transformer_depth", None, "missing"),
    ("sd2-depth", f"{U}.num_res_blocks", -1, "whole number from 1"),
    ("sd2-depth", f"{D}.ch", 48, "not divisible by the 32 GroupNorm groups"),
    ("sd2-depth", f"{D}.z_channels", 0, "whole number from 1"),
    ("sd2-depth", "model.params.first_stage_config.params.embed_dim", None, "missing"),
    ("sd2-depth", "model.params.linear_start", 0.5, "linear_start < linear_end"),
    ("sd2-depth", "model.params.timesteps", 0, "whole number from 1"),
]


@pytest.mark.parametrize(("family", "key", "value", "reason"), BAD_NUMBERS)
def test_bad_numbers_in_a_yaml_are_a_config_error_naming_the_key(tmp_path, family, key, value, reason):
    cfg = tiny_config(family)
    _set(cfg, key, value)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError) as e:
        model_config.load_config(path)
    assert f"`{key}`" in str(e.value) and reason in str(e.value) and "bad.yaml" in str(e.value)
    assert e.value.status_code == 400


def test_a_checkpoint_with_a_bad_yaml_is_refused_before_building(tmp_path, depth_ckpt):
    path = tmp_path / "m.safetensors"
    shutil.copy(depth_ckpt.path, path)
    cfg = tiny_config("sd2-depth")
    _set(cfg, f"{U}.model_channels", 30)
    path.with_suffix(".yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="model_channels"):
        load_model(path)
    for name in ("v2-midas-inference.yaml", "v2-inference.yaml", "v2-inference-v.yaml", "v1-inference.yaml"):
        model_config.load_config(model_config.CONFIGS_DIR / name)  # the shipped configs pass the checks
