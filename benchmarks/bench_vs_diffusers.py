"""1. Our ``process`` vs diffusers' ``StableDiffusionDepth2ImgPipeline`` on the very same module weights.

img2img (default 512x512, 20 steps at strength 0.75, CFG 7.5, batch 1) with Euler a and DDIM, run
alternately in one process; each pipeline at its own defaults (ours: the Settings defaults; diffusers:
contiguous), both cold (no cached depth or prompt). Prints medians, the ratio, a per-stage breakdown
(depth, text, encode, UNet per step, decode; timed by hooks on the shared modules) and how far our
default image is from our exact (contiguous float32) image.

    python benchmarks/bench_vs_diffusers.py --ckpt /big/sd2depth_rand1234.safetensors [--runs 3]
"""

from __future__ import annotations

import io
import time

import numpy as np
import torch
from common import StageTimer, machine, median, model_manager, parser, psnr, require_ckpt, test_image, write_json
from diffusers import StableDiffusionDepth2ImgPipeline
from PIL import Image
from transformers import CLIPTokenizer, DPTImageProcessorPil

from modules import optimizations, samplers
from modules.conditioning import ConditioningCache
from modules.hooks import Hooks
from modules.processing import DepthCache, ProcessingContext, process
from modules.progress import JobControl
from modules.request import GenerationRequest
from modules.settings import Settings
from modules.tokenizer import TOKENIZER_DIR

PROMPT = "a cozy cabin in a snowy forest, warm light in the windows, detailed, photograph"


def diffusers_pipeline(model, scheduler) -> StableDiffusionDepth2ImgPipeline:
    """diffusers' depth2img pipeline around our modules, configured as stabilityai/stable-diffusion-2-depth."""
    tokenizer = CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), pad_token="!", model_max_length=77)
    features = DPTImageProcessorPil(
        do_resize=True, size={"height": 384, "width": 384}, keep_aspect_ratio=False, resample=Image.BICUBIC,
        do_rescale=True, do_normalize=True, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )  # fmt: skip
    pipe = StableDiffusionDepth2ImgPipeline(
        vae=model.vae, text_encoder=model.text_encoder, tokenizer=tokenizer, unet=model.unet,
        scheduler=scheduler, depth_estimator=model.depth_model, feature_extractor=features,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--strength", type=float, default=0.75)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--samplers", default="Euler a,DDIM")
    args = p.parse_args()
    ckpt = require_ckpt(args)
    models = model_manager(ckpt)
    loaded = models.load(ckpt.name)
    model = loaded.model
    ours_settings, exact_settings = Settings(), Settings().override({"opt_channels_last": False})
    dpt = model.depth_model
    timer = StageTimer({"unet": model.unet, "text": model.text_encoder, "depth": (dpt.dpt.embeddings, dpt.head),
                        "encode": model.vae.encoder, "decode": model.vae.decoder})  # fmt: skip
    image_bytes = test_image(args.size, args.size)
    image = Image.open(io.BytesIO(image_bytes)).convert("RGB")
    report = {"machine": machine(), "settings": vars(args) | {"ckpt": str(ckpt)}, "samplers": {}}

    def run_ours(name: str, settings: Settings):
        optimizations.apply(model, settings)
        ctx = ProcessingContext(models, settings, ckpt.parent, ConditioningCache(), DepthCache(), JobControl(), Hooks())
        req = GenerationRequest(prompt=PROMPT, init_images=[image_bytes], width=args.size, height=args.size,
                                steps=args.steps, denoising_strength=args.strength, cfg_scale=7.5,
                                sampler_name=name, seed=1234, save_images=False)  # fmt: skip
        t0 = time.perf_counter()
        result = process(req, ctx)
        return time.perf_counter() - t0, result.images[0]

    def run_diffusers(name: str):
        optimizations.apply(model, exact_settings)  # diffusers' default memory format
        spec = samplers.find_sampler(name)
        sched = samplers.build_scheduler(spec, samplers.resolve_schedule(spec, "Automatic"), model.betas_f64, "eps")
        pipe = diffusers_pipeline(model, sched)
        extra = {"eta": 0.0} if spec.uses_eta else {}
        t0 = time.perf_counter()
        out = pipe(prompt=PROMPT, image=image, strength=args.strength, num_inference_steps=args.steps,
                   guidance_scale=7.5, negative_prompt="", generator=torch.Generator().manual_seed(1234),
                   output_type="np", **extra)  # fmt: skip
        return time.perf_counter() - t0, (out.images[0] * 255).round().astype(np.uint8)

    names = [s.strip() for s in args.samplers.split(",")]
    run_ours(names[0], ours_settings)  # warm-up: pages the weights in from disk, untimed
    run_diffusers(names[0])
    for name in names:
        times = {"ours": [], "diffusers": []}
        stages = {"ours": [], "diffusers": []}
        for run in range(args.runs):
            order = ("ours", "diffusers") if run % 2 == 0 else ("diffusers", "ours")
            for who in order:
                timer.reset()
                seconds, _ = run_ours(name, ours_settings) if who == "ours" else run_diffusers(name)
                times[who].append(seconds)
                stages[who].append(timer.summary())
                print(f"{name} run {run + 1} {who:9s} {seconds:7.1f}s", flush=True)
        _, exact = run_ours(name, exact_settings)
        _, default = run_ours(name, ours_settings)
        entry = summarize(times, stages)
        entry["ours_default_vs_exact"] = {
            "max_pixel_diff": int(np.abs(default.astype(int) - exact.astype(int)).max()),
            "psnr_db": psnr(default, exact),
        }
        report["samplers"][name] = entry
        print_entry(name, entry)
    write_json(args.json, report)


def summarize(times: dict, stages: dict) -> dict:
    out = {}
    for who in ("ours", "diffusers"):
        st = stages[who][-1]
        unet = [s["unet"]["mean_s"] for s in stages[who]]
        out[who] = {
            "median_s": median(times[who]),
            "runs_s": times[who],
            "unet_step_s": median(unet),
            "unet_calls": st["unet"]["calls"],
            "stages_s": {k: median([s[k]["total_s"] for s in stages[who] if k in s]) for k in st},
        }
    out["ratio"] = out["ours"]["median_s"] / out["diffusers"]["median_s"]
    return out


def print_entry(name: str, e: dict) -> None:
    o, d = e["ours"], e["diffusers"]
    print(f"\n== {name}: ours {o['median_s']:.1f}s vs diffusers {d['median_s']:.1f}s -> ratio {e['ratio']:.2f}")
    print(f"   UNet per call (CFG batch of 2): ours {o['unet_step_s']:.2f}s, diffusers {d['unet_step_s']:.2f}s "
          f"({o['unet_calls']} / {d['unet_calls']} calls)")  # fmt: skip
    for stage in ("depth", "text", "encode", "unet", "decode"):
        print(f"   {stage:7s} ours {o['stages_s'].get(stage, 0):7.2f}s   diffusers {d['stages_s'].get(stage, 0):7.2f}s")
    x = e["ours_default_vs_exact"]
    print(f"   our default vs exact float32: max pixel diff {x['max_pixel_diff']}, PSNR {x['psnr_db']:.1f} dB\n")


if __name__ == "__main__":
    main()
