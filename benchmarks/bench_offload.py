"""Low-VRAM offloading (--medvram / --lowvram): weights on the GPU at once, bytes moved, time, peak memory.

For each mode (none, med, low) on the full-size model, one img2img job (512x512, 20 steps at 0.75,
Euler a, CFG 7.5 by default): its time, the weight bytes on the execution device with the largest part
there, the bytes moved per job (as the offloader counted them during the run), and on CUDA the peak
of torch.cuda.max_memory_allocated (weights and activations).

`gpu_weights_gb` is what a GPU holds at once with --precision autocast (UNet, VAE and text encoder
in float16, MiDaS in float32), counted from the parts, so it is meaningful on a CPU-only machine too.
There the execution device is the CPU itself: nothing moves, and the time shows only the hooks' cost.

    python benchmarks/bench_offload.py --ckpt /big/sd2depth_rand1234.safetensors [--device cuda]
        [--modes none,med,low] [--size 512] [--steps 20] [--json out.json]
"""

from __future__ import annotations

import gc
import json
import time

import torch
from common import machine, parser, peak_rss_mb, require_ckpt, test_image, write_json

from modules.core.hooks import Hooks
from modules.core.progress import JobControl
from modules.core.request import GenerationRequest
from modules.core.settings import Settings
from modules.generation.processing import ProcessingContext, process
from modules.models import devices, offload
from modules.models.checkpoints import CheckpointRegistry, HashCache
from modules.models.manager import ModelManager

PROMPT = "a cozy cabin in a snowy forest, oil painting"


def gpu_bytes(module: torch.nn.Module, depth_model: torch.nn.Module | None) -> int:
    """Bytes of `module`'s weights under --precision autocast on a GPU (MiDaS stays float32)."""
    mine = {id(p) for p in depth_model.parameters()} if depth_model is not None else set()
    return sum(p.numel() * (4 if id(p) in mine else 2) for p in module.parameters())


def weight_figures(model, mode: str) -> dict[str, float]:
    if mode == "none":
        parts = [m for m in (model.unet, model.vae, model.text_encoder, model.depth_model) if m is not None]
        total = sum(gpu_bytes(m, model.depth_model) for m in parts)
        return {"gpu_weights_gb": total / 1e9, "gpu_weights_total_gb": total / 1e9, "largest_part": "all"}
    units, shell = offload.plan(model, mode)
    shell_bytes = sum(gpu_bytes(m, model.depth_model) for m in shell)
    sizes = {u.name: gpu_bytes(u.module, model.depth_model) for u in units}
    largest = max(sizes, key=sizes.get)
    return {
        "gpu_weights_gb": (shell_bytes + sizes[largest]) / 1e9,
        "gpu_weights_total_gb": (shell_bytes + sum(sizes.values())) / 1e9,
        "largest_part": largest,
        "parts": len(units),
    }


def run_mode(args, ckpt, device: torch.device, dtype: torch.dtype, mode: str) -> dict:
    registry = CheckpointRegistry([ckpt.parent], HashCache(None), hashing=False)
    registry.refresh()
    models = ModelManager(registry, device=device, dtype=dtype, offload_mode=mode)
    t0 = time.perf_counter()
    model = models.load(ckpt.name).model
    row = {"mode": mode, "load_s": time.perf_counter() - t0, **weight_figures(model, mode)}
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    request = GenerationRequest(prompt=PROMPT, init_images=[test_image(args.size, args.size)], width=args.size,
                                height=args.size, steps=args.steps, denoising_strength=args.strength, cfg_scale=7.5,
                                sampler_name=args.sampler, seed=1234, save_images=False)  # fmt: skip
    moves_before = None
    for run in range(args.runs + 1):  # the first run warms up (kernels, allocator) and is not counted
        ctx = ProcessingContext(models, Settings(), ckpt.parent, hooks=Hooks(), control=JobControl())  # no caches
        t0 = time.perf_counter()
        process(request, ctx)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        if run == 0 and args.runs:
            moves_before = model.offloader.stats() if model.offloader else None
            continue
        row.setdefault("job_s", []).append(seconds)
    steps_run = int(args.steps * args.strength)
    row["job_steps_per_s"] = steps_run / min(row["job_s"])  # over the whole job, not the sampling alone
    if model.offloader is not None:
        stats = model.offloader.stats()
        before = moves_before or {"moves": 0, "bytes_moved": 0}
        row["moves_per_job"] = (stats["moves"] - before["moves"]) / args.runs
        row["gb_moved_per_job"] = (stats["bytes_moved"] - before["bytes_moved"]) / args.runs / 1e9
        row["peak_weights_on_device_gb"] = stats["peak_bytes"] / 1e9  # in the loaded dtype
    if device.type == "cuda":
        row["cuda_peak_allocated_gb"] = torch.cuda.max_memory_allocated() / 1e9
    row["peak_rss_mb"] = peak_rss_mb()
    models.unload()
    del model, models, ctx
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--modes", default="none,med,low")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--strength", type=float, default=0.75)
    p.add_argument("--sampler", default="Euler a")
    p.add_argument("--runs", type=int, default=1, help="timed runs per mode, after one warm-up run")
    args = p.parse_args()
    ckpt = require_ckpt(args)
    torch.set_grad_enabled(False)
    device = devices.resolve_device(args.device)
    dtype = devices.resolve_dtype(device)
    report = {"machine": machine(), "settings": vars(args) | {"ckpt": str(ckpt), "dtype": str(dtype)}, "results": []}
    for mode in args.modes.split(","):
        row = run_mode(args, ckpt, device, dtype, mode)
        report["results"].append(row)
        print(json.dumps(row), flush=True)
    write_json(args.json, report)


if __name__ == "__main__":
    main()
