"""Convolution algorithms on the UNet's own 3x3 convolutions: direct (PyTorch), pre-packed oneDNN, Winograd.

Captures the input of every 3x3 stride-1 convolution of one CFG UNet call (batch 2) at --size, then
times each convolution with each algorithm alternately (best of --repeat, after one untimed call) and
prints the per-layer times, the totals per latent size, and each algorithm's error against float64.

    python benchmarks/bench_conv.py --ckpt /big/sd2depth_rand1234.safetensors [--size 512]
"""

from __future__ import annotations

import time
from collections import defaultdict

import torch
import torch.nn.functional as F
from common import machine, parser, require_ckpt, write_json

from modules.core import memory
from modules.models import optimizations
from modules.models.checkpoints import load_model

ALGOS = ("direct", "pre-packed", "Winograd")


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--repeat", type=int, default=4)
    args = p.parse_args()
    memory.retain_freed_memory()
    torch.set_grad_enabled(False)
    model = load_model(require_ckpt(args))
    convs = {n: m for n, m in model.unet.named_modules() if optimizations.WinogradConv.supports(m)}
    inputs: dict[str, torch.Tensor] = {}
    hooks = [
        m.register_forward_pre_hook(lambda _m, a, n=n: inputs.setdefault(n, a[0].clone())) for n, m in convs.items()
    ]
    h = args.size // 8
    x, d, ctx = torch.randn(2, 4, h, h), torch.rand(2, 1, h, h) * 2 - 1, torch.randn(2, 77, 1024)
    model.apply_model(x, torch.tensor([500, 500]), {"c_concat": [d], "c_crossattn": [ctx]})
    for hook in hooks:
        hook.remove()

    totals: dict[int, dict[str, float]] = defaultdict(lambda: dict.fromkeys(ALGOS, 0.0))
    errors: dict[str, float] = dict.fromkeys(ALGOS, 0.0)
    layers = []
    for name, xin in inputs.items():
        conv = convs[name]
        fast = optimizations.WinogradConv(conv)
        fast.MIN_TILES = 1  # time it at every size, also where the app falls back
        packed = optimizations.PackedConv(conv)
        run = {
            "direct": lambda c=conv, xi=xin: c._conv_forward(xi, c.weight, c.bias),
            "pre-packed": lambda f=packed, xi=xin: f(xi),
            "Winograd": lambda f=fast, xi=xin: f(xi),
        }
        bias = None if conv.bias is None else conv.bias.double()
        ref = F.conv2d(xin.double(), conv.weight.double(), bias, padding=1)
        for algo, f in run.items():
            errors[algo] = max(errors[algo], ((f().double() - ref).abs().max() / ref.abs().max()).item())
        best = dict.fromkeys(ALGOS, float("inf"))
        for _ in range(args.repeat):
            for algo, f in run.items():
                t0 = time.perf_counter()
                f()
                best[algo] = min(best[algo], time.perf_counter() - t0)
        for algo in ALGOS:
            totals[xin.shape[-1]][algo] += best[algo]
        layers.append({"layer": name, "input": list(xin.shape), "out_channels": conv.out_channels, **best})
        print(f"{name:36s} {tuple(xin.shape)} -> {conv.out_channels:4d}: "
              + "  ".join(f"{a} {best[a] * 1e3:6.1f} ms" for a in ALGOS), flush=True)  # fmt: skip
    print("\nper UNet call, by latent size (s):")
    for side, t in sorted(totals.items(), reverse=True):
        print(f"  {side:3d}x{side:<3d} " + "  ".join(f"{a} {t[a]:.2f}" for a in ALGOS)
              + f"  (Winograd x{t['direct'] / t['Winograd']:.2f} of direct)")  # fmt: skip
    print("max error relative to the largest output, vs float64: "
          + ", ".join(f"{a} {e:.1e}" for a, e in errors.items()))  # fmt: skip
    write_json(
        args.json, {"machine": machine(), "size": args.size, "layers": layers, "totals": totals, "errors": errors}
    )


if __name__ == "__main__":
    main()
