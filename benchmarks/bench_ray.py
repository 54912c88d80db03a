"""Per-item overhead of running a job on a Ray worker (scheduling + moving the request and the result)
against the item's compute, with 1 and 2 workers on a local Ray instance (BENCHMARKS.md 8).

    ./venv/bin/python benchmarks/bench_ray.py [--items 8] [--size 128] [--steps 8]

Uses the tiny random depth model of the tests (the compute per item is small, which makes the overhead
as visible as it gets); prints the CPU flags first.
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from modules.app import bootstrap  # noqa: E402
from modules.app.options import Options  # noqa: E402
from modules.core.request import GenerationRequest  # noqa: E402
from tests.helpers.ldm_layout import write_checkpoint  # noqa: E402
from tests.helpers.server import populate  # noqa: E402


def request(size: int, steps: int, seed: int) -> GenerationRequest:
    rng = np.random.RandomState(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.randint(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return GenerationRequest(init_images=[buf.getvalue()], prompt="a house", steps=steps, seed=seed, width=size,
                             height=size, denoising_strength=0.8, save_images=False, save_grid=False)  # fmt: skip


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=8)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=8)
    a = ap.parse_args()
    flags = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    print(next((line for line in flags.splitlines() if line.startswith("Flags")), "Flags: ?"))
    data = Path(tempfile.mkdtemp())
    populate(data, write_checkpoint(data / "ck", "tiny-depth", "sd2-depth", fmt="safetensors", seed=1))
    reqs = [request(a.size, a.steps, i) for i in range(a.items)]
    torch.set_num_threads(1)  # as a worker holding 1 CPU
    local = bootstrap.create_service(Options(data_dir=data, device="cpu"))
    local.select_checkpoint("tiny-depth")
    local.generate(reqs[0])  # warm-up
    compute = [timed(lambda r=r: local.generate(r)) for r in reqs]
    local.close()
    print(f"one process, 1 thread: {statistics.median(compute) * 1000:.1f} ms per item (median of {a.items})")

    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})  # fmt: skip

    @ray.remote
    def echo(x):
        return x

    ray.get(echo.remote(0))
    nothing = [timed(lambda: ray.get(echo.remote(0))) for _ in range(50)]
    image = np.zeros((512, 512, 3), np.uint8)
    moved = [timed(lambda: ray.get(echo.remote(image))) for _ in range(20)]
    print(f"a Ray call with nothing: {statistics.median(nothing) * 1000:.2f} ms; "
          f"with a 512x512 RGB array there and back: {statistics.median(moved) * 1000:.2f} ms")  # fmt: skip
    for workers in (1, 2):
        opts = Options(data_dir=data, device="cpu", ray="local", ray_workers=workers, ckpt="tiny-depth")
        service = bootstrap.create_service(opts)
        for r in reqs[:workers]:
            service.generate(r)  # warm-up on each worker
        one_by_one = [timed(lambda r=r, s=service: s.generate(r)) for r in reqs]
        wall = timed(lambda s=service: [f.result() for f in [s.submit(r) for r in reqs]])
        service.close()
        over = statistics.median(one_by_one) - statistics.median(compute)
        print(f"{workers} worker(s): {statistics.median(one_by_one) * 1000:.1f} ms per item one at a time "
              f"(overhead {over * 1000:+.1f} ms); {a.items} at once: {wall:.2f} s, {a.items / wall:.2f} items/s")  # fmt: skip
    ray.shutdown()


if __name__ == "__main__":
    main()
