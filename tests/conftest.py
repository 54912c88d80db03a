"""Shared fixtures: tiny checkpoints in the real LDM layout, written once per session."""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import settings as hypothesis_settings

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.helpers.ldm_layout import TinyCheckpoint, write_checkpoint  # noqa: E402

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
# Property tests explore a fixed sequence of examples, so CI is reproducible; set HYPOTHESIS_PROFILE=explore
# to search afresh (random examples) while hunting bugs.
hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
hypothesis_settings.register_profile("explore", derandomize=False)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
# float32 everywhere unless a test asks for bfloat16 (tests/models/test_precision.py): the exact comparisons
# (parity with the original code, image equalities) then hold on every CPU, with or without fast bfloat16
os.environ.setdefault("SD_CPU_BF16", "off")
for noisy in ("diffusers", "transformers"):
    logging.getLogger(noisy).setLevel(logging.ERROR)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny-models")


@pytest.fixture(scope="session")
def depth_ckpt(tiny_dir) -> TinyCheckpoint:
    """A tiny SD2-depth checkpoint (.safetensors + yaml)."""
    return write_checkpoint(tiny_dir / "depth", "tiny-depth", "sd2-depth", fmt="safetensors", seed=1)


@pytest.fixture(scope="session")
def depth_ckpt_pickle(tiny_dir) -> TinyCheckpoint:
    """The same family as a Lightning-style .ckpt ({"state_dict": ..., "global_step": ...})."""
    return write_checkpoint(tiny_dir / "depth-ckpt", "tiny-depth", "sd2-depth", fmt="ckpt", seed=1)


@pytest.fixture(scope="session")
def sd2_ckpt(tiny_dir) -> TinyCheckpoint:
    return write_checkpoint(tiny_dir / "sd2", "tiny-sd2", "sd2", fmt="safetensors", seed=2)


@pytest.fixture(scope="session")
def sd1_ckpt(tiny_dir) -> TinyCheckpoint:
    return write_checkpoint(tiny_dir / "sd1", "tiny-sd1", "sd1", fmt="ckpt", seed=3)


@pytest.fixture(scope="session")
def depth_model(depth_ckpt):
    from modules.models.checkpoints import load_model

    return load_model(depth_ckpt.path)


@pytest.fixture(scope="session")
def sd1_model(sd1_ckpt):
    from modules.models.checkpoints import load_model

    return load_model(sd1_ckpt.path)


@pytest.fixture(scope="session")
def ldm_available():
    from tests.helpers import oracle

    if oracle.ldm_root() is None:
        pytest.skip("the original ldm code (stable-diffusion-sdkit wheel) could not be downloaded")
    return True


# --- a served data folder (modules that need another folder or server override these) ---------------


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, depth_ckpt, sd2_ckpt) -> Path:
    """A data folder with both tiny checkpoints in models/Stable-diffusion/."""
    from tests.helpers.server import populate

    d = tmp_path_factory.mktemp("data")
    populate(d, depth_ckpt, sd2_ckpt)
    return d


@pytest.fixture(scope="module")
def server(data_dir):
    """The web UI and the API on one port (`launch.py --api`), with the tiny depth checkpoint loaded."""
    from tests.helpers.server import running_server

    with running_server(data_dir, "--api") as srv:
        srv.app.service.select_checkpoint("tiny-depth")
        yield srv


# --- fixtures over the `server` fixture (a tests.helpers.server.RunningServer) -------------------------------


@pytest.fixture(scope="module")
def client(server):
    """An HTTP client for the server's /sdapi/v1 routes."""
    import httpx

    with httpx.Client(base_url=server.url + "/sdapi/v1", timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def titles(client) -> dict[str, str]:
    """Checkpoint model name -> title, as /sd-models lists them."""
    return {m["model_name"]: m["title"] for m in client.get("/sd-models").json()}


@pytest.fixture()
def depth_model_current(request):
    """Start a test with the tiny depth checkpoint loaded (tests that switch models leave others loaded)."""
    if "server" not in request.fixturenames:
        return
    service = request.getfixturevalue("server").app.service
    current = service.current_checkpoint()
    if current is None or current.model_name != "tiny-depth":
        service.select_checkpoint("tiny-depth")


@pytest.fixture()
def manager(tmp_path, depth_ckpt):
    """A float32 CPU model manager over a folder holding the tiny depth checkpoint."""
    from modules.models.checkpoints import CheckpointRegistry, HashCache
    from modules.models.manager import ModelManager

    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(depth_ckpt.path, folder)
    shutil.copy(depth_ckpt.config_path, folder)
    registry = CheckpointRegistry([folder], HashCache(None))
    registry.refresh()
    return ModelManager(registry, device=torch.device("cpu"), dtype=torch.float32)
