"""3. Loading: time and peak memory for .safetensors and .ckpt, vs diffusers' from_single_file, and switching.

Each measurement runs in a fresh process (so peak RSS is its own); the page cache is warmed first
so every variant reads from memory, not disk. "touched" means every weight was read once after
loading (the memory-mapped pages are then resident), which is what the first generation does.

    python benchmarks/bench_load.py --ckpt /big/sd2depth_rand1234.safetensors [--ckpt2 /big/sd2depth_rand1234.ckpt]
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, machine, parser, peak_rss_mb, require_ckpt, rss_mb, write_json

CHILD = """
import json, sys, time
sys.path.insert(0, {root!r}); sys.path.insert(0, {bench!r})
import torch
torch.set_grad_enabled(False)
from common import peak_rss_mb, rss_mb
{imports}
t0 = time.perf_counter()
{body}
seconds = time.perf_counter() - t0
after_load = peak_rss_mb()
total = 0.0
for m in modules:
    for p in m.parameters():
        total += float(p.detach().float().sum()) if p.numel() < 4e6 else float(p.detach().sum())
print(json.dumps({{"seconds": seconds, "peak_rss_after_load_mb": after_load, "peak_rss_touched_mb": peak_rss_mb(),
                  "rss_touched_mb": rss_mb()}}))
"""

OURS_IMPORTS = "from modules.models import safe_load as ckpt_io, ldm_to_diffusers as convert, ldm_config as model_config; from modules.models.checkpoints import load_model"
DIFFUSERS_IMPORTS = "from diffusers import AutoencoderKL, UNet2DConditionModel"
OURS_FULL = """
model = load_model({path!r})
modules = [model.unet, model.vae, model.text_encoder, model.depth_model]
"""
OURS_UNET_VAE = """
sd = ckpt_io.read_state_dict({path!r})
cfg = model_config.load_config({config!r})
modules = [convert.build_unet(cfg, sd), convert.build_vae(cfg, sd)]
del sd
"""
DIFFUSERS_UNET_VAE = """
kw = dict(original_config={config!r}, local_files_only=True)
modules = [UNet2DConditionModel.from_single_file({path!r}, **kw), AutoencoderKL.from_single_file({path!r}, **kw)]
"""


def run_child(imports: str, body: str, **fmt) -> dict:
    """Run `body` in a fresh interpreter after `imports` (import time is not counted)."""
    code = CHILD.format(root=str(ROOT), bench=str(Path(__file__).parent), imports=imports, body=body.format(**fmt))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def warm_page_cache(path: Path) -> None:
    with path.open("rb") as f:
        while f.read(1 << 24):
            pass


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--ckpt2", default=None, help="a second checkpoint file (e.g. the .ckpt twin) for switching")
    p.add_argument("--repeat", type=int, default=2)
    args = p.parse_args()
    ckpt = require_ckpt(args)
    config = str(ROOT / "configs" / "v2-midas-inference.yaml")
    files = [ckpt] + ([Path(args.ckpt2)] if args.ckpt2 else [])
    report: dict = {"machine": machine(), "weights_mb": {}, "load": {}, "switch": {}}
    for path in files:
        warm_page_cache(path)
        report["weights_mb"][path.name] = path.stat().st_size / 2**20
        variants = {f"ours, whole model ({path.suffix})": (OURS_IMPORTS, OURS_FULL, {})}
        variants[f"ours, UNet+VAE ({path.suffix})"] = (OURS_IMPORTS, OURS_UNET_VAE, {"config": config})
        if path.suffix == ".safetensors":
            label = "diffusers from_single_file, UNet+VAE (.safetensors)"
            variants[label] = (DIFFUSERS_IMPORTS, DIFFUSERS_UNET_VAE, {"config": config})
        for label, (imports, body, extra) in variants.items():
            runs = [run_child(imports, body, path=str(path), **extra) for _ in range(args.repeat)]
            best = min(runs, key=lambda r: r["seconds"])
            report["load"][label] = best
            print(f"{label:55s} {best['seconds']:6.2f}s  peak RSS after load {best['peak_rss_after_load_mb']:7.0f} MB,"
                  f" weights touched {best['peak_rss_touched_mb']:7.0f} MB", flush=True)  # fmt: skip
    if len(files) == 2:
        report["switch"] = switching(files)
    write_json(args.json, report)


def switching(files: list[Path]) -> dict:
    """Seconds to switch A -> B -> A, keeping one checkpoint in memory vs two (A1111's sd_checkpoints_limit)."""
    import torch

    from modules.models.checkpoints import CheckpointRegistry, HashCache
    from modules.models.manager import ModelManager

    out = {}
    for keep in (1, 2):
        registry = CheckpointRegistry([files[0].parent], HashCache(None), hashing=False)
        registry.refresh()
        mm = ModelManager(registry, device=torch.device("cpu"), dtype=torch.float32, keep_in_memory=keep)
        mm.load(files[0].name)
        times = []
        for name in (files[1].name, files[0].name, files[1].name):
            t0 = time.perf_counter()
            mm.load(name)
            times.append(time.perf_counter() - t0)
        out[f"keep {keep} in memory"] = {"switch_s": times, "rss_mb": rss_mb(), "peak_rss_mb": peak_rss_mb()}
        print(f"switching, keep {keep} in memory: {', '.join(f'{t:.2f}s' for t in times)}; RSS {rss_mb():.0f} MB",
              flush=True)  # fmt: skip
        mm.unload()
    return out


if __name__ == "__main__":
    main()
