"""Shared pieces of the benchmark scripts: the full-size model, test images, stage timers, memory.

Benchmarks print figures; they are not tests. They need a full-size checkpoint in the real
512-depth-ema layout (random weights are fine for speed and memory):

    python ../shared/ref/make_ckpt.py --keys ../shared/ref/keys.json --seed 1234 \\
        --out /big/sd2depth_rand1234.ckpt --safetensors /big/sd2depth_rand1234.safetensors

and take it with ``--ckpt`` (or the ``BENCH_CKPT`` environment variable).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import statistics
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--ckpt", default=os.environ.get("BENCH_CKPT"), help="full-size checkpoint (.safetensors/.ckpt)")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    return p


def require_ckpt(args) -> Path:
    if not args.ckpt or not Path(args.ckpt).is_file():
        raise SystemExit("give a full-size checkpoint with --ckpt (see benchmarks/common.py for how to make one)")
    return Path(args.ckpt)


def model_manager(ckpt: Path, retain: bool = True, device: str = "cpu"):
    """A model manager over the checkpoint's folder (no hashing), for the benchmarks: float32 on the
    CPU, float16 on a GPU (``--precision autocast``, as the web UI).

    With `retain` the process allocator is set as the web UI sets it (freed memory reused within a
    job); without, glibc's defaults stay (as in a plain diffusers script)."""
    from modules.core import memory
    from modules.models import devices
    from modules.models.checkpoints import CheckpointRegistry, HashCache
    from modules.models.manager import ModelManager

    if retain:
        memory.retain_freed_memory()
    torch.set_grad_enabled(False)
    registry = CheckpointRegistry([ckpt.parent], HashCache(None), hashing=False)
    registry.refresh()
    where = devices.resolve_device(device)
    return ModelManager(registry, device=where, dtype=devices.resolve_dtype(where))


def synchronize() -> None:
    """Wait for queued GPU work, so wall-clock timers measure it (nothing to wait for on the CPU)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def test_image(width: int, height: int, seed: int = 0) -> bytes:
    """A smooth, structured RGB picture (gradients and a disc) as PNG bytes."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    disc = ((xx - width / 2) ** 2 + (yy - height / 2) ** 2 < (min(width, height) / 3) ** 2).astype(np.float32)
    rng = np.random.RandomState(seed)
    img = np.stack([xx / width * 255, yy / height * 255, disc * 200 + 30], -1) + rng.normal(0, 4, (height, width, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


class StageTimer:
    """Forward hooks that time named modules (shared by both pipelines, so both are measured alike)."""

    def __init__(self, modules: dict[str, torch.nn.Module | tuple[torch.nn.Module, torch.nn.Module]]):
        """name -> a module, or (first module, last module) for a span such as DPT's embeddings .. head."""
        self.calls: dict[str, list[float]] = defaultdict(list)
        self._handles = []
        for name, module in modules.items():
            first, last = module if isinstance(module, tuple) else (module, module)
            self._handles.append(first.register_forward_pre_hook(self._start(name)))
            self._handles.append(last.register_forward_hook(self._stop(name)))
        self._t0: dict[str, float] = {}

    def _start(self, name):
        def hook(_module, _args):
            synchronize()
            self._t0[name] = time.perf_counter()

        return hook

    def _stop(self, name):
        def hook(_module, _args, _out):
            synchronize()
            if name in self._t0:
                self.calls[name].append(time.perf_counter() - self._t0.pop(name))

        return hook

    def reset(self) -> None:
        self.calls = defaultdict(list)

    def summary(self) -> dict[str, dict[str, float]]:
        return {k: {"calls": len(v), "total_s": sum(v), "mean_s": statistics.mean(v)} for k, v in self.calls.items()}

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@contextmanager
def timed(results: dict, key: str):
    t0 = time.perf_counter()
    yield
    results[key] = time.perf_counter() - t0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def machine() -> dict:
    """What the figures were measured on."""
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
        model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
        flags = next((line for line in info.splitlines() if line.startswith("flags")), "")
    except OSError:
        model = ""
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in flags]
    return {
        "cpu": model,
        "isa": isa,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def write_json(path: str | None, data: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(data, indent=2, default=str))


def median(values: list[float]) -> float:
    return statistics.median(values)


# diffusers' own schedulers for the baseline arms, configured as its depth2img pipeline runs them on the
# model's schedule (our samplers are our own functions now, so the baseline does not borrow them)
DIFFUSERS_SCHEDULERS = {
    "Euler a": ("EulerAncestralDiscreteScheduler", {"timestep_spacing": "linspace"}),
    "Euler": ("EulerDiscreteScheduler", {"timestep_spacing": "linspace"}),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {"timestep_spacing": "linspace", "use_karras_sigmas": True}),
    "DDIM": ("DDIMScheduler", {"timestep_spacing": "leading", "steps_offset": 1, "set_alpha_to_one": False,
                               "clip_sample": False}),
}  # fmt: skip


def diffusers_scheduler(name: str, betas: np.ndarray, parameterization: str = "eps"):
    """The diffusers scheduler for A1111 sampler `name` (the baseline arms), on the model's float64 betas."""
    import diffusers

    cls, options = DIFFUSERS_SCHEDULERS[name]
    prediction = "v_prediction" if parameterization == "v" else "epsilon"
    return getattr(diffusers, cls)(num_train_timesteps=len(betas), trained_betas=betas.tolist(),
                                   prediction_type=prediction, **options)  # fmt: skip
