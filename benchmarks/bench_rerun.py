"""2. Interactive re-runs: the same image again with a new seed, a new prompt, a new strength.

A first (cold) run computes MiDaS, the init latent and the prompt conditioning; re-runs with another
seed or strength reuse all three (MiDaS, the VAE encoder and the text encoder are not called at all),
a new prompt reuses the depth map and the init latent.
Prints seconds per run and how many times each stage ran.

    python benchmarks/bench_rerun.py --ckpt /big/sd2depth_rand1234.safetensors [--steps 20]
"""

from __future__ import annotations

import time

from common import StageTimer, machine, model_manager, parser, require_ckpt, test_image, write_json

from modules.app.service import Service
from modules.core.request import GenerationRequest
from modules.core.settings import Settings


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--size", type=int, default=512)
    args = p.parse_args()
    ckpt = require_ckpt(args)
    models = model_manager(ckpt)
    service = Service(
        settings=Settings(), settings_path=None, registry=models.registry, models=models, data_dir=ckpt.parent
    )
    model = service.select_checkpoint(ckpt.name).model
    dpt = model.depth_model
    timer = StageTimer({"unet": model.unet, "text": model.text_encoder, "depth": (dpt.dpt.embeddings, dpt.head),
                        "encode": model.vae.encoder, "decode": model.vae.decoder})  # fmt: skip
    image = test_image(args.size, args.size)
    base = dict(init_images=[image], width=args.size, height=args.size, steps=args.steps, cfg_scale=7.5,
                save_images=False, sampler_name="Euler a")  # fmt: skip
    warm = GenerationRequest(prompt="warm-up", **{**base, "init_images": [test_image(args.size, args.size, 9)]})
    service.generate(warm)  # pages the weights in; not timed
    cases = [
        ("cold: first run", dict(prompt="a stone cottage", seed=1, denoising_strength=0.75)),
        ("same image, new seed", dict(prompt="a stone cottage", seed=2, denoising_strength=0.75)),
        ("same image, new prompt", dict(prompt="a glass cottage at night", seed=2, denoising_strength=0.75)),
        ("same image, new strength", dict(prompt="a glass cottage at night", seed=2, denoising_strength=0.5)),
    ]
    report = {"machine": machine(), "settings": vars(args), "runs": []}
    for label, change in cases:
        timer.reset()
        t0 = time.perf_counter()
        service.generate(GenerationRequest(**base, **change))
        seconds = time.perf_counter() - t0
        stages = timer.summary()
        calls = {k: v["calls"] for k, v in stages.items()}
        report["runs"].append({"case": label, "seconds": seconds, "calls": calls,
                               "stage_s": {k: v["total_s"] for k, v in stages.items()}})  # fmt: skip
        print(f"{label:28s} {seconds:7.1f}s  calls: {calls}", flush=True)
    service.worker.stop()
    write_json(args.json, report)


if __name__ == "__main__":
    main()
