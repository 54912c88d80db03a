"""Which dtype each part of the model computes in (``--precision``), with bfloat16 on CPUs where it pays.

On a GPU nothing changes: float16 for the UNet, VAE and text encoder unless ``--precision full`` /
``--no-half`` (``devices.resolve_dtype``). On the CPU ``--precision autocast`` (the default) gives
the UNet, text encoder and VAE **bfloat16 weights** when a short measured probe says bfloat16 is fast on this machine
(AVX-512 BF16 / AMX: oneDNN's bfloat16 kernels), else float32 as before. "Fast" is measured, never
read from a CPU name: ``probe()`` times a float32 and a bfloat16 matmul and 3x3 convolution at SD
shapes (single-threaded, the best of 3 to 20 alternated repetitions in the thread's CPU time, so
that a busy shared CPU does not decide; well under a second; a CPU that emulates bfloat16 is stopped
after a small screening matmul) and logs its figures with the decision.

What runs in which dtype is a ``PrecisionPlan``; on a CPU where bfloat16 is fast:

* the UNet, the text encoder and the VAE: bfloat16 weights, each tensor cast as the file is read
  (``checkpoints._cast_on_read``: never the whole part in float32; a checkpoint switch keeps the loaded
  models and their bfloat16 weights). The UNet's input is cast to bfloat16 and its output back to
  float32 in ``StableDiffusionModel.apply_model``: the sampler's latents and sigmas stay float32; the
  text encoder hands over a float32 context; the VAE computes in channels-last memory format (oneDNN's
  bfloat16 convolutions are 1.2-1.3x faster in it) and hands its latents and pixels back to float32
  code, with A1111's fallback to a float32 VAE on NaN (``auto_vae_precision``).
  Measured in BENCHMARKS.md 9c (AMD EPYC, AVX-512 BF16): the text encoder 0.67 -> 0.21-0.29 s per job
  and ~0.6 GB less resident; the VAE encode 2.0x and decode 2.6x faster end to end; the image's distance
  to float32 at 20 Euler a steps 45.2 dB (UNet only) -> 43.5 (+ text encoder) -> 42.9 dB (+ VAE), max
  pixel difference 9 -> 9 -> 10, SSIM 0.9995 -> 0.9993 -> 0.9991 (diffusers in bfloat16: 42.0 dB, 12).
  ``TEXT_ENCODER_BF16`` / ``VAE_BF16`` switch a part back to float32.
* MiDaS: float32 (it runs once per image). Measured in bfloat16 (BENCHMARKS.md 9d): 1.7x faster (0.6 s a
  job) but the depth map moves 5 levels of 255 on average (max 29), far more than any other part: not as good.

``--precision full`` (``precision="full"``) or ``no_half`` keep float32 everywhere: today's exact
path, Winograd convolutions included. For tests and for users, the environment variable
``SD_CPU_BF16`` (or the ``cpu_bf16`` argument of ``plan_for``) overrides the probe: ``on`` forces
bfloat16 weights on the CPU, ``off`` forces float32, ``auto`` (default) measures.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

ENV_VAR = "SD_CPU_BF16"
CHOICES = ("auto", "on", "off")
MIN_SPEEDUP = 1.5  # bfloat16 must be at least this much faster, in matmul and in convolution
TEXT_ENCODER_BF16 = True  # measured to pay (module docstring, BENCHMARKS.md 9c)
VAE_BF16 = True  # measured faster and as good (module docstring, BENCHMARKS.md 9c)

_SHORT = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


@dataclass(frozen=True)
class ProbeResult:
    """Best-of-N milliseconds of one float32 and one bfloat16 matmul and convolution, and the verdict."""

    matmul_fp32_ms: float
    matmul_bf16_ms: float
    conv_fp32_ms: float | None
    conv_bf16_ms: float | None
    seconds: float  # the probe's own wall time
    threads: int  # the probe's (1: per-core speed, in CPU time)

    @property
    def matmul_speedup(self) -> float:
        return self.matmul_fp32_ms / self.matmul_bf16_ms

    @property
    def conv_speedup(self) -> float | None:
        if self.conv_fp32_ms is None or self.conv_bf16_ms is None:
            return None
        return self.conv_fp32_ms / self.conv_bf16_ms

    @property
    def fast(self) -> bool:
        conv = self.conv_speedup
        return conv is not None and min(self.matmul_speedup, conv) >= MIN_SPEEDUP

    def summary(self) -> str:
        mm = f"matmul fp32 {self.matmul_fp32_ms:.1f} ms, bf16 {self.matmul_bf16_ms:.1f} ms ({self.matmul_speedup:.2f}x)"
        if self.conv_speedup is None:
            conv = "conv not run (bf16 matmul already too slow)"
        else:
            conv = f"conv fp32 {self.conv_fp32_ms:.1f} ms, bf16 {self.conv_bf16_ms:.1f} ms ({self.conv_speedup:.2f}x)"
        return f"{mm}; {conv}; {self.threads} thread CPU time, probe {self.seconds:.2f}s wall"

    def as_dict(self) -> dict:
        return {
            "matmul_fp32_ms": round(self.matmul_fp32_ms, 3),
            "matmul_bf16_ms": round(self.matmul_bf16_ms, 3),
            "conv_fp32_ms": None if self.conv_fp32_ms is None else round(self.conv_fp32_ms, 3),
            "conv_bf16_ms": None if self.conv_bf16_ms is None else round(self.conv_bf16_ms, 3),
            "fast": self.fast,
            "threads": self.threads,
        }


def _time_pair(make, reps: int, budget_s: float = 0.1, max_reps: int = 20) -> tuple[float, float]:
    """Best (float32 ms, bfloat16 ms) of `make(dtype)()` in this thread's CPU time, the two alternated;
    one untimed warm-up each (oneDNN's kernel choice). At least `reps` repetitions, then more while
    within `budget_s` of CPU time (up to `max_reps`).

    Run single-threaded (see ``measure``) and timed by the thread's CPU clock, so that a neighbour's
    load on a shared CPU (which preempts threads and stretches wall times arbitrarily) does not decide.
    """
    fns = (make(torch.float32), make(torch.bfloat16))
    best = [float("inf"), float("inf")]
    for fn in fns:
        fn()
    start = time.thread_time()
    for i in range(max_reps):
        if i >= reps and time.thread_time() - start > budget_s:
            break
        for j, fn in enumerate(fns):
            t0 = time.thread_time()
            fn()
            best[j] = min(best[j], time.thread_time() - t0)
    return best[0] * 1e3, best[1] * 1e3


def measure(reps: int = 3) -> ProbeResult:
    """Time float32 against bfloat16 on this CPU at SD-like shapes (see the module docstring)."""
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(0)

    def matmul(m: int, k: int, n: int):
        a, b = torch.randn(m, k, generator=gen), torch.randn(k, n, generator=gen)

        def make(dtype):
            x, y = a.to(dtype), b.to(dtype)
            return lambda: torch.mm(x, y)

        return make

    def conv(c: int, hw: int):
        x, w = torch.randn(1, c, hw, hw, generator=gen), torch.randn(c, c, 3, 3, generator=gen) / (9 * c) ** 0.5

        def make(dtype):
            xd, wd = x.to(dtype), w.to(dtype)
            return lambda: torch.nn.functional.conv2d(xd, wd, padding=1)

        return make

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # per-core speed, timed in CPU time: see _time_pair
    try:
        return _measure(matmul, conv, reps, t0)
    finally:
        torch.set_num_threads(threads)


def _measure(matmul, conv, reps: int, t0: float) -> ProbeResult:
    with torch.inference_mode():
        # Screening: a CPU that emulates bfloat16 (AVX2: ~0.3 GFLOP/s) is told apart in a few ms.
        s32, s16 = _time_pair(matmul(256, 256, 256), reps=2)
        if s16 > 2 * s32:
            return ProbeResult(s32, s16, None, None, time.perf_counter() - t0, 1)
        # SD-like: a 32x32 level's projection (1024 tokens x 640) and a 320-channel 3x3 convolution at 32x32.
        m32, m16 = _time_pair(matmul(1024, 640, 640), reps)
        c32, c16 = _time_pair(conv(320, 32), reps)
    return ProbeResult(m32, m16, c32, c16, time.perf_counter() - t0, 1)


_probe_lock = threading.Lock()
_probe_result: ProbeResult | None = None


def probe() -> ProbeResult:
    """``measure()`` once per process (later calls return the first result)."""
    global _probe_result
    with _probe_lock:
        if _probe_result is None:
            _probe_result = measure()
            log.info("CPU bfloat16 probe: %s -> %s", _probe_result.summary(),
                     "fast" if _probe_result.fast else "not fast")  # fmt: skip
        return _probe_result


@dataclass(frozen=True)
class PrecisionPlan:
    """The dtype of each component's weights (and so of its computation); MiDaS is always float32."""

    unet: torch.dtype
    text_encoder: torch.dtype
    vae: torch.dtype
    depth: torch.dtype = torch.float32
    reason: str = ""
    probe: ProbeResult | None = None

    @classmethod
    def uniform(cls, dtype: torch.dtype, reason: str = "") -> PrecisionPlan:
        """UNet, text encoder and VAE in `dtype`, MiDaS in float32: what ``StableDiffusionModel.to`` always did."""
        return cls(dtype, dtype, dtype, torch.float32, reason)

    @property
    def label(self) -> str:
        return label_of(self.unet, self.text_encoder, self.vae)

    @property
    def bf16_unet(self) -> bool:
        return self.unet == torch.bfloat16

    def as_dict(self) -> dict:
        """For the settings page and /sdapi/v1/cmd-flags."""
        out = {
            "label": self.label,
            "unet": _SHORT.get(self.unet, str(self.unet)),
            "text_encoder": _SHORT.get(self.text_encoder, str(self.text_encoder)),
            "vae": _SHORT.get(self.vae, str(self.vae)),
            "depth": _SHORT.get(self.depth, str(self.depth)),
            "reason": self.reason,
        }
        if self.probe is not None:
            out["probe"] = self.probe.as_dict()
        return out


def label_of(unet: torch.dtype, text_encoder: torch.dtype, vae: torch.dtype) -> str:
    """'fp32', 'fp16' (all three alike), else what differs from the VAE: 'bf16 UNet', 'bf16 UNet+text encoder'."""
    if unet == text_encoder == vae:
        return _SHORT.get(unet, str(unet))
    parts = [name for name, dt in (("UNet", unet), ("text encoder", text_encoder)) if dt != vae]
    lower = {unet, text_encoder} - {vae}
    if len(lower) == 1:
        return f"{_SHORT.get(lower.pop(), '?')} {'+'.join(parts)}"
    return f"{_SHORT.get(unet, '?')} UNet, {_SHORT.get(text_encoder, '?')} text encoder"


def cpu_bf16_choice(value: str | None = None) -> str:
    """`value`, else $SD_CPU_BF16, else 'auto'; 'on'/'off' also as 1/0, true/false, yes/no."""
    raw = (value if value is not None else os.environ.get(ENV_VAR, "auto")).strip().lower()
    aliases = {"1": "on", "true": "on", "yes": "on", "0": "off", "false": "off", "no": "off", "": "auto"}
    choice = aliases.get(raw, raw)
    if choice not in CHOICES:
        raise ValueError(f"{ENV_VAR}={raw!r}: expected one of {', '.join(CHOICES)}")
    return choice


def plan_for(
    device: torch.device | str,
    precision: str = "autocast",
    no_half: bool = False,
    *,
    cpu_bf16: str | None = None,
    measure_fn=None,
) -> PrecisionPlan:
    """The plan for the command line's flags on `device` (logged). `cpu_bf16` (else $SD_CPU_BF16) overrides
    the CPU probe; `measure_fn` replaces ``probe`` (tests)."""
    from modules.models import devices

    device = torch.device(device)
    if device.type != "cpu":
        dtype = devices.resolve_dtype(device, precision, no_half)
        plan = PrecisionPlan.uniform(dtype, "--precision full / --no-half" if dtype == torch.float32 else "GPU")
    elif precision == "full" or no_half:
        plan = PrecisionPlan.uniform(torch.float32, "--precision full" if precision == "full" else "--no-half")
    else:
        choice = cpu_bf16_choice(cpu_bf16)
        result = None
        if choice == "auto":
            result = (measure_fn or probe)()
            fast = result.fast
            reason = f"probe: bfloat16 {'fast' if fast else 'not fast'} on this CPU ({result.summary()})"
        else:
            fast = choice == "on"
            reason = f"{ENV_VAR}={choice}"
        if fast:
            text = torch.bfloat16 if TEXT_ENCODER_BF16 else torch.float32
            vae = torch.bfloat16 if VAE_BF16 else torch.float32
            plan = PrecisionPlan(torch.bfloat16, text, vae, torch.float32, reason, result)
        else:
            plan = PrecisionPlan(torch.float32, torch.float32, torch.float32, torch.float32, reason, result)
    log.info("Precision: %s (%s)", plan.label, plan.reason)
    return plan


# --- the float32 file pages a converted component no longer needs ----------------------------------------


def _file_mappings(path: str) -> list[tuple[int, int]]:
    """(start, end) of this process's mappings of `path` (Linux /proc/self/maps; [] elsewhere)."""
    out = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split(None, 5)
                if len(parts) == 6 and parts[5].strip() == path:
                    start, end = (int(x, 16) for x in parts[0].split("-"))
                    out.append((start, end))
    except OSError:
        return []
    return out


def release_file_pages(tensors, path) -> int:
    """Drop from the resident set the pages of `tensors` that lie wholly inside a memory mapping of the
    checkpoint file `path` (``madvise(MADV_DONTNEED)``); returns the bytes released.

    For a bfloat16 UNet made from a memory-mapped float32 file: the float32 tensors are no longer used,
    but the mapping stays (the VAE, text encoder and MiDaS are views into it), so the UNet's pages
    read during the conversion would stay resident (3.3 GB for SD2). Only file-backed pages are
    touched, and only whole pages inside a tensor: such a page, if anything read it again, would be
    read back from the file unchanged. Anonymous memory (a pickle read without mmap) is never
    released here. A no-op where this is not Linux.
    """
    import ctypes
    import mmap
    import sys

    if not sys.platform.startswith("linux"):
        return 0
    maps = _file_mappings(str(os.path.realpath(path)))
    if not maps:
        return 0
    page = mmap.PAGESIZE
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    released = 0
    seen = set()
    for t in tensors:
        storage = t.untyped_storage()
        start, size = storage.data_ptr(), storage.nbytes()
        if start in seen or size < page:
            continue
        seen.add(start)
        lo, hi = -(-start // page) * page, (start + size) // page * page
        if hi <= lo or not any(a <= lo and hi <= b for a, b in maps):
            continue
        if libc.madvise(lo, hi - lo, 4) == 0:  # MADV_DONTNEED
            released += hi - lo
    return released
