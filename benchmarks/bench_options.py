"""Speed options, each measured for speed and for how far the image moves from the exact one.

The exact reference is float32, contiguous memory, SDPA attention, PyTorch's direct convolutions
(the default computes 3x3 convolutions with Winograd's algorithm). Each option runs the same
img2img job (same seed); prints seconds, speed-up, max pixel difference and PSNR against the
reference. torch.compile and CPU bfloat16 are slow to try on a small CPU; ask for them explicitly.

    python benchmarks/bench_options.py --ckpt /big/sd2depth_rand1234.safetensors [--steps 10] [--compile] [--only Winograd]
"""

from __future__ import annotations

import time

import numpy as np
from common import machine, model_manager, parser, psnr, require_ckpt, test_image, write_json

from modules.core.hooks import Hooks
from modules.core.progress import JobControl
from modules.core.request import GenerationRequest
from modules.core.settings import Settings
from modules.generation.conditioning import ConditioningCache
from modules.generation.processing import DepthCache, ProcessingContext, process
from modules.models import optimizations

EXACT = {"opt_channels_last": False, "opt_winograd_conv": False}  # PyTorch's own convolutions


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--only", default=None, help="comma-separated substrings: run only the options whose label has one")
    args = p.parse_args()
    ckpt = require_ckpt(args)
    models = model_manager(ckpt)
    model = models.load(ckpt.name).model
    image = test_image(args.size, args.size)
    options = {
        "exact (float32, contiguous, SDPA, direct convs)": EXACT,
        "channels-last": {"opt_channels_last": True},
        "pre-packed oneDNN convs": {**EXACT, "opt_prepack_conv": True},
        "Winograd convs (default)": {**EXACT, "opt_winograd_conv": True},
        "Winograd convs, transformed per call": {**EXACT, "opt_winograd_conv": True, "_per_call": True},
        "token merging 0.3": {**EXACT, "token_merging_ratio": 0.3},
        "token merging 0.5": {**EXACT, "token_merging_ratio": 0.5},
        "negative guidance min sigma 5": {**EXACT, "s_min_uncond": 5.0},
    }
    if args.compile:
        options["torch.compile"] = {"opt_torch_compile": True}
    if args.only:
        wanted = [w.strip() for w in args.only.split(",")]
        options = {k: v for k, v in options.items() if v is EXACT or any(w in k for w in wanted)}

    def run(overrides: dict) -> tuple[float, np.ndarray]:
        overrides = dict(overrides)
        per_call = overrides.pop("_per_call", False)  # as on a machine short of RAM (KeepWhileRoom says no)
        settings = Settings().override(overrides)
        optimizations.apply(model, settings)
        for conv in model.unet.modules():
            wino = conv.__dict__.get("forward")
            if per_call and isinstance(wino, optimizations.WinogradConv):
                wino.keep, wino.u, wino.key = (lambda _nbytes: False), None, None
        ctx = ProcessingContext(models, settings, ckpt.parent, ConditioningCache(), DepthCache(), JobControl(), Hooks())
        req = GenerationRequest(prompt="a red brick lighthouse on a cliff", init_images=[image], width=args.size,
                                height=args.size, steps=args.steps, denoising_strength=0.75, cfg_scale=7.5,
                                sampler_name="Euler a", seed=77, save_images=False)  # fmt: skip
        t0 = time.perf_counter()
        out = process(req, ctx).images[0]
        return time.perf_counter() - t0, out

    run(EXACT)  # warm-up (page-in)
    report = {"machine": machine(), "settings": vars(args), "options": {}}
    base_s, base_img = run(EXACT)
    for label, overrides in options.items():
        if overrides is EXACT:
            seconds, img = base_s, base_img
        else:
            if any(overrides.get(k) for k in ("opt_torch_compile", "opt_prepack_conv", "opt_winograd_conv")):
                run(overrides)  # compile / pack / transform once at this size, untimed
            seconds, img = run(overrides)
        diff = int(np.abs(img.astype(int) - base_img.astype(int)).max())
        row = {"seconds": seconds, "speedup": base_s / seconds, "max_pixel_diff": diff, "psnr_db": psnr(img, base_img)}
        report["options"][label] = row
        print(f"{label:36s} {seconds:7.1f}s  x{row['speedup']:.2f}  max diff {diff:3d}  PSNR {row['psnr_db']:.1f} dB",
              flush=True)  # fmt: skip
    optimizations.apply(model, Settings().override(EXACT))
    write_json(args.json, report)


if __name__ == "__main__":
    main()
