"""9c. Each part of the model in float32 and in bfloat16, one process: VAE encode and decode, UNet call, MiDaS.

For each part: float32 with PyTorch's own convolutions ("direct", what diffusers runs), float32 with
our Winograd convolutions (the float32 default), bfloat16 weights (NCHW) and bfloat16 weights in
channels-last memory format; best of --repeat after an untimed call, 512x512 (64x64 latent, UNet
batch 2 as CFG runs it). Also how far each bfloat16 output is from float32 (the decoded image's
PSNR / max pixel difference; the latent's and the UNet output's relative error).

    python benchmarks/bench_bf16_parts.py --ckpt /big/sd2depth_rand1234.safetensors [--parts vae,unet,depth,boundary]

"depth": MiDaS in float32 (as shipped) against a bfloat16 copy: time and how far the depth map moves.
"boundary": our ``apply_model`` against the bare bfloat16 UNet call, alternated (what the model boundary's
casts and concatenation cost, and that the output is the same).
"""

from __future__ import annotations

import copy
import io
import time

import numpy as np
import torch
from bench_bf16 import cpu_flags, distance
from common import machine, parser, require_ckpt, test_image, write_json
from PIL import Image

from modules.core.settings import Settings
from modules.models import midas, optimizations, precision
from modules.models.checkpoints import load_model

PLAIN = {"opt_winograd_conv": False, "opt_prepack_conv": False, "opt_channels_last": False}


def best_of(fn, repeat: int) -> tuple[float, torch.Tensor]:
    out = fn()  # untimed: oneDNN's kernel choice, page-in
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def to_uint8(x: torch.Tensor) -> np.ndarray:
    return ((x[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()


def variants(model, module_name: str):
    """(label, module) for float32 direct, float32 Winograd, bfloat16, bfloat16 channels-last."""
    optimizations.apply(model, Settings().override(PLAIN))  # copies with PyTorch's own convolutions
    fp32 = getattr(model, module_name)
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
    bf16_cl = copy.deepcopy(fp32).to(torch.bfloat16).to(memory_format=torch.channels_last)
    return fp32, bf16, bf16_cl


def time_variants(model, run, modules, repeat: int) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Best times (and outputs) of one part as float32 direct / Winograd, bfloat16, bfloat16 channels-last;
    ``run(module, dtype, memory_format)`` gives the call to time."""
    fp32, bf16, bf16_cl = modules
    rows, outs = {}, {}
    optimizations.apply(model, Settings().override(PLAIN))
    rows["fp32 direct"], outs["fp32"] = best_of(run(fp32, torch.float32), repeat)
    optimizations.apply(model, Settings())
    rows["fp32 Winograd"], _ = best_of(run(fp32, torch.float32), repeat)
    optimizations.apply(model, Settings().override(PLAIN))
    rows["bf16"], outs["bf16"] = best_of(run(bf16, torch.bfloat16), repeat)
    rows["bf16 channels-last"], outs["bf16 cl"] = best_of(run(bf16_cl, torch.bfloat16, torch.channels_last), repeat)
    return rows, outs


def midas_part(model, x: torch.Tensor, repeat: int) -> dict:
    """MiDaS (DPT-Hybrid) in float32, as shipped, against a bfloat16 copy: time and how far the depth moves
    (raw prediction; the [-1, 1] map at latent size the UNet gets; the 8-bit map shown to the user)."""
    fp32 = model.depth_model
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
    pixels = midas.midas_preprocess(x)
    h, w = x.shape[-2] // 8, x.shape[-1] // 8

    def run(dpt):
        return lambda: midas.dpt_forward(dpt, pixels.to(next(dpt.parameters()).dtype)).unsqueeze(1).float()

    (t32, raw32), (t16, raw16) = best_of(run(fp32), repeat), best_of(run(bf16), repeat)
    cond32, cond16 = midas.to_latent_conditioning(raw32, (h, w)), midas.to_latent_conditioning(raw16, (h, w))
    shown32, shown16 = (np.round(midas.depth_for_display(r, tuple(x.shape[-2:])) * 255) for r in (raw32, raw16))
    out = {"fp32_s": t32, "bf16_s": t16, "raw_rel_error": rel(raw16, raw32),
           "latent_depth_max_abs": float((cond16 - cond32).abs().max()),
           "latent_depth_mean_abs": float((cond16 - cond32).abs().mean()),
           "shown_depth_max_diff": float(np.abs(shown16 - shown32).max()),
           "shown_depth_mean_diff": float(np.abs(shown16 - shown32).mean())}  # fmt: skip
    print(f"\n== MiDaS ({x.shape[-1]}x{x.shape[-2]}): fp32 {t32:.3f}s, bf16 {t16:.3f}s (x{t32 / t16:.2f}); bf16 vs fp32: "
          f"raw rel. error {out['raw_rel_error']:.2e}, latent depth [-1,1] max |diff| {out['latent_depth_max_abs']:.3f} "
          f"mean {out['latent_depth_mean_abs']:.4f}, shown 8-bit depth max diff {out['shown_depth_max_diff']:.0f} "
          f"mean {out['shown_depth_mean_diff']:.2f}")  # fmt: skip
    return out


def boundary(repeat: int, ckpt) -> dict:
    """Our model boundary (``apply_model``: float32 latents and depth in, the cast, the concatenation, float32
    out) against the bare bfloat16 UNet call on the same inputs, alternated ABBA in one process: what the
    wrapper costs per call, and whether it gives the very same output."""
    model = load_model(ckpt, precision=precision.plan_for("cpu"))
    gen = torch.Generator().manual_seed(0)
    x, depth = torch.randn(2, 4, 64, 64, generator=gen), torch.randn(2, 1, 64, 64, generator=gen)
    ctx, t = torch.randn(2, 77, 1024, generator=gen), torch.tensor([500.5, 500.5])
    dtype = model.dtype
    xb, cb = torch.cat([x, depth], 1).to(dtype), ctx.to(dtype)
    arms = {"apply_model": lambda: model.apply_model(x, t, {"c_concat": [depth], "c_crossattn": [ctx]}),
            "bare UNet": lambda: model.unet(xb, t, encoder_hidden_states=cb).sample.float()}  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in arms}
    outs = {name: fn() for name, fn in arms.items()}  # untimed
    for i in range(max(2, repeat)):
        for name in arms if i % 2 == 0 else reversed(arms):
            t0 = time.perf_counter()
            outs[name] = arms[name]()
            times[name].append(time.perf_counter() - t0)
    same = torch.equal(outs["apply_model"], outs["bare UNet"])
    print(f"\n== Model boundary ({model.precision_label}, batch 2, 64x64 latent), ABBA, same output: {same}")
    for name, ts in times.items():
        runs = ", ".join(f"{v:.2f}" for v in ts)
        print(f"   {name:12s} min {min(ts):6.3f}s  mean {sum(ts) / len(ts):6.3f}s  ({runs})")
    return times | {"same_output": same}


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--parts", default="vae,unet")
    args = p.parse_args()
    torch.set_grad_enabled(False)
    flags = [f for f in cpu_flags() if "bf16" in f or f.startswith("amx") or f in ("avx2", "avx512f")]
    print(f"CPU flags (bf16-related): {' '.join(flags)}", flush=True)
    print(f"probe: {precision.probe().summary()} -> fast={precision.probe().fast}", flush=True)
    parts = [s.strip() for s in args.parts.split(",")]
    model = None  # the float32 model, for the parts that compare with it
    if {"vae", "unet", "depth"} & set(parts):
        model = load_model(require_ckpt(args), precision=precision.plan_for("cpu", "full"))
    report = {"machine": machine() | {"lscpu_flags_bf16": flags}, "probe": precision.probe().as_dict(), "parts": {}}
    h = args.size // 8
    gen = torch.Generator().manual_seed(0)
    img = Image.open(io.BytesIO(test_image(args.size, args.size))).convert("RGB")
    x = torch.from_numpy(np.asarray(img)).permute(2, 0, 1)[None].float() / 127.5 - 1

    def table(name: str, rows: dict[str, float], notes: dict[str, str]) -> None:
        base = rows["fp32 direct"]
        print(f"\n== {name}")
        for label, s in rows.items():
            print(f"   {label:22s} {s:7.3f}s  x{base / s:4.2f} of fp32 direct  {notes.get(label, '')}")
        report["parts"][name] = {"seconds": rows, "notes": notes}

    if "vae" in parts:
        fp32, bf16, bf16_cl = variants(model, "vae")
        z = fp32.encode(x).latent_dist.mean
        for stage in ("encode", "decode"):
            arg = x if stage == "encode" else z

            def run(vae, dtype, fmt=torch.contiguous_format, stage=stage, arg=arg):
                a = arg.to(dtype).contiguous(memory_format=fmt)
                return (lambda: vae.encode(a).latent_dist.mean) if stage == "encode" else (lambda: vae.decode(a).sample)

            rows, outs = time_variants(model, run, (fp32, bf16, bf16_cl), args.repeat)
            notes = {}
            for label, key in (("bf16", "bf16"), ("bf16 channels-last", "bf16 cl")):
                if stage == "decode":
                    d = distance(to_uint8(outs[key]), to_uint8(outs["fp32"]))
                    notes[label] = (f"vs fp32: PSNR {d['psnr_db']:.1f} dB, max pixel diff {d['max_pixel_diff']}, "
                                    f"SSIM {d['ssim']:.4f}")  # fmt: skip
                else:
                    notes[label] = f"vs fp32: latent relative error {rel(outs[key], outs['fp32']):.2e}"
            table(f"VAE {stage} ({args.size}x{args.size})", rows, notes)
        del bf16, bf16_cl

    if "unet" in parts:
        fp32, bf16, bf16_cl = variants(model, "unet")
        lat = torch.randn(2, 5, h, h, generator=gen)
        ctx = torch.randn(2, 77, 1024, generator=gen)
        t = torch.tensor([500, 500])

        def run(unet, dtype, fmt=torch.contiguous_format):
            a, c = lat.to(dtype).contiguous(memory_format=fmt), ctx.to(dtype)
            return lambda: unet(a, t, encoder_hidden_states=c).sample

        rows, outs = time_variants(model, run, (fp32, bf16, bf16_cl), args.repeat)
        notes = {k: f"vs fp32: relative error {rel(outs[v], outs['fp32']):.2e}"
                 for k, v in (("bf16", "bf16"), ("bf16 channels-last", "bf16 cl"))}  # fmt: skip
        table(f"UNet call (batch 2, {h}x{h} latent)", rows, notes)
    if "depth" in parts:
        report["parts"]["MiDaS"] = midas_part(model, x, args.repeat)
    if "boundary" in parts:
        model = None  # the float32 model goes before the bfloat16 one is loaded
        report["parts"]["boundary"] = boundary(args.repeat, require_ckpt(args))
    write_json(args.json, report)


if __name__ == "__main__":
    main()
