"""Batch folders and the API's job queue on a Ray cluster (``--ray``), on one local Ray instance.

One Ray instance for the whole module (``ray.init(num_cpus=3)``, ~20 s to start here); each test starts
its own pool of tiny-model workers on it.  Skipped where Ray is not installed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modules.frontends.batch import cli as batch_cli
from modules.frontends.batch import runner as batch_runner
from tests.helpers.server import populate

ray = pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[2]
W, H = 64, 64


@pytest.fixture(scope="module", autouse=True)
def ray_instance():
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})  # fmt: skip
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, depth_ckpt, sd2_ckpt) -> Path:
    d = tmp_path_factory.mktemp("cluster-data")
    populate(d, depth_ckpt, sd2_ckpt)
    return d


def picture(seed: int) -> np.ndarray:
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    base = np.stack([xx * 255 / W, yy * 255 / H, (xx + yy) * 127 / (W + H)], -1)
    return np.clip(base + rng.randint(-20, 20, (H, W, 3)), 0, 255).astype(np.uint8)


def inputs(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True)
    for i in range(count):
        Image.fromarray(picture(i)).save(folder / f"frame_{i:04d}.png")
    return folder


def batch(data_dir: Path, inp: Path, out: Path, *extra: str, steps: int = 3) -> int:
    return batch_cli.main(["--data-dir", str(data_dir), "--ckpt", "tiny-depth", "--steps", str(steps), "--seed", "7",
                           "--input", str(inp), "--output", str(out), *extra])  # fmt: skip


@contextlib.contextmanager
def one_thread():
    """torch on one thread, as in a Ray worker holding 1 CPU (Ray sets OMP_NUM_THREADS=1 there)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB")).copy()


def test_batch_on_two_workers_is_pixel_identical_and_resumes(tmp_path, data_dir, capsys):
    inp = inputs(tmp_path / "in", 4)
    with one_thread():  # as each worker runs (1 CPU each): CPU float sums depend on the thread count
        assert batch(data_dir, inp, tmp_path / "alone") == 0
    out = tmp_path / "cluster"
    out.mkdir()
    for name in ("frame_0000-depth.png", "frame_0000.png"):  # done before an interruption
        shutil.copy(tmp_path / "alone" / name, out / name)
    capsys.readouterr()
    assert batch(data_dir, inp, out, "--ray", "local", "--ray-workers", "2") == 0
    err = capsys.readouterr().err
    assert "3 done, 1 skipped" in err and "on 2 Ray worker(s)" in err, err
    assert "worker 1 on" in err and "worker 2 on" in err, err  # per-worker log lines
    for i in range(4):
        name = f"frame_{i:04d}"
        assert np.array_equal(pixels(out / f"{name}.png"), pixels(tmp_path / "alone" / f"{name}.png")), name
        assert np.array_equal(pixels(out / f"{name}-depth.png"), pixels(tmp_path / "alone" / f"{name}-depth.png"))
    with Image.open(out / "frame_0003.png") as img, Image.open(tmp_path / "alone" / "frame_0003.png") as ref:
        assert img.info["parameters"] == ref.info["parameters"]


def test_a_worker_killed_mid_batch_has_its_item_retried_and_every_output_written_once(
    tmp_path, data_dir, capsys, monkeypatch
):
    inp = inputs(tmp_path / "in", 6)
    writes: list[Path] = []
    real_write = batch_runner.atomic_write_bytes
    monkeypatch.setattr(batch_runner, "atomic_write_bytes", lambda p, b: writes.append(Path(p)) or real_write(p, b))
    killed: list[int] = []

    def kill_worker_one() -> None:  # as soon as a worker runs an item, kill its process (SIGKILL)
        from modules.app.cluster import pool as pool_module

        deadline = time.time() + 240
        while time.time() < deadline and not killed:
            for p in list(_live_pools(pool_module)):
                for worker, _job in p._running_workers():  # the first seen (worker 1 or 2: load decides)
                    if worker is not None:
                        pid = ray.get(worker.actor.pid.remote())
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)
                        return
            time.sleep(0.05)

    _track_pools(monkeypatch)
    threading.Thread(target=kill_worker_one, daemon=True).start()
    code = batch(data_dir, inp, tmp_path / "out", "--ray", "local", "--ray-workers", "2", steps=12)
    err = capsys.readouterr().err
    assert killed, "no worker was ever seen running an item"
    assert code == 0, err
    assert "6 done" in err and "retried after a worker died" in err, err
    main_outputs = sorted(p.name for p in writes if not p.stem.endswith("-depth"))
    assert main_outputs == [f"frame_{i:04d}.png" for i in range(6)]  # each once
    assert len(writes) == 12 and not list((tmp_path / "out").glob("*.tmp*"))


_POOLS: list = []


def _track_pools(monkeypatch) -> None:
    """Keep each WorkerPool the test starts, so the test can find its workers."""
    from modules.app.cluster import pool as pool_module

    real_init = pool_module.WorkerPool.__init__

    def init(self, *a, **k):
        real_init(self, *a, **k)
        _POOLS.append(self)

    monkeypatch.setattr(pool_module.WorkerPool, "__init__", init)


def _live_pools(_module) -> list:
    return [p for p in _POOLS if not p._closing]


def test_api_with_two_workers_answers_two_requests_at_once_like_one_process(data_dir):
    import base64
    import io

    import httpx

    from tests.helpers.server import running_server

    def body(seed: int) -> dict:
        buf = io.BytesIO()
        Image.fromarray(picture(seed)).save(buf, format="PNG")
        return {"init_images": [base64.b64encode(buf.getvalue()).decode()], "prompt": "a house", "steps": 8,
                "seed": 11 + seed, "width": W, "height": H, "denoising_strength": 0.8, "save_images": False}  # fmt: skip

    def images(url: str, seeds: list[int], watch=None) -> list[np.ndarray]:
        out: dict[int, np.ndarray] = {}

        def post(seed: int) -> None:
            with httpx.Client(timeout=300) as c:
                r = c.post(url + "/sdapi/v1/img2img", json=body(seed))
                assert r.status_code == 200, r.text
                data = base64.b64decode(r.json()["images"][0])
                out[seed] = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))

        threads = [threading.Thread(target=post, args=(s,)) for s in seeds]
        for t in threads:
            t.start()
        while watch is not None and any(t.is_alive() for t in threads):
            watch()
            time.sleep(0.02)
        for t in threads:
            t.join()
        return [out[s] for s in seeds]

    with one_thread(), running_server(data_dir, "--api", "--ckpt", "tiny-depth") as alone:
        expected = images(alone.url, [0, 1])
    with running_server(data_dir, "--api", "--ckpt", "tiny-depth", "--ray", "local", "--ray-workers", "2") as srv:
        pool = srv.app.service.jobs
        seen = {"running": 0, "progress": []}

        def watch() -> None:
            seen["running"] = max(seen["running"], len(pool._running_workers()))
            p = httpx.get(srv.url + "/sdapi/v1/progress", timeout=30).json()
            seen["progress"].append(p["progress"])

        got = images(srv.url, [0, 1], watch)
        assert seen["running"] == 2  # both requests ran at once, one per worker
        assert max(seen["progress"]) > 0  # /progress reads the running job's worker
        for a, b in zip(got, expected, strict=True):
            assert np.array_equal(a, b)
        # a model switch reaches every worker (after its running job)
        r = httpx.post(srv.url + "/sdapi/v1/options", json={"sd_model_checkpoint": "tiny-sd2"}, timeout=300)
        assert r.status_code == 200, r.text
        titles = pool.current_titles()
        assert len(titles) == 2 and all(t and t.startswith("tiny-sd2") for t in titles), titles
        assert httpx.get(srv.url + "/sdapi/v1/options", timeout=30).json()["sd_model_checkpoint"].startswith("tiny-sd2")


def test_a_worker_seeing_another_checkpoint_file_is_refused_naming_its_node(data_dir, tmp_path):
    from modules.app import bootstrap
    from modules.app.cluster import ClusterError
    from modules.app.cluster.actor import checkpoint_problem
    from modules.app.cluster.start import start_pool
    from modules.app.options import Options
    from modules.models.checkpoints import CheckpointRegistry, HashCache

    options = Options(data_dir=data_dir, ray="local", ray_workers=1, device="cpu")
    registry = CheckpointRegistry(options.model_folders(), HashCache(None))
    info = next(i for i in registry.refresh() if i.model_name == "tiny-depth")
    other = dataclasses.replace(info, sha256="0" * 64)  # the driver's file has another hash than the worker's
    with pytest.raises(ClusterError) as e:
        start_pool(options, bootstrap.create_worker_service, other)
    assert "worker 1 on node" in str(e.value) and "different file" in str(e.value)
    assert "0000000000" in str(e.value)
    missing = checkpoint_problem(str(tmp_path / "nope.safetensors"), None, 1)
    assert missing and "no checkpoint file at" in missing and "same path" in missing


def test_no_ray_without_the_flag_and_clear_errors_with_it(tmp_path, data_dir, capsys):
    inp = inputs(tmp_path / "in", 1)
    code = (
        "import sys\n"
        "from modules.app import bootstrap\n"
        "from modules.app.options import Options\n"
        f"s = bootstrap.create_service(Options(data_dir={str(data_dir)!r}, device='cpu'))\n"
        "s.select_checkpoint('tiny-depth'); s.close()\n"
        "assert 'ray' not in sys.modules, 'ray imported without --ray'\n"
        "sys.modules['ray'] = None  # as if Ray were not installed\n"
        "from modules.frontends.batch import cli\n"
        f"sys.exit(cli.main(['--data-dir', {str(data_dir)!r}, '--input', {str(inp)!r}, '--output', "
        f"{str(tmp_path / 'o')!r}, '--ray', 'local']))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().splitlines()[-1] == "error: Ray not installed: pip install 'ray[default]==2.60.0' (needed for --ray)"
    t0 = time.time()
    with pytest.raises(SystemExit) as e:  # nothing listens there: one line, exit status 2, within seconds
        batch(data_dir, inp, tmp_path / "o2", "--ray", "127.0.0.1:1")
    assert e.value.code == 2 and time.time() - t0 < 30
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: --ray 127.0.0.1:1: no Ray cluster answers there"), err
