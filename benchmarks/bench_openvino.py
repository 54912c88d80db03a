"""8c. OpenVINO's CPU runtime on our UNet vs our bfloat16 UNet (issue 21), in one process.

Converts the full-size UNet (float32 weights) once with ``openvino.convert_model`` on the module with
example inputs (64x64 latent, batch 2: a 512x512 CFG call), compiles it for the CPU with
``INFERENCE_PRECISION_HINT`` bf16 (and f32 with ``--f32``), and times one call (best of N) against ours:
the bfloat16 UNet of the shipped plan and the float32 UNet. Distance: relative L2 error of each
output to our float32 output on the same inputs. Prints conversion and compile times and RSS.

    python benchmarks/bench_openvino.py --ckpt /big/sd2depth_rand1234.safetensors [--reps 3] [--f32]
"""

from __future__ import annotations

import copy
import os
import time

import torch
from common import machine, parser, require_ckpt, rss_mb, write_json

from modules.models import precision
from modules.models.checkpoints import load_model


class Wrapped(torch.nn.Module):
    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, context):
        return self.unet(sample, timestep, encoder_hidden_states=context).sample


def best_of(fn, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--f32", action="store_true", help="also compile OpenVINO with f32 inference precision")
    args = p.parse_args()
    ckpt = require_ckpt(args)
    import openvino as ov

    torch.set_grad_enabled(False)
    report = {"machine": machine(), "openvino": ov.__version__, "load_before": os.getloadavg()}
    model = load_model(ckpt)  # float32, as the file
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, model.unet.config.in_channels, 64, 64, generator=g)
    t = torch.tensor([500, 500])
    ctx = torch.randn(2, 77, model.unet.config.cross_attention_dim, generator=g)
    wrapped = Wrapped(model.unet).eval()

    ref = wrapped(x, t, ctx)  # warm-up + reference (float32, PyTorch's own convolutions)
    fp32_s = best_of(lambda: wrapped(x, t, ctx), args.reps)
    unet16 = copy.deepcopy(model.unet).to(torch.bfloat16)  # what the shipped plan holds
    w16 = Wrapped(unet16).eval()
    ours16 = w16(x.bfloat16(), t, ctx.bfloat16()).float()
    bf16_s = best_of(lambda: w16(x.bfloat16(), t, ctx.bfloat16()), args.reps)

    def rel(a):
        return float((a.float() - ref).norm() / ref.norm())

    report["ours"] = {"fp32_s": fp32_s, "bf16_s": bf16_s, "bf16_rel_err": rel(ours16)}
    print(f"ours: fp32 {fp32_s:.2f} s/call, bf16 weights {bf16_s:.2f} s/call (rel err {rel(ours16):.4f})", flush=True)
    del unet16, w16

    t0 = time.perf_counter()
    ov_model = ov.convert_model(wrapped, example_input=(x, t, ctx))
    convert_s = time.perf_counter() - t0
    print(f"convert_model: {convert_s:.1f}s, RSS {rss_mb():,.0f} MiB", flush=True)
    core = ov.Core()
    report["openvino_arms"] = {}
    for hint in ["bf16"] + (["f32"] if args.f32 else []):
        t0 = time.perf_counter()
        compiled = core.compile_model(ov_model, "CPU", {"INFERENCE_PRECISION_HINT": hint})
        compile_s = time.perf_counter() - t0
        feed = [x.numpy(), t.numpy(), ctx.numpy()]
        out = torch.from_numpy(compiled(feed)[0].copy())  # first call: untimed
        call_s = best_of(lambda: compiled(feed), args.reps)
        row = {"compile_s": compile_s, "call_s": call_s, "rel_err": rel(out), "rss_mb": rss_mb(),
               "speedup_vs_ours_bf16": bf16_s / call_s}  # fmt: skip
        report["openvino_arms"][hint] = row
        print(f"openvino {hint}: compile {compile_s:.1f}s, {call_s:.2f} s/call (rel err {row['rel_err']:.4f}), "
              f"{row['speedup_vs_ours_bf16']:.2f}x ours bf16, RSS {row['rss_mb']:,.0f} MiB", flush=True)  # fmt: skip
        del compiled
    report["convert_s"] = convert_s
    report["probe"] = precision.probe().as_dict()
    report["load_after"] = os.getloadavg()
    print(f"load average before {report['load_before']}, after {report['load_after']}")
    write_json(args.json, report)


if __name__ == "__main__":
    main()
