"""1. Our ``process`` vs diffusers' ``StableDiffusionDepth2ImgPipeline`` on the very same module weights.

img2img (default 512x512, 20 steps at strength 0.75, CFG 7.5, batch 1) with Euler a and DDIM, run
alternately in one process (ABBA order); each arm (see ARMS) cold (no cached depth or prompt). Prints
medians, ratios to diffusers, a per-stage breakdown (depth, text, encode, UNet per step, decode;
timed by hooks on the shared modules) and how far each of our option arms' images is from ours.
With ``--fresh-process`` every run is its own process instead (after an untimed 2-step warm-up), so
"ours" has the web UI's allocator setting from the start and "diffusers" glibc's defaults, as a
plain diffusers script has; the allocator cannot be compared fairly by switching it inside one
process (the heap one arm leaves behind is what the next arm starts from).

    python benchmarks/bench_vs_diffusers.py --ckpt /big/sd2depth_rand1234.safetensors [--runs 3] \\
        [--arms ours,ours-direct,diffusers,...] [--samplers DDIM] [--fresh-process] [--device cuda]

On a GPU (``--device cuda``) both run in float16 with SDPA attention, timers synchronised.
The bfloat16 arms (``--arms ours-bf16,diffusers,diffusers-bf16,ours``: ours as shipped on a CPU with fast
bfloat16, diffusers with ``torch_dtype=torch.bfloat16``) run through ``bench_bf16.py``, one process per arm.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import time

import numpy as np
import torch
from common import (
    StageTimer,
    diffusers_scheduler,
    machine,
    median,
    model_manager,
    parser,
    peak_rss_mb,
    psnr,
    require_ckpt,
    synchronize,
    test_image,
    write_json,
)
from diffusers import StableDiffusionDepth2ImgPipeline
from PIL import Image
from transformers import CLIPTokenizer, DPTImageProcessorPil

from modules.core import memory
from modules.core.hooks import Hooks
from modules.core.progress import JobControl
from modules.core.request import GenerationRequest
from modules.core.settings import Settings
from modules.generation.conditioning import ConditioningCache
from modules.generation.processing import DepthCache, ProcessingContext, process
from modules.models import optimizations
from modules.models.tokenizer import TOKENIZER_DIR

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


# Each arm: (label, pipeline, our speed options, our allocator setting).  "ours" is the app as it
# ships (Settings defaults, Winograd convolutions included; freed memory retained within a job, see
# modules/core/memory.py); "ours-direct" is the same with PyTorch's own (direct) convolutions. diffusers
# runs as a user runs it (its modules as loaded, glibc's defaults); "diffusers+alloc" gives it our
# allocator setting, to show how much of the difference is the allocator alone.
ARMS = {
    "ours": ("ours", {}, True),
    "ours+prepack": ("ours", {"opt_prepack_conv": True}, True),
    "ours-direct": ("ours", {"opt_winograd_conv": False}, True),
    "ours-direct+prepack": ("ours", {"opt_winograd_conv": False, "opt_prepack_conv": True}, True),
    "diffusers": ("diffusers", {}, False),
    "diffusers+alloc": ("diffusers", {}, True),
}
PLAIN = {"opt_winograd_conv": False, "opt_prepack_conv": False, "opt_channels_last": False}  # modules as loaded


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--strength", type=float, default=0.75)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--samplers", default="Euler a,DDIM")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cuda: both pipelines in float16")
    p.add_argument("--arms", default="ours,diffusers", help=f"comma-separated, from {', '.join(ARMS)}")
    p.add_argument(
        "--fresh-process",
        action="store_true",
        help="each run in its own process (after an untimed 2-step warm-up), so each arm has its own allocator "
        "from the start: the app as shipped vs a plain diffusers script",
    )
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    ckpt = require_ckpt(args)
    if not args.child and BF16_ARMS & {a.strip() for a in args.arms.split(",")}:
        return bf16_arms(args)
    if args.fresh_process:
        return fresh_processes(args)
    models = model_manager(ckpt, retain=ARMS[args.child][2] if args.child else True, device=args.device)
    loaded = models.load(ckpt.name)
    model = loaded.model
    dpt = model.depth_model
    timer = StageTimer({"unet": model.unet, "text": model.text_encoder, "depth": (dpt.dpt.embeddings, dpt.head),
                        "encode": model.vae.encoder, "decode": model.vae.decoder})  # fmt: skip
    image_bytes = test_image(args.size, args.size)
    image = Image.open(io.BytesIO(image_bytes)).convert("RGB")
    report = {"machine": machine(), "settings": vars(args) | {"ckpt": str(ckpt)}, "samplers": {}}

    def run_ours(name: str, settings: Settings, steps: int | None = None):
        optimizations.apply(model, settings)
        ctx = ProcessingContext(models, settings, ckpt.parent, ConditioningCache(), DepthCache(), JobControl(), Hooks())
        req = GenerationRequest(prompt=PROMPT, init_images=[image_bytes], width=args.size, height=args.size,
                                steps=steps or args.steps, denoising_strength=args.strength, cfg_scale=7.5,
                                sampler_name=name, seed=1234, save_images=False)  # fmt: skip
        synchronize()
        t0 = time.perf_counter()
        result = process(req, ctx)
        synchronize()
        return time.perf_counter() - t0, result.images[0]

    def run_diffusers(name: str):
        optimizations.apply(model, Settings().override(PLAIN))  # diffusers' own modules as loaded
        sched = diffusers_scheduler(name, model.betas_f64)
        pipe = diffusers_pipeline(model, sched)
        extra = {"eta": 0.0} if name == "DDIM" else {}
        synchronize()
        t0 = time.perf_counter()
        out = pipe(prompt=PROMPT, image=image, strength=args.strength, num_inference_steps=args.steps,
                   guidance_scale=7.5, negative_prompt="", generator=torch.Generator().manual_seed(1234),
                   output_type="np", **extra)  # fmt: skip
        synchronize()
        return time.perf_counter() - t0, (out.images[0] * 255).round().astype(np.uint8)

    def run_arm(arm: str, name: str):
        who, options, retain = ARMS[arm]
        memory.retain_freed_memory() if retain else memory.default_allocator()
        try:
            return run_ours(name, Settings().override(options)) if who == "ours" else run_diffusers(name)
        finally:
            memory.release_freed_memory()  # what the web UI's worker does after each job

    arms = [a.strip() for a in args.arms.split(",")]
    names = [s.strip() for s in args.samplers.split(",")]
    if args.child:  # one timed run of one arm in this fresh process (see fresh_processes)
        who, options = ARMS[args.child][:2]
        run_ours(names[0], Settings().override(options), steps=2)  # warm-up: page-in, oneDNN, packing
        timer.reset()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        seconds, _ = run_ours(names[0], Settings().override(options)) if who == "ours" else run_diffusers(names[0])
        after = resource.getrusage(resource.RUSAGE_SELF)
        print(json.dumps({"seconds": seconds, "stages": timer.summary(), "minor_faults": after.ru_minflt - usage.ru_minflt,
                          "sys_s": after.ru_stime - usage.ru_stime, "peak_rss_mb": peak_rss_mb()}))  # fmt: skip
        return
    run_ours(names[0], Settings())  # warm-up: pages the weights in from disk, untimed
    for name in names:
        times = {arm: [] for arm in arms}
        stages = {arm: [] for arm in arms}
        images = {}
        for run in range(args.runs):
            for arm in arms if run % 2 == 0 else arms[::-1]:  # ABBA order
                timer.reset()
                seconds, images[arm] = run_arm(arm, name)
                times[arm].append(seconds)
                stages[arm].append(timer.summary())
                print(f"{name} run {run + 1} {arm:15s} {seconds:7.1f}s", flush=True)
        entry = summarize(times, stages, against=next((a for a in arms if a == "diffusers"), arms[-1]))
        entry["vs_ours"] = {
            arm: {"max_pixel_diff": int(np.abs(img.astype(int) - images["ours"].astype(int)).max()),
                  "psnr_db": psnr(img, images["ours"])}
            for arm, img in images.items() if arm != "ours" and ARMS[arm][0] == "ours" and "ours" in images
        }  # fmt: skip
        report["samplers"][name] = entry
        print_entry(name, entry)
    write_json(args.json, report)


# The bfloat16 arms (issue 21) need models of their own (bf16 weights cast as the file is read), so they run
# in bench_bf16.py, one process per arm: `--arms ours-bf16,diffusers,diffusers-bf16[,ours]` goes there.
BF16_ARMS = {"ours-bf16", "diffusers-bf16", "ours-bf16+te", "ours-bf16-unet"}


def bf16_arms(args) -> None:
    """Run the requested arms (float32 ones included) with bench_bf16.py: each its own process, same figures."""
    from pathlib import Path

    script = Path(__file__).with_name("bench_bf16.py")
    cmd = [sys.executable, str(script), "--ckpt", str(args.ckpt), "--runs", str(args.runs), "--steps", str(args.steps),
           "--strength", str(args.strength), "--size", str(args.size), "--samplers", args.samplers,
           "--arms", args.arms] + (["--json", args.json] if args.json else [])  # fmt: skip
    raise SystemExit(subprocess.call(cmd))


def fresh_processes(args) -> None:
    """Each (sampler, arm, run) in a child process, ABBA order; prints and writes the same summary."""
    arms = [a.strip() for a in args.arms.split(",")]
    report = {"machine": machine(), "settings": vars(args), "samplers": {}}
    for name in [s.strip() for s in args.samplers.split(",")]:
        times, stages, faults = ({arm: [] for arm in arms} for _ in range(3))
        for run in range(args.runs):
            for arm in arms if run % 2 == 0 else arms[::-1]:
                cmd = [sys.executable, __file__, "--ckpt", args.ckpt, "--steps", str(args.steps), "--strength",
                       str(args.strength), "--size", str(args.size), "--samplers", name, "--child", arm,
                       "--device", args.device]  # fmt: skip
                out = subprocess.run(cmd, capture_output=True, text=True, check=True)
                row = json.loads(out.stdout.strip().splitlines()[-1])
                times[arm].append(row["seconds"])
                stages[arm].append(row["stages"])
                faults[arm].append({k: row[k] for k in ("minor_faults", "sys_s", "peak_rss_mb")})
                print(f"{name} run {run + 1} {arm:15s} {row['seconds']:7.1f}s  faults {row['minor_faults']:,}"
                      f"  sys {row['sys_s']:.1f}s  peak RSS {row['peak_rss_mb']:,.0f} MiB", flush=True)  # fmt: skip
        entry = summarize(times, stages, against="diffusers" if "diffusers" in arms else arms[-1])
        entry["vs_ours"] = {}
        entry["process"] = faults
        report["samplers"][name] = entry
        print_entry(name, entry)
    write_json(args.json, report)


def summarize(times: dict, stages: dict, against: str) -> dict:
    out = {"arms": {}}
    for arm in times:
        st = stages[arm][-1]
        unet = [s["unet"]["mean_s"] for s in stages[arm]]
        out["arms"][arm] = {
            "median_s": median(times[arm]),
            "runs_s": times[arm],
            "unet_step_s": median(unet),
            "unet_it_s": 1 / median(unet),  # CFG calls (= sampling steps) per second
            "unet_calls": st["unet"]["calls"],
            "stages_s": {k: median([s[k]["total_s"] for s in stages[arm] if k in s]) for k in st},
        }
    ref = out["arms"][against]["median_s"]
    out["ratio_to"] = against
    out["ratios"] = {arm: a["median_s"] / ref for arm, a in out["arms"].items()}
    return out


def print_entry(name: str, e: dict) -> None:
    arms = e["arms"]
    print(f"\n== {name} (ratios to {e['ratio_to']})")
    for arm, a in arms.items():
        print(f"   {arm:15s} {a['median_s']:7.1f}s  ratio {e['ratios'][arm]:.2f}  UNet/call {a['unet_step_s']:.3f}s"
              f" ({a['unet_it_s']:.2f} it/s)"
              f"  runs {', '.join(f'{t:.1f}' for t in a['runs_s'])}")  # fmt: skip
    print("   stage    " + "".join(f"{arm:>16s}" for arm in arms))
    for stage in ("depth", "text", "encode", "unet", "decode"):
        print(f"   {stage:8s} " + "".join(f"{a['stages_s'].get(stage, 0):15.2f}s" for a in arms.values()))
    for arm, x in e["vs_ours"].items():
        print(f"   {arm} image vs ours: max pixel diff {x['max_pixel_diff']}, PSNR {x['psnr_db']:.1f} dB")
    print()


if __name__ == "__main__":
    main()
