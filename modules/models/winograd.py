"""Winograd F(2x2, 3x3) convolution: a 3x3 stride-1 convolution with 2.25x fewer multiplications.

Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (2016). Each 2x2 block of the
output is computed from the 4x4 block of the input around it: the input block and the 3x3 kernel are
each transformed into 16 values (``B^T d B`` and ``G g G^T``), multiplied elementwise, summed over
the input channels and transformed back (``A^T m A``). Summing over channels is, for each of the 16
positions, one matrix product ``U[k, c] @ V[c, tiles]``: 16 GEMMs of 4/9 the size of the direct
convolution's. The transforms only add and subtract (and halve, for the kernel), so in float32 the
result is as close to the exact one as the direct convolution's (measured: max error 2-3e-6 against
float64 where oneDNN's direct convolution has 1-5e-5).

Pure functions of tensors; ``optimizations`` decides where they are used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# G: 4x3 kernel transform (Lavin & Gray, F(2x2, 3x3)); B^T and A^T are applied inline below.
_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))


def transform_weight(weight: torch.Tensor) -> torch.Tensor:
    """(K, C, 3, 3) kernel -> (16, K, C): ``G g G^T`` flattened over its 4x4 positions."""
    if weight.dim() != 4 or weight.shape[-2:] != (3, 3):
        raise ValueError(f"Winograd F(2x2, 3x3) needs a (K, C, 3, 3) weight, got {tuple(weight.shape)}")
    k, c = weight.shape[:2]
    g = torch.tensor(_G, dtype=weight.dtype, device=weight.device)
    gg = torch.kron(g, g)  # (16, 9): (G g G^T)[a, b] = sum over i, j of G[a, i] G[b, j] g[i, j]
    w9 = weight.permute(2, 3, 0, 1).reshape(9, k * c)  # one contiguous copy
    return torch.matmul(gg, w9).view(16, k, c)


def _input_tiles(xp: torch.Tensor, out: torch.Tensor, th: int, tw: int) -> None:
    """``B^T d B`` of every 4x4 tile (stride 2) of one padded sample (C, H+2, W+2) into out (16, C, th, tw).

    B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], rows first (contiguous reads),
    then columns."""
    d = [xp[:, k : k + 2 * th : 2, :] for k in range(4)]
    rows = (d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3])
    for i, r in enumerate(rows):
        c = [r[..., k : k + 2 * tw : 2] for k in range(4)]
        torch.sub(c[0], c[2], out=out[4 * i])
        torch.add(c[1], c[2], out=out[4 * i + 1])
        torch.sub(c[2], c[1], out=out[4 * i + 2])
        torch.sub(c[1], c[3], out=out[4 * i + 3])


def _output_tiles(m: torch.Tensor, out: torch.Tensor) -> None:
    """``A^T m A`` of (16, K, th, tw) products into one sample's output (K, th, 2, tw, 2).

    A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]."""
    m = m.view(4, 4, *m.shape[1:])
    r0 = m[0] + m[1] + m[2]
    r1 = m[1] - m[2] - m[3]
    for i, r in enumerate((r0, r1)):
        torch.add(r[0] + r[1], r[2], out=out[:, :, i, :, 0])
        torch.sub(r[1] - r[2], r[3], out=out[:, :, i, :, 1])


_CHUNK = 1024  # tiles per GEMM (the largest measured fast here: 32x32 tiles)


def conv3x3(x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Same as ``F.conv2d(x, weight, bias, stride=1, padding=1)`` with ``u = transform_weight(weight)``."""
    if x.dim() != 4 or u.dim() != 3 or u.shape[0] != 16 or x.shape[1] != u.shape[2]:
        raise ValueError(f"input {tuple(x.shape)} does not match Winograd weight {tuple(u.shape)}")
    n, c, h, w = x.shape
    k = u.shape[1]
    th, tw = (h + 1) // 2, (w + 1) // 2
    # zero padding of 1, plus one more row/column where the size is odd (cropped from the output)
    xp = F.pad(x, (1, 1 + (w & 1), 1, 1 + (h & 1)))
    rows = max(1, min(th, _CHUNK // tw))  # tile rows per GEMM: keeps the transformed tiles in cache
    v_buf = torch.empty(16, c, rows * tw, dtype=x.dtype, device=x.device)
    m_buf = torch.empty(16, k, rows * tw, dtype=x.dtype, device=x.device)
    out = torch.empty(n, k, th, 2, tw, 2, dtype=x.dtype, device=x.device)
    for i in range(n):
        for r0 in range(0, th, rows):
            r = min(rows, th - r0)
            v, m = v_buf[..., : r * tw], m_buf[..., : r * tw]
            _input_tiles(xp[i, :, 2 * r0 : 2 * (r0 + r) + 2], v.unflatten(-1, (r, tw)), r, tw)
            torch.bmm(u, v, out=m)
            _output_tiles(m.unflatten(-1, (r, tw)), out[i, :, r0 : r0 + r])
    y = out.view(n, k, 2 * th, 2 * tw)
    if (h & 1) or (w & 1):
        y = y[:, :, :h, :w].contiguous()
    if bias is not None:
        y += bias.view(1, -1, 1, 1)
    return y
