"""Soak: many small generations in a row through the HTTP API, switching models between them; prints RSS.

A script that prints figures, not a test (``tests/reliability/test_reliability_load.py`` has a short version that
asserts the switched-out models are freed).  It writes tiny checkpoints in the real LDM layout
(``tests/helpers/ldm_layout.py``) into a temporary data folder, serves the real app in-process
(``tests/helpers/server.py``: ``frontends.server.create_app`` on a loopback port) and drives it with plain HTTP, so the
resident memory it reports is the server's (plus a thin client):

    python benchmarks/soak.py                         # 200 generations, a model switch every 10
    python benchmarks/soak.py --iterations 500 --switch-every 5 --json soak.json

Every generation has its own seed, prompt and init image (so the prompt and depth caches fill up and
evict), half of them save their outputs, and every ``--switch-every`` generations ``POST /options``
switches between the tiny depth model and the tiny SD2 model (one checkpoint in memory at a time, so
each switch loads from disk and drops the other).
"""

from __future__ import annotations

import argparse
import base64
import gc
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def rss_mib() -> float:
    """Resident set size of this process, from /proc (Linux) or psutil."""
    statm = Path("/proc/self/statm")
    if statm.exists():
        return int(statm.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def init_image(i: int, size: int) -> str:
    rng = np.random.RandomState(i)
    yy, xx = np.mgrid[0:size, 0:size]
    arr = np.stack([xx * 255 / size, yy * 255 / size, np.full_like(xx, (i * 37) % 255)], -1)
    arr = np.clip(arr + rng.randint(-25, 25, arr.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def slope_per_100(xs: list[int], ys: list[float]) -> float:
    """Least-squares slope of ys over xs, in units per 100 xs."""
    if len(xs) < 2:
        return 0.0
    return float(np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)[0] * 100)


def run(iterations: int, switch_every: int, size: int, steps: int, report_every: int) -> dict:
    import httpx

    from tests.helpers.ldm_layout import write_checkpoint
    from tests.helpers.server import populate, running_server

    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        tmp_path = Path(tmp)
        depth = write_checkpoint(tmp_path / "ck", "tiny-depth", "sd2-depth", fmt="safetensors", seed=1)
        base = write_checkpoint(tmp_path / "ck", "tiny-sd2", "sd2", fmt="safetensors", seed=2)
        data_dir = tmp_path / "data"
        populate(data_dir, depth, base)
        with (
            running_server(data_dir, "--nowebui") as srv,
            httpx.Client(base_url=srv.url + "/sdapi/v1", timeout=300) as client,
        ):
            titles = {m["model_name"]: m["title"] for m in client.get("/sd-models").json()}
            models = [titles["tiny-depth"], titles["tiny-sd2"]]
            client.post("/options", json={"sd_model_checkpoint": models[0]}).raise_for_status()
            rows, times, switches, saved = [], [], 0, 0
            start_rss = rss_mib()
            print(f"start: RSS {start_rss:.1f} MiB; {iterations} generations of {size}x{size}, {steps} steps, "
                  f"a model switch every {switch_every}", flush=True)  # fmt: skip
            print(f"{'gen':>5} {'model':<12} {'RSS MiB':>8} {'ms/gen':>7} {'switches':>8}", flush=True)
            for i in range(1, iterations + 1):
                if switch_every and i > 1 and (i - 1) % switch_every == 0:
                    target = models[((i - 1) // switch_every) % 2]
                    client.post("/options", json={"sd_model_checkpoint": target}).raise_for_status()
                    switches += 1
                body = {"init_images": [init_image(i, size)], "prompt": f"a house number {i}, oil painting",
                        "negative_prompt": f"blur {i % 7}", "seed": 1000 + i, "steps": steps, "width": size,
                        "height": size, "denoising_strength": 0.6, "save_images": i % 2 == 0}  # fmt: skip
                t0 = time.perf_counter()
                r = client.post("/img2img", json=body)
                times.append(time.perf_counter() - t0)
                r.raise_for_status()
                saved += i % 2 == 0
                if i % report_every == 0 or i == iterations:
                    gc.collect()
                    current = client.get("/options").json()["sd_model_checkpoint"].split(".")[0]
                    rows.append({"generation": i, "rss_mib": round(rss_mib(), 1), "model": current})
                    ms = 1000 * statistics.mean(times[-report_every:])
                    print(f"{i:>5} {current:<12} {rows[-1]['rss_mib']:>8.1f} {ms:>7.0f} {switches:>8}", flush=True)
            loaded = srv.app.service.models.loaded_titles()
            outputs = sum(1 for _ in (data_dir / "outputs").rglob("*.png"))
    half = [r for r in rows if r["generation"] > iterations // 4]
    summary = {
        "iterations": iterations,
        "switches": switches,
        "saved_requests": saved,
        "files_written": outputs,
        "start_rss_mib": round(start_rss, 1),
        "rss_after_first_report_mib": rows[0]["rss_mib"],
        "final_rss_mib": rows[-1]["rss_mib"],
        "max_rss_mib": max(r["rss_mib"] for r in rows),
        "growth_after_warmup_mib": round(rows[-1]["rss_mib"] - half[0]["rss_mib"], 1) if half else 0.0,
        "slope_after_warmup_mib_per_100": round(
            slope_per_100([r["generation"] for r in half], [r["rss_mib"] for r in half]), 2
        ),  # fmt: skip
        "median_ms_per_generation": round(1000 * statistics.median(times), 1),
        "models_in_memory_at_end": loaded,
        "rows": rows,
    }
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--switch-every", type=int, default=10, help="generations between model switches (0: never)")
    p.add_argument("--size", type=int, default=64, help="image width and height")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--report-every", type=int, default=10)
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    summary = run(args.iterations, args.switch_every, args.size, args.steps, args.report_every)
    print(
        f"\n{summary['iterations']} generations, {summary['switches']} model switches, "
        f"{summary['files_written']} files saved; median {summary['median_ms_per_generation']} ms per generation\n"
        f"RSS: {summary['start_rss_mib']} MiB at start, {summary['rss_after_first_report_mib']} MiB after "
        f"{summary['rows'][0]['generation']} generations, {summary['final_rss_mib']} MiB at the end "
        f"(max {summary['max_rss_mib']}); after the first quarter it moved {summary['growth_after_warmup_mib']:+} MiB "
        f"({summary['slope_after_warmup_mib_per_100']:+} MiB per 100 generations)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
