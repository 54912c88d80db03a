"""8. bfloat16 on the CPU (issue 21): ours as shipped (the precision probe's plan: bfloat16 UNet weights
where bfloat16 is fast) vs ours in float32 (``--precision full``: today's path, Winograd) vs diffusers'
``StableDiffusionDepth2ImgPipeline`` in float32 and in bfloat16, on the very same weights.

The bfloat16 arms of ``bench_vs_diffusers.py``: each arm is a model of its own, loaded from the same
memory-mapped file: "ours-bf16" with ``precision.plan_for(cpu)`` (bfloat16 UNet, text encoder and
VAE, float32 MiDaS; "ours-bf16+te" and "ours-bf16-unet" keep the VAE, or the VAE and text encoder,
float32), "ours" with ``--precision full``, "diffusers" around the float32 modules as
loaded (PyTorch's own convolutions), "diffusers-bf16" around modules all in bfloat16 (what
``torch_dtype=torch.bfloat16`` gives: UNet, VAE, text encoder and the depth estimator). Each run of
an arm is its own process (after an untimed 2-step warm-up: page-in, oneDNN kernels), arms in ABBA
order, so that each arm's peak resident memory is its own and the four models never share 24 GB
(in one process they took 18 GB and the page cache thrashed); our arms' processes set the allocator
as the web UI does (``memory.retain_freed_memory``), diffusers' keep glibc's defaults as a plain
diffusers script does (as ``bench_vs_diffusers.py``); per-stage times; how far each
bfloat16 image is from its float32 counterpart (PSNR, max pixel difference, SSIM).

    python benchmarks/bench_bf16.py --ckpt /big/sd2depth_rand1234.safetensors [--runs 1] \\
        [--arms ours-bf16,ours,diffusers,diffusers-bf16] [--samplers "Euler a,DDIM"] [--strength 0.75]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench_vs_diffusers as vs
import numpy as np
import torch
from common import (
    StageTimer,
    diffusers_scheduler,
    machine,
    parser,
    peak_rss_mb,
    psnr,
    require_ckpt,
    test_image,
    write_json,
)
from PIL import Image

from modules.core import memory
from modules.core.hooks import Hooks
from modules.core.progress import JobControl
from modules.core.request import GenerationRequest
from modules.core.settings import Settings
from modules.generation.conditioning import ConditioningCache
from modules.generation.processing import DepthCache, ProcessingContext, process
from modules.models import optimizations, precision
from modules.models.checkpoints import CheckpointRegistry, HashCache, load_model
from modules.models.manager import ModelManager
from modules.models.precision import PrecisionPlan

ARMS = ("ours-bf16", "ours", "diffusers", "diffusers-bf16")
# Plans tried beside the shipped one (UNet, text encoder and VAE in bfloat16): less of the model in bfloat16.
EXTRA_PLANS = {
    "ours-bf16+te": PrecisionPlan(torch.bfloat16, torch.bfloat16, torch.float32, torch.float32, "UNet + text encoder"),
    "ours-bf16-unet": PrecisionPlan(torch.bfloat16, torch.float32, torch.float32, torch.float32, "UNet only"),
}
# the float32 image each is compared with
COUNTERPART = {"ours-bf16": "ours", "diffusers-bf16": "diffusers", "ours-bf16+te": "ours", "ours-bf16-unet": "ours"}
ALL_BF16 = PrecisionPlan(torch.bfloat16, torch.bfloat16, torch.bfloat16, torch.bfloat16, "diffusers torch_dtype")


def cpu_flags() -> list[str]:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    line = next((ln for ln in out.splitlines() if ln.startswith("Flags:")), "")
    return line.split(":", 1)[1].split() if line else []


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03) over RGB channels."""
    import cv2

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    out = []
    for ch in range(a.shape[-1]):
        x, y = a[..., ch].astype(np.float64), b[..., ch].astype(np.float64)

        def blur(z):
            return cv2.GaussianBlur(z, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)

        mx, my = blur(x), blur(y)
        vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
        s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
        out.append(s.mean())
    return float(np.mean(out))


def distance(a: np.ndarray, b: np.ndarray) -> dict:
    return {"psnr_db": psnr(a, b), "max_pixel_diff": int(np.abs(a.astype(int) - b.astype(int)).max()),
            "ssim": ssim(a, b)}  # fmt: skip


class Arms:
    """The models the arms need, each loaded on first use from the same file."""

    def __init__(self, ckpt):
        self.ckpt = ckpt
        self.managers: dict[str, ModelManager] = {}
        self.timers: dict[int, StageTimer] = {}
        self.bf16_modules = None

    def manager(self, kind: str) -> ModelManager:
        if kind not in self.managers:
            plan = (EXTRA_PLANS[kind] if kind in EXTRA_PLANS else
                    precision.plan_for("cpu") if kind == "shipped" else precision.plan_for("cpu", "full"))  # fmt: skip
            print(f"plan {kind}: {plan.label} ({plan.reason})", flush=True)
            registry = CheckpointRegistry([self.ckpt.parent], HashCache(None), hashing=False)
            registry.refresh()
            mm = ModelManager(registry, device=torch.device("cpu"), dtype=torch.float32, precision=plan)
            mm.load(self.ckpt.name)
            self.managers[kind] = mm
        return self.managers[kind]

    def model_for(self, arm: str):
        if arm == "diffusers-bf16":
            if self.bf16_modules is None:
                self.bf16_modules = load_model(self.ckpt, precision=ALL_BF16)
            return self.bf16_modules
        return self.manager(self.kind(arm)).current.model

    @staticmethod
    def kind(arm: str) -> str:
        return arm if arm in EXTRA_PLANS else "shipped" if arm == "ours-bf16" else "full"

    def timer(self, model) -> StageTimer:
        if id(model) not in self.timers:
            dpt = model.depth_model
            self.timers[id(model)] = StageTimer({
                "unet": model.unet, "text": model.text_encoder, "depth": (dpt.dpt.embeddings, dpt.head),
                "encode": model.vae.encoder, "decode": model.vae.decoder})  # fmt: skip
        return self.timers[id(model)]


def run_arm(arms: Arms, arm: str, sampler: str, args, image_bytes: bytes, steps: int | None = None):
    model = arms.model_for(arm)
    timer = arms.timer(model)
    timer.reset()
    if arm.startswith("ours"):
        mm = arms.manager(arms.kind(arm))
        settings = Settings()
        optimizations.apply(model, settings)  # as shipped: Winograd where float32
        ctx = ProcessingContext(mm, settings, arms.ckpt.parent, ConditioningCache(), DepthCache(), JobControl(), Hooks())
        req = GenerationRequest(prompt=vs.PROMPT, init_images=[image_bytes], width=args.size, height=args.size,
                                steps=steps or args.steps, denoising_strength=args.strength, cfg_scale=7.5,
                                sampler_name=sampler, seed=1234, save_images=False)  # fmt: skip
        t0 = time.perf_counter()
        img = process(req, ctx).images[0]
        seconds = time.perf_counter() - t0
        memory.release_freed_memory()  # as the web UI's worker does after every job (the warm-up's too)
        return seconds, img, timer.summary()
    else:
        optimizations.apply(model, Settings().override(vs.PLAIN))  # diffusers' own modules as loaded
        sched = diffusers_scheduler(sampler, model.betas_f64)
        pipe = vs.diffusers_pipeline(model, sched)
        extra = {"eta": 0.0} if sampler == "DDIM" else {}
        image = Image.open(io.BytesIO(image_bytes)).convert("RGB")
        t0 = time.perf_counter()
        out = pipe(prompt=vs.PROMPT, image=image, strength=args.strength, num_inference_steps=steps or args.steps,
                   guidance_scale=7.5, negative_prompt="", generator=torch.Generator().manual_seed(1234),
                   output_type="np", **extra)  # fmt: skip
        img = (out.images[0].astype(np.float32) * 255).round().clip(0, 255).astype(np.uint8)
    seconds = time.perf_counter() - t0
    return seconds, img, timer.summary()


def text_encoder_check(arms: Arms) -> dict:
    """The text encoder in float32 vs a bfloat16 copy: time of one prompt (best of 3) and the context's distance."""
    import copy

    model = arms.model_for("ours")
    tokens = model.tokenizer([vs.PROMPT])
    te32 = model.text_encoder
    te16 = copy.deepcopy(te32).to(torch.bfloat16)
    out = {}
    for name, te in (("fp32", te32), ("bf16", te16)):
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            z = te(input_ids=tokens).last_hidden_state.float()
            best = min(best, time.perf_counter() - t0)
        out[name] = {"seconds": best, "z": z}
    rel = float((out["bf16"]["z"] - out["fp32"]["z"]).norm() / out["fp32"]["z"].norm())
    del te16
    return {"fp32_s": out["fp32"]["seconds"], "bf16_s": out["bf16"]["seconds"], "rel_err": rel}


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--strength", type=float, default=0.75)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--samplers", default="Euler a,DDIM")
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--text-encoder", action="store_true", help="also time the text encoder in float32 vs bfloat16")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--image-out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    ckpt = require_ckpt(args)
    torch.set_grad_enabled(False)
    arms_list = [a.strip() for a in args.arms.split(",")]
    names = [s.strip() for s in args.samplers.split(",")]
    image_bytes = test_image(args.size, args.size)
    if args.child:  # one timed run of one arm in this fresh process
        if args.child.startswith("ours"):
            memory.retain_freed_memory()  # as the web UI sets its process up; diffusers arms keep glibc's defaults
        arms = Arms(ckpt)
        if args.text_encoder:
            print(json.dumps({"text_encoder": text_encoder_check(arms)}))
            return
        run_arm(arms, args.child, names[0], args, image_bytes, steps=2)  # warm-up, untimed
        seconds, img, stages = run_arm(arms, args.child, names[0], args, image_bytes)
        np.save(args.image_out, img)
        print(json.dumps({"seconds": seconds, "stages": stages, "peak_rss_mb": peak_rss_mb(),
                          "load": os.getloadavg()[0]}))  # fmt: skip
        return
    flags = cpu_flags()
    bf16_flags = [f for f in flags if "bf16" in f or f.startswith("amx") or f in ("avx2", "avx512f")]
    report = {"machine": machine() | {"lscpu_flags_bf16": bf16_flags}, "settings": vars(args) | {"ckpt": str(ckpt)},
              "load_before": os.getloadavg(), "probe": precision.probe().as_dict()}  # fmt: skip
    print(f"CPU flags (bf16-related): {' '.join(bf16_flags)}; load average {os.getloadavg()}", flush=True)
    print(f"probe: {precision.probe().summary()} -> fast={precision.probe().fast}", flush=True)
    base = [sys.executable, __file__, "--ckpt", str(ckpt), "--steps", str(args.steps), "--strength",
            str(args.strength), "--size", str(args.size)]  # fmt: skip
    if args.text_encoder:
        out = subprocess.run([*base, "--child", "ours", "--text-encoder"], capture_output=True, text=True, check=True)
        report["text_encoder"] = json.loads(out.stdout.strip().splitlines()[-1])["text_encoder"]
        print(f"text encoder: {report['text_encoder']}", flush=True)
    report["samplers"] = {}
    tmp = Path(tempfile.mkdtemp(prefix="bench_bf16_"))
    for name in names:
        times, stages, rss = ({a: [] for a in arms_list} for _ in range(3))
        images = {}
        for run in range(args.runs):
            for arm in arms_list if run % 2 == 0 else arms_list[::-1]:  # ABBA order
                img_path = tmp / f"{arm}.npy"
                cmd = [*base, "--samplers", name, "--child", arm, "--image-out", str(img_path)]
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode != 0:
                    print(f"{name} run {run + 1} {arm}: failed (exit {out.returncode}):\n{out.stderr[-3000:]}", flush=True)
                    continue
                row = json.loads(out.stdout.strip().splitlines()[-1])
                images[arm] = np.load(img_path)
                times[arm].append(row["seconds"])
                stages[arm].append(row["stages"])
                rss[arm].append(row["peak_rss_mb"])
                print(f"{name} run {run + 1} {arm:15s} {row['seconds']:7.1f}s  peak RSS {row['peak_rss_mb']:,.0f} MiB"
                      f"  load {row['load']:.2f}", flush=True)  # fmt: skip
        times, stages, rss = ({a: v for a, v in d.items() if v} for d in (times, stages, rss))
        entry = vs.summarize(times, stages, against="diffusers" if "diffusers" in arms_list else arms_list[-1])
        entry["vs_ours"] = {}
        entry["peak_rss_mb"] = {arm: max(v) for arm, v in rss.items()}
        entry["distance"] = {arm: distance(images[arm], images[ref]) for arm, ref in COUNTERPART.items()
                             if arm in images and ref in images}  # fmt: skip
        report["samplers"][name] = entry
        vs.print_entry(name, entry)
        for arm, mb in entry["peak_rss_mb"].items():
            print(f"   peak RSS {arm:15s} {mb:8,.0f} MiB")
        for arm, d in entry["distance"].items():
            print(f"   {arm} vs {COUNTERPART[arm]}: PSNR {d['psnr_db']:.1f} dB, max pixel diff {d['max_pixel_diff']}, "
                  f"SSIM {d['ssim']:.4f}")  # fmt: skip
        if "diffusers-bf16" in entry["ratios"] and "ours-bf16" in entry["ratios"]:
            a = entry["arms"]
            print(f"   ours-bf16 / diffusers-bf16: {a['ours-bf16']['median_s'] / a['diffusers-bf16']['median_s']:.2f}")
    report["load_after"] = os.getloadavg()
    print(f"load average after: {report['load_after']}")
    write_json(args.json, report)


if __name__ == "__main__":
    main()
