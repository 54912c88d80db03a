"""4. Growth: time and peak memory vs resolution and batch size.

For each (size, batch) in a fresh process: one CFG UNet step (batch 2 x B, after two warm-up steps),
MiDaS on one image, VAE encode and decode of the batch, each stage's peak RSS (freed memory is
released between stages, as a generation does). A full img2img run costs about depth + encode +
steps x UNet step + decode.

    python benchmarks/bench_growth.py --ckpt /big/sd2depth_rand1234.safetensors [--sizes 256,512,768] [--batches 1,2,4]
        [--options '{"opt_prepack_conv": true}'] [--malloc-default]
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from common import ROOT, machine, parser, require_ckpt, write_json

CHILD = """
import json, sys, time
sys.path.insert(0, {root!r}); sys.path.insert(0, {bench!r})
import torch
torch.set_grad_enabled(False)
from common import peak_rss_mb
from modules.models.checkpoints import load_model
from modules.core import memory
from modules.models import optimizations
from modules.core.settings import Settings
if {retain}:
    memory.retain_freed_memory()  # as the web UI does
model = load_model({ckpt!r})
optimizations.apply(model, Settings().override({options!r}))
size, batch = {size}, {batch}
h = size // 8
x = torch.randn(batch, 4, h, h); d = torch.rand(batch, 1, h, h) * 2 - 1; ctx = torch.randn(batch, 77, 1024)
cond = {{"c_concat": [torch.cat([d, d])], "c_crossattn": [torch.cat([ctx, ctx])]}}
t = torch.tensor([500])
peaks = {{}}
def stage_end(name):
    memory.release_freed_memory()  # between stages, as a generation does
    peaks[name] = peak_rss_mb()
    try:  # Linux: reset the peak, so the next stage's is its own
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
for _ in range(2):  # warm-up: oneDNN primitives, page-in; Winograd keeps its transforms from the 2nd call
    model.apply_model(torch.cat([x, x]), t, cond)
t0 = time.perf_counter(); model.apply_model(torch.cat([x, x]), t, cond); step = time.perf_counter() - t0
stage_end("unet")
img = torch.rand(batch, 3, size, size) * 2 - 1
def timed(fn, name):
    fn()  # warm-up: oneDNN primitives, page-in
    t0 = time.perf_counter(); fn(); seconds = time.perf_counter() - t0
    stage_end(name)
    return seconds
depth = timed(lambda: model.depth_conditioning(img[:1]), "depth")
encode = timed(lambda: model.encode_first_stage(img), "encode")
decode = timed(lambda: model.decode_first_stage(x), "decode")
print(json.dumps({{"unet_step_s": step, "depth_s": depth, "encode_s": encode, "decode_s": decode,
                  "peak_rss_mb": max(peaks.values()), "stage_peak_rss_mb": peaks}}))
"""


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--sizes", default="256,512,768")
    p.add_argument("--batches", default="1,2,4")
    p.add_argument("--options", default="{}", help="settings overrides as JSON, e.g. '{\"opt_prepack_conv\": true}'")
    p.add_argument("--malloc-default", action="store_true", help="glibc's allocator defaults (as --malloc-default)")
    args = p.parse_args()
    ckpt = require_ckpt(args)
    report = {"machine": machine(), "options": json.loads(args.options), "malloc_default": args.malloc_default,
              "results": []}  # fmt: skip
    for size in [int(s) for s in args.sizes.split(",")]:
        for batch in [int(b) for b in args.batches.split(",")]:
            code = CHILD.format(
                root=str(ROOT),
                bench=str(Path(__file__).parent),
                ckpt=str(ckpt),
                size=size,
                batch=batch,
                options=json.loads(args.options),
                retain=not args.malloc_default,
            )
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
            if out.returncode != 0:
                row = {"size": size, "batch": batch, "error": out.stderr.strip().splitlines()[-1]}
            else:
                row = {"size": size, "batch": batch, **json.loads(out.stdout.strip().splitlines()[-1])}
            report["results"].append(row)
            print(json.dumps(row), flush=True)
    write_json(args.json, report)


if __name__ == "__main__":
    main()
