"""Winograd F(2x2, 3x3) convolution: the pure functions against PyTorch's convolution in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from modules.models import winograd


def reference(x, w, b):
    return F.conv2d(x.double(), w.double(), None if b is None else b.double(), padding=1)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 3),
    c=st.integers(1, 24),
    k=st.integers(1, 24),
    h=st.integers(1, 19),
    w=st.integers(1, 19),
    bias=st.booleans(),
    chunk=st.sampled_from([1, 3, 1024]),
    seed=st.integers(0, 2**16),
)
def test_matches_direct_convolution_for_any_shape(n, c, k, h, w, bias, chunk, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g)
    weight = torch.randn(k, c, 3, 3, generator=g)
    b = torch.randn(k, generator=g) if bias else None
    old, winograd._CHUNK = winograd._CHUNK, chunk  # several GEMM chunks per sample, odd sizes, 1x1 inputs
    try:
        y = winograd.conv3x3(x, winograd.transform_weight(weight), b)
    finally:
        winograd._CHUNK = old
    assert y.shape == (n, k, h, w) and y.dtype == torch.float32 and y.is_contiguous()
    scale = 3 * (9 * c) ** 0.5  # the outputs' magnitude
    assert (y.double() - reference(x, weight, b)).abs().max().item() < 1e-5 * scale


def test_as_accurate_as_onednn_at_unet_sizes():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 320, 32, 32, generator=g)
    w = torch.randn(320, 320, 3, 3, generator=g) / (320 * 9) ** 0.5
    b = torch.randn(320, generator=g)
    ref = reference(x, w, b)
    err_winograd = (winograd.conv3x3(x, winograd.transform_weight(w), b).double() - ref).abs().max().item()
    err_direct = (F.conv2d(x, w, b, padding=1).double() - ref).abs().max().item()
    assert err_winograd < 2 * err_direct + 1e-6  # measured: 2-3e-6 vs oneDNN's 1-5e-5


def test_weight_transform_layout():
    w = torch.zeros(2, 3, 3, 3)
    w[1, 2, 1, 1] = 1.0  # the identity kernel at output 1, input 2: G e G^T is the outer product of G's column
    u = winograd.transform_weight(w).view(4, 4, 2, 3)
    g1 = torch.tensor([0.0, 0.5, -0.5, 0.0])
    assert torch.equal(u[:, :, 1, 2], torch.outer(g1, g1))
    assert u[:, :, 0].abs().sum() == 0 and u[:, :, 1, :2].abs().sum() == 0


def test_rejects_mismatched_shapes():
    u = winograd.transform_weight(torch.randn(4, 8, 3, 3))
    with pytest.raises(ValueError, match="does not match"):
        winograd.conv3x3(torch.randn(1, 5, 8, 8), u)
    with pytest.raises(ValueError, match="3, 3"):
        winograd.transform_weight(torch.randn(4, 8, 5, 5))
