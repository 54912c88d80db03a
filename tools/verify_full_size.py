"""Check the model contract on a FULL-SIZE checkpoint in the real 512-depth-ema layout against the originals.

    python ../shared/ref/make_ckpt.py --keys ../shared/ref/keys.json --seed 1234 --out /big/sd2depth_rand1234.ckpt
    python tools/verify_full_size.py /big/sd2depth_rand1234.ckpt

Loads the file through ``modules.checkpoints.load_model`` (config detected from the weights) and
compares, in float32 on CPU: the text encoder with a functional OpenCLIP tower, the UNet and the VAE
with the original Stability-AI ``ldm`` modules, and ``depth_conditioning`` (square and non-square)
with the original MiDaS transform + a functional DPT-Hybrid + the depth2img demo's normalisation.
Prints the max relative error of each and the load time / peak memory. Needs ~12 GB of RAM.
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from modules.models import midas as depth
from modules.models import safe_load as ckpt_io  # noqa: E402
from modules.models.checkpoints import load_model  # noqa: E402
from tests.helpers import oracle  # noqa: E402


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main(path: str) -> int:
    torch.set_grad_enabled(False)
    t0 = time.perf_counter()
    model = load_model(path)
    print(f"load_model: {time.perf_counter() - t0:.1f}s, peak RSS {peak_rss_gb():.2f} GB; {model.report.summary()}")
    sd = ckpt_io.read_state_dict(path)  # the same mmap'd tensors, for the references
    g = torch.Generator().manual_seed(0)
    results = {}

    tokens = model.tokenizer(["a photograph of an astronaut riding a horse!", ""])
    results["text encoder vs OpenCLIP tower"] = rel(model.encode_tokens(tokens), oracle.open_clip_text(sd, tokens))

    unet = oracle.ldm_unet(model.config.unet, sd)
    x = torch.randn(1, 4, 64, 64, generator=g)
    d = torch.rand(1, 1, 64, 64, generator=g) * 2 - 1
    ctx = torch.randn(1, 77, 1024, generator=g)
    t = torch.tensor([801])
    ref = unet(torch.cat([x, d], 1), t, context=ctx)
    del unet
    results["UNet vs ldm UNetModel"] = rel(model.apply_model(x, t, {"c_concat": [d], "c_crossattn": [ctx]}), ref)

    vae = oracle.LdmVae(model.config.ddconfig, 4, sd)
    img = torch.rand(1, 3, 256, 256, generator=g) * 2 - 1
    post_ref, post = vae.encode(img), model.encode_first_stage(img)
    results["VAE encode (mean) vs ldm"] = rel(post.mean, post_ref.mean)
    z = post_ref.mean * model.scale_factor
    results["VAE decode vs ldm"] = rel(model.decode_first_stage(z), vae.decode((1.0 / model.scale_factor) * z))
    del vae

    for size in ((512, 512), (512, 768)):
        img = torch.rand(1, 3, *size, generator=g) * 2 - 1
        ours = model.depth_conditioning(img)
        pre = torch.from_numpy(oracle.midas_transform(((img[0].permute(1, 2, 0) + 1.0) * 0.5).numpy()))[None]
        assert torch.equal(pre, depth.midas_preprocess(img))
        pred = oracle.midas_dpt_hybrid(sd, pre).unsqueeze(1)
        cc = F.interpolate(pred, size=ours.shape[2:], mode="bicubic", align_corners=False)
        lo, hi = cc.amin(dim=[1, 2, 3], keepdim=True), cc.amax(dim=[1, 2, 3], keepdim=True)
        results[f"depth_conditioning {size[0]}x{size[1]} vs MiDaS"] = rel(ours, 2 * (cc - lo) / (hi - lo) - 1)

    for name, err in results.items():
        print(f"{name:45s} max rel err {err:.2e}")
    print(f"peak RSS {peak_rss_gb():.2f} GB")
    return 0 if all(e < 1e-4 for e in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
