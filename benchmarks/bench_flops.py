"""5. Distance to the limit: the UNet's FLOPs per step over its measured time, against the machine's peak.

Counts FLOPs of one CFG UNet call at 512x512 (batch 2) with torch.utils.flop_counter, times it
(median of --repeat), and compares with (a) the best fp32 GEMM throughput measured here and
(b) the nominal peak (cores x clock x FLOPs/cycle for the vector ISA found in /proc/cpuinfo).

    python benchmarks/bench_flops.py --ckpt /big/sd2depth_rand1234.safetensors
"""

from __future__ import annotations

import statistics
import time

import torch
from common import machine, parser, require_ckpt, write_json
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from modules.core.settings import Settings
from modules.models import optimizations
from modules.models.checkpoints import load_model


def _sdpa_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    """QK^T and PV of scaled-dot-product attention: 2 x (2 B H L S D)."""
    b, h, q_len, d = query_shape
    k_len = key_shape[-2]
    return 4 * b * h * q_len * k_len * d


def register_cpu_attention_flops() -> None:
    """torch's counter has no formula for the CPU flash-attention kernel; count it like the GPU ones."""
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None and op.default not in flop_counter.flop_registry:

        @flop_counter.register_flop_formula(op)
        def _formula(query, key, value, *args, out_shape=None, **kwargs) -> int:
            return _sdpa_flops(query, key, value)


def gemm_peak(n: int = 2048, repeat: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def nominal_peak_gflops() -> tuple[float, str]:
    """cores x MHz x FLOPs/cycle (fp32 FMA: 32 with AVX2's two 8-wide FMA units, 64 with AVX-512)."""
    mhz, flags = 0.0, ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("cpu MHz") and not mhz:
                mhz = float(line.split(":")[1])
            if line.startswith("flags") and not flags:
                flags = line
    per_cycle = 64 if " avx512f" in flags else 32 if " avx2" in flags else 16
    cores = torch.get_num_threads()
    return cores * mhz / 1000 * per_cycle, f"{cores} threads x {mhz:.0f} MHz x {per_cycle} FLOP/cycle"


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--size", type=int, default=512)
    args = p.parse_args()
    torch.set_grad_enabled(False)
    model = load_model(require_ckpt(args))
    # direct convolutions: the FLOPs counted are those of the model as written (Winograd does fewer)
    optimizations.apply(model, Settings().override({"opt_winograd_conv": False}))
    h = args.size // 8
    x, d, ctx = torch.randn(2, 4, h, h), torch.rand(2, 1, h, h) * 2 - 1, torch.randn(2, 77, 1024)
    cond = {"c_concat": [d], "c_crossattn": [ctx]}
    t = torch.tensor([500])
    register_cpu_attention_flops()
    with FlopCounterMode(display=False) as counter:
        model.apply_model(x, t, cond)
    flops = counter.get_total_flops()
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        model.apply_model(x, t, cond)
        times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    achieved = flops / step / 1e9
    gemm = gemm_peak()
    nominal, how = nominal_peak_gflops()
    report = {
        "machine": machine(),
        "unet_flops_per_cfg_step": flops,
        "step_s": step,
        "achieved_gflops": achieved,
        "gemm_gflops": gemm,
        "nominal_peak_gflops": nominal,
        "nominal_how": how,
        "by_op": {str(k): v for k, v in sorted(counter.get_flop_counts()["Global"].items(), key=lambda kv: -kv[1])},
    }
    print(f"UNet FLOPs per CFG step ({args.size}px, batch 2): {flops / 1e12:.2f} TFLOP")
    print(f"measured step: {step:.2f}s -> {achieved:.0f} GFLOP/s")
    print(f"best fp32 GEMM here: {gemm:.0f} GFLOP/s ({achieved / gemm:.0%} of it)")
    print(f"nominal peak: {nominal:.0f} GFLOP/s ({how}); the UNet reaches {achieved / nominal:.0%}")
    for op, n in list(report["by_op"].items())[:6]:
        print(f"   {op:40s} {n / flops:6.1%}")
    write_json(args.json, report)


if __name__ == "__main__":
    main()
