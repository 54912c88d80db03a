"""What reading checkpoint weights into memory of their own costs, against memory-mapping them (issue 15).

Each arm runs in a fresh child process: read (or map) the file, build the model if it is a checkpoint, then
touch every tensor (what the first generation does), printing seconds and the process's anonymous and
file-backed resident memory (/proc/self/status) after each stage, and the peak (VmHWM).  The file's pages
are dropped from the page cache first (posix_fadvise DONTNEED, this file only) for the cold figures.

    python benchmarks/bench_load_private.py FILE [--synthetic-gib N] [--tensors-only] [--warm]

FILE: a checkpoint (.safetensors/.ckpt), e.g. a tiny one from tests.helpers.ldm_layout; with
--synthetic-gib N a plain N GiB .safetensors of float32 tensors is written to FILE first (read only, no model).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
import torch
torch.set_num_threads(2)
from modules.models import safe_load
path, mmap, build = sys.argv[2], sys.argv[3] == "1", sys.argv[4] == "1"

def mem():
    fields = {}
    for line in open("/proc/self/status"):
        k, _, v = line.partition(":")
        if k in ("RssAnon", "RssFile", "VmHWM"):
            fields[k] = int(v.split()[0]) / 1024  # MiB
    return fields

if build:
    from unittest import mock
    from modules.models import checkpoints  # imports (diffusers, transformers) before the clock starts
out = {"start": mem()}
t = time.perf_counter()
if build:
    real = safe_load.read_state_dict
    with mock.patch.object(safe_load, "read_state_dict", lambda p, **kw: real(p, **{**kw, "mmap": mmap})):
        model = checkpoints.load_model(path)
    tensors = [p for m in (model.unet, model.vae, model.text_encoder, model.depth_model) if m is not None
               for p in m.parameters()]
else:
    sd = safe_load.read_state_dict(path, mmap=mmap)
    tensors = list(sd.values())
out["load_s"] = time.perf_counter() - t
out["after_load"] = mem()
t = time.perf_counter()
total = sum(float(x.sum()) for x in tensors)
out["touch_s"] = time.perf_counter() - t
out["after_touch"] = mem()
print(json.dumps(out))
"""


def drop_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def write_synthetic(path: Path, gib: float) -> None:
    import torch
    from safetensors.torch import save_file

    n = int(gib * 2**30 / 4 / (16 * 2**20))
    save_file({f"t{i}": torch.full((16 * 2**20,), float(i)) for i in range(max(1, n))}, str(path))


def arm(path: Path, mmap: bool, build: bool, warm: bool) -> dict:
    if not warm:
        drop_cache(path)
    proc = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), str(path), "1" if mmap else "0", "1" if build else "0"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file", type=Path)
    ap.add_argument("--synthetic-gib", type=float, default=None)
    ap.add_argument("--warm", action="store_true", help="leave the file in the page cache (default: drop it)")
    ap.add_argument("--tensors-only", action="store_true", help="read the tensors, do not build a model")
    args = ap.parse_args()
    if args.synthetic_gib:
        write_synthetic(args.file, args.synthetic_gib)
    build = args.synthetic_gib is None and not args.tensors_only
    size = args.file.stat().st_size / 2**20
    print(f"{args.file.name}: {size:.1f} MiB, {'model built' if build else 'tensors only'}, "
          f"{'warm' if args.warm else 'cold'} page cache")  # fmt: skip
    for mmap in (True, False):
        time.sleep(0.5)
        r = arm(args.file, mmap, build, args.warm)
        a, b = r["after_load"], r["after_touch"]
        print(f"{'mmap   ' if mmap else 'private'}: load {r['load_s']:.3f}s, touch {r['touch_s']:.3f}s | after load "
              f"anon {a['RssAnon']:.0f} + file {a['RssFile']:.0f} MiB | after touch anon {b['RssAnon']:.0f} + file "
              f"{b['RssFile']:.0f} MiB | peak {b['VmHWM']:.0f} MiB (start {r['start']['VmHWM']:.0f})")  # fmt: skip


if __name__ == "__main__":
    main()
