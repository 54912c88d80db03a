"""The allocator setting: freed activation memory is reused within a job and handed back after it."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from modules.app.worker import Worker
from modules.core import memory
from modules.core.progress import JobControl

ROOT = Path(__file__).resolve().parents[2]
glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="the allocator setting is for glibc"
)

# Many big activation-sized tensors allocated and freed in turn, as a UNet step does; the page faults
# and resident memory are measured with glibc's defaults, then retained, then after the release.
PROBE = textwrap.dedent(
    """
    import json, resource, sys
    sys.path.insert(0, sys.argv[1])
    import torch
    from modules.core import memory

    def faults(n=12, mib=96):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(n):
            t = torch.empty(mib * 2**20 // 4)
            t.fill_(1.0)  # touch every page, as a kernel writing its output does
            del t
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    def rss_mib():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20

    default = faults()
    retained_ok = memory.retain_freed_memory()
    faults()  # the heap grows once
    retained = faults()
    held = rss_mib()
    memory.release_freed_memory()
    print(json.dumps({"default": default, "retained": retained, "ok": retained_ok,
                      "held": held, "released": rss_mib()}))
    """
)


@glibc_only
def test_retained_memory_is_reused_without_page_faults_and_released_after():
    out = subprocess.run([sys.executable, "-c", PROBE, str(ROOT)], capture_output=True, text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["ok"] is True
    # glibc's default maps and unmaps every 96 MiB block: each pass faults in all of its pages again
    assert r["default"] > 12 * 96 * 256 * 0.9
    # retained, the same work reuses the heap: almost no new pages
    assert r["retained"] < r["default"] / 20
    # and the release gives the freed 96 MiB back to the OS
    assert r["held"] - r["released"] > 80


def test_worker_releases_memory_after_every_job(monkeypatch):
    calls = []
    monkeypatch.setattr(memory, "release_freed_memory", lambda: calls.append(1))
    worker = Worker()
    try:
        assert worker.run(lambda control: 1) == 1
        with pytest.raises(ValueError):
            worker.run(lambda control: (_ for _ in ()).throw(ValueError("bad")))
        assert worker.run(lambda control: isinstance(control, JobControl))
    finally:
        worker.stop()
    assert len(calls) == 3  # after failures too


def test_malloc_default_flag_leaves_the_allocator_alone(monkeypatch, tmp_path):
    from modules.app import bootstrap
    from modules.app import options as cmd_args

    calls = []
    monkeypatch.setattr(memory, "retain_freed_memory", lambda: calls.append(1) or True)
    for extra, expected in (([], 1), (["--malloc-default"], 0)):
        calls.clear()
        args = cmd_args.parse_args(["--data-dir", str(tmp_path), "--skip-install", *extra])
        service = bootstrap.create_service(args)
        service.worker.stop()
        assert len(calls) == expected


def test_a_generation_releases_freed_memory_between_its_stages(monkeypatch, tmp_path, manager, depth_ckpt):
    import numpy as np

    from modules.core.hooks import Hooks
    from modules.core.request import GenerationRequest
    from modules.core.settings import Settings
    from modules.generation.processing import ProcessingContext, process
    from tests.helpers.imaging import png

    stages = []
    monkeypatch.setattr(memory, "release_freed_memory", lambda: stages.append("release"))
    ctx = ProcessingContext(manager, Settings(), tmp_path, hooks=Hooks(), control=JobControl())
    model = manager.get(depth_ckpt.path.name).model
    real_decode = model.decode_first_stage
    monkeypatch.setattr(model, "decode_first_stage", lambda z: stages.append("decode") or real_decode(z))
    picture = (np.random.RandomState(0).rand(64, 96, 3) * 255).astype(np.uint8)
    request = GenerationRequest(prompt="x", init_images=[png(picture)], width=96, height=64, steps=3, seed=1,
                                save_images=False)  # fmt: skip
    process(request, ctx)
    assert stages == ["release", "release", "decode"]  # before the denoising loop and before the decode
