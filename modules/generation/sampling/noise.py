"""Seeded noise: each image's start noise and its samplers' per-step noise, from its own CPU generator.

A1111's convention: image i of a batch draws from a generator seeded with seed + i, so it equals the
same seed run alone.  Ancestral samplers continue that generator's sequence (A1111's ``ImageRNG``);
the SDE samplers use one torchsde Brownian tree per image seed (A1111's ``create_noise_sampler``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torchsde

NoiseSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def slerp(t: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between two noise tensors (A1111's variation seeds)."""
    low_n = low / low.norm()
    high_n = high / high.norm()
    dot = (low_n * high_n).sum().clamp(-1.0, 1.0)
    if dot.abs() > 0.9995:
        return low * (1.0 - t) + high * t
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return torch.sin((1.0 - t) * omega) / so * low + torch.sin(t * omega) / so * high


def image_noise(
    shape: tuple[int, int, int],
    seed: int,
    subseed: int = -1,
    subseed_strength: float = 0.0,
    resize_from: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Generator]:
    """[C,h,w] noise from a CPU generator seeded with `seed` (A1111's convention), and that generator.

    Variation seeds slerp towards `subseed`'s noise; `resize_from` (latent h, w) draws the noise at
    another size and centres it, so a seed keeps its look when the size changes.
    """
    c, h, w = shape
    draw_shape = (c, *resize_from) if resize_from else shape
    sub = None
    if subseed_strength > 0:
        sub = torch.randn(draw_shape, generator=torch.Generator("cpu").manual_seed(subseed))
    gen = torch.Generator("cpu").manual_seed(seed)
    noise = torch.randn(draw_shape, generator=gen)
    if sub is not None:
        noise = slerp(subseed_strength, noise, sub)
    if resize_from and draw_shape != shape:
        full = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))
        dh, dw = (h - draw_shape[1]) // 2, (w - draw_shape[2]) // 2
        th, tw = min(h, draw_shape[1]), min(w, draw_shape[2])
        ty, tx, sy, sx = max(dh, 0), max(dw, 0), max(-dh, 0), max(-dw, 0)
        full[:, ty : ty + th, tx : tx + tw] = noise[:, sy : sy + th, sx : sx + tw]
        noise = full
    return noise, gen


def generator_noise(x: torch.Tensor, generators: list[torch.Generator]) -> NoiseSampler:
    """Fresh N(0, 1) noise like `x` at each call, image i from generators[i] (drawn on the CPU)."""

    def sample(_sigma=None, _sigma_next=None) -> torch.Tensor:
        draws = [torch.randn(tuple(x.shape[1:]), generator=g) for g in generators]
        return torch.stack(draws).to(x.device, x.dtype)

    return sample


def brownian_noise(x: torch.Tensor, sigmas: torch.Tensor, seeds: list[int]) -> NoiseSampler:
    """k-diffusion's BrownianTreeNoiseSampler with one tree per image seed (batch-size independent)."""
    positive = sigmas[sigmas > 0]
    t0, t1 = float(positive.min()), float(sigmas.max())
    w0 = torch.zeros(tuple(x.shape[1:]), dtype=torch.float32)
    trees = [torchsde.BrownianTree(torch.tensor(t0), w0, torch.tensor(t1), entropy=s) for s in seeds]

    def sample(sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        a, b = float(sigma), float(sigma_next)
        lo, hi, sign = (a, b, 1.0) if a < b else (b, a, -1.0)
        w = torch.stack([tree(torch.tensor(lo), torch.tensor(hi)) for tree in trees]) * sign
        return (w / abs(b - a) ** 0.5).to(x.device, x.dtype)

    return sample
