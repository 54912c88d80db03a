"""LoRA networks on the full-size model: time to apply and remove, cost per step while applied, memory.

Writes random LoRA files (kohya layout, names from the loaded model's own modules, as sd-scripts
names them; sd-scripts' default targets: the UNet's transformer blocks, the text encoder's attention
and MLP; ``--conv`` adds LoCon's ResNet / sampler convolutions) of each ``--ranks`` into a temporary
folder, then measures for one and for three of them: seconds to merge, seconds per UNet step (batch 2,
as with guidance) merged and not, seconds to restore, process RSS and the checkpoint mapping's dirty
pages when it is memory-mapped (0: the mapped weights were never written).

    python benchmarks/bench_networks.py --ckpt /big/sd2depth_rand1234.safetensors [--ranks 32,128] [--size 512]
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import machine, model_manager, parser, require_ckpt, rss_mb, synchronize, write_json
from safetensors.torch import save_file

from modules.models.networks import NetworkRegistry, NetworkStack


def targets(model, conv: bool) -> list[tuple[str, torch.nn.Module]]:
    """(kohya name, module) of sd-scripts' LoRA targets in `model`."""
    out = []
    for path, module in model.unet.named_modules():
        if (".attentions." in path and isinstance(module, torch.nn.Linear | torch.nn.Conv2d)) or (
            conv and isinstance(module, torch.nn.Conv2d) and ("resnets" in path or "samplers" in path)
        ):
            out.append(("lora_unet_" + path.replace(".", "_"), module))
    nested = hasattr(model.text_encoder, "text_model")
    for path, module in model.text_encoder.named_modules():
        if isinstance(module, torch.nn.Linear) and (".self_attn." in path or ".mlp." in path):
            out.append(("lora_te_" + (path if nested else f"text_model.{path}").replace(".", "_"), module))
    return out


def write_lora(path: Path, modules: list[tuple[str, torch.nn.Module]], rank: int, seed: int) -> int:
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for name, module in modules:
        w = module.weight
        kernel = tuple(w.shape[2:])
        sd[f"{name}.lora_down.weight"] = torch.randn(rank, w.shape[1], *kernel, generator=gen).half() * 0.01
        sd[f"{name}.lora_up.weight"] = torch.randn(w.shape[0], rank, *([1] * len(kernel)), generator=gen).half() * 0.01
        sd[f"{name}.alpha"] = torch.tensor(rank / 2)
    save_file(sd, str(path))
    return path.stat().st_size


def dirty_kb(path: Path) -> int | None:
    """Private_Dirty kB of this process' mappings of `path` (written pages of a memory-mapped file);
    None when the file is not mapped (``safe_load`` reads weights into memory by default)."""
    total, inside, mapped = 0, False, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and ":" not in head[0]:
            inside = line.removesuffix(" (deleted)").endswith(str(path))
            mapped = mapped or inside
        elif inside and line.startswith("Private_Dirty:"):
            total += int(head[1])
    return total if mapped else None


def step_seconds(model, size: int, repeats: int) -> float:
    """Median seconds of one UNet call on a guidance batch (2) at `size` pixels."""
    lat = size // model.vae_scale
    x = torch.randn(2, 4, lat, lat, device=model.device)
    depth = torch.zeros(2, 1, lat, lat, device=model.device)
    ctx = torch.randn(2, 77, model.unet.config.cross_attention_dim, device=model.device)
    cond = {"c_concat": [depth], "c_crossattn": [ctx]} if model.conditioning_key == "hybrid" else {"c_crossattn": [ctx]}
    times = []
    for _ in range(repeats):
        synchronize()
        t0 = time.perf_counter()
        model.apply_model(x, torch.tensor([500] * 2, device=model.device), cond)
        synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def timed(fn) -> float:
    synchronize()
    t0 = time.perf_counter()
    fn()
    synchronize()
    return time.perf_counter() - t0


def measure(stack: NetworkStack, model, request: list, ckpt: Path, args) -> dict:
    row = {"networks": [n for n, _, _ in request], "rss_before_mb": rss_mb()}
    row["apply_s"] = timed(lambda: stack.apply(model, request))
    row["merged_weights"] = stack.last_stats["merged"]
    row["rss_applied_mb"] = rss_mb()
    row["reapply_same_s"] = timed(lambda: stack.apply(model, request))
    row["step_applied_s"] = step_seconds(model, args.size, args.repeats)
    row["ckpt_dirty_kb"] = dirty_kb(ckpt)
    row["restore_s"] = timed(lambda: stack.restore(model))
    row["rss_restored_mb"] = rss_mb()
    print(", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)
    return row


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--ranks", default="32,128", help="comma-separated LoRA ranks")
    p.add_argument("--size", type=int, default=512, help="image size of the per-step measurement")
    p.add_argument("--repeats", type=int, default=2, help="UNet calls per step measurement (median)")
    p.add_argument("--conv", action="store_true", help="LoCon: the ResNet and sampler convolutions too")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    ckpt = require_ckpt(args)
    with ckpt.open("rb") as f:
        os.fsync(f.fileno())  # a freshly written file's pages count as dirty until written back
    torch.set_grad_enabled(False)
    t0 = time.perf_counter()
    model = model_manager(ckpt, device=args.device).load(ckpt.name).model
    report = {"machine": machine(), "settings": vars(args), "load_s": time.perf_counter() - t0, "rows": []}
    report["rss_loaded_mb"] = rss_mb()
    step_seconds(model, args.size, 1)  # warm-up: first-call costs out of the timed steps
    report["step_plain_s"] = step_seconds(model, args.size, args.repeats)
    report["rss_paged_in_mb"] = rss_mb()
    print(f"loaded in {report['load_s']:.1f}s; step without networks {report['step_plain_s']:.2f}s; "
          f"RSS {report['rss_paged_in_mb']:.0f} MB", flush=True)  # fmt: skip
    modules = targets(model, args.conv)
    with tempfile.TemporaryDirectory(prefix="bench-lora-") as tmp:
        for rank in (int(r) for r in args.ranks.split(",")):
            sizes = [write_lora(Path(tmp) / f"r{rank}_{i}.safetensors", modules, rank, seed=i) for i in range(3)]
            print(f"rank {rank}: {len(modules)} modules, files of {sizes[0] / 2**20:.0f} MB", flush=True)
            registry = NetworkRegistry([Path(tmp)])
            registry.refresh()
            stack = NetworkStack(registry)
            for count in (1, 3):
                request = [(f"r{rank}_{i}", 1.0, 1.0) for i in range(count)]
                report["rows"].append(
                    {"rank": rank, "file_mb": sizes[0] / 2**20, **measure(stack, model, request, ckpt, args)}
                )
    write_json(args.json, report)


if __name__ == "__main__":
    main()
