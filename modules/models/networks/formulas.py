"""The weight change each LoRA / LyCORIS module type stands for, as plain tensor functions.

Written by hand from the formulas (no library computes them for merging): A1111's
``extensions-builtin/Lora`` (``network_lora.py``, ``network_hada.py``, ``network_lokr.py``,
``network_full.py``, ``lyco_helpers.py``) and LyCORIS, which defines the LoHa / LoKr layouts.

=========  ============================================================  ==========================
type       change of the weight (before ``scale * multiplier``)          scale
=========  ============================================================  ==========================
LoRA       ``up @ down`` (conv: flattened, reshaped to the kernel);      ``alpha / rank``
           LoCon Tucker (``lora_mid``): ``mid x1 up x2 down``            (rank = ``down.shape[0]``)
LoHa       ``(w1a @ w1b) * (w2a @ w2b)`` (Hadamard); Tucker with ``t1/t2``  ``alpha / w1b.shape[0]``
LoKr       ``kron(w1, w2)``, each factor whole or ``a @ b`` (``w2`` also  ``alpha / rank`` only when a
           Tucker with ``t2``)                                            factor is low-rank, else 1
full       ``diff`` (and ``diff_b`` added to the bias)                    1
=========  ============================================================  ==========================

A file without ``alpha`` has scale 1 (A1111's ``calc_scale``).
"""

from __future__ import annotations

import math

import torch

Tensors = dict[str, torch.Tensor]


def rebuild_lora(up: torch.Tensor, down: torch.Tensor, mid: torch.Tensor | None = None) -> torch.Tensor:
    """``up @ down`` shaped (out, in, *kernel); with `mid` the LoCon Tucker form ``mid x1 up x2 down``."""
    up2, down2 = up.flatten(1), down.flatten(1)
    if mid is None:
        return (up2 @ down2).reshape(up.shape[0], *down.shape[1:])
    return torch.einsum("n m k l, i n, m j -> i j k l", mid, up2, down2)


def rebuild_tucker(t: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    """LyCORIS' CP/Tucker weight: core `t` (r, r, kh, kw), `wa` (r, out), `wb` (r, in) -> (out, in, kh, kw)."""
    temp = torch.einsum("i j k l, j r -> i r k l", t, wb.flatten(1))
    return torch.einsum("i j k l, i r -> r j k l", temp, wa.flatten(1))


def _product(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
    return rebuild_tucker(t, a, b) if t is not None else a.flatten(1) @ b.flatten(1)


def rebuild_loha(w: Tensors) -> torch.Tensor:
    """LoHa: the Hadamard product of two low-rank products (each optionally Tucker)."""
    first = _product(w["hada_w1_a"], w["hada_w1_b"], w.get("hada_t1"))
    second = _product(w["hada_w2_a"], w["hada_w2_b"], w.get("hada_t2"))
    return first * second.reshape(first.shape)


def _lokr_factor(w: Tensors, n: int) -> torch.Tensor:
    whole = w.get(f"lokr_w{n}")
    if whole is not None:
        return whole
    return _product(w[f"lokr_w{n}_a"], w[f"lokr_w{n}_b"], w.get(f"lokr_t{n}"))


def rebuild_lokr(w: Tensors) -> torch.Tensor:
    """LoKr: ``kron(w1, w2)``; a 4-d `w2` (conv) takes `w1` as a 1x1 kernel."""
    w1, w2 = _lokr_factor(w, 1), _lokr_factor(w, 2)
    if w2.dim() == 4:
        w1 = w1.reshape(*w1.shape[:2], 1, 1)
    return torch.kron(w1, w2.contiguous())


def rebuild_full(w: Tensors) -> torch.Tensor:
    return w["diff"]


REBUILD = {"lora": rebuild_lora, "loha": rebuild_loha, "lokr": rebuild_lokr, "full": rebuild_full}


def weight_change(kind: str, w: Tensors) -> torch.Tensor:
    """The unscaled change of the weight that a module of `kind` with tensors `w` stands for."""
    if kind == "lora":
        return rebuild_lora(w["lora_up.weight"], w["lora_down.weight"], w.get("lora_mid.weight"))
    return REBUILD[kind](w)


def _smallest_factor(kind: str, w: Tensors) -> str:
    """The tensor a constant factor is best applied to (the change is linear in it)."""
    if kind == "lora":
        return "lora_up.weight"
    if kind == "loha":
        return "hada_w1_a"
    if kind == "lokr":
        return "lokr_w1" if "lokr_w1" in w else "lokr_w1_a"
    return "diff"


def scaled_change(kind: str, w: Tensors, factor: float) -> torch.Tensor:
    """``factor * weight_change(kind, w)``, the factor applied to one small factor tensor (one pass fewer
    over the weight-sized result); always a new tensor, never a view of `w`'s tensors."""
    key = _smallest_factor(kind, w)
    return weight_change(kind, {**w, key: w[key] * factor})


def rank(kind: str, w: Tensors) -> int | None:
    """The rank that `alpha` is divided by; None where alpha does not apply (LoKr without a low-rank factor)."""
    if kind == "lora":
        return int(w["lora_down.weight"].shape[0])
    if kind == "loha":
        return int(w["hada_w1_b"].shape[0])
    if kind == "lokr":
        low = w.get("lokr_w2_b", w.get("lokr_w1_b"))
        return None if low is None else int(low.shape[0])
    return None


def scale(kind: str, w: Tensors, alpha: float | None) -> float:
    r = rank(kind, w)
    return 1.0 if alpha is None or not r else alpha / r


def fit_to(change: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """`change` in the weight's `shape`: reshaped when the sizes agree (A1111's rule), a 4-channel conv_in
    change zero-padded to the depth model's 5 input channels (the extra channel is left as it is)."""
    shape = torch.Size(shape)
    if change.shape == shape:
        return change
    if change.numel() == math.prod(shape):
        return change.reshape(shape)
    if len(shape) == 4 and change.dim() == 2 and change.shape[1] % (shape[2] * shape[3]) == 0:
        change = change.reshape(change.shape[0], -1, *shape[2:])
    if len(shape) == 4 and change.dim() == 4 and change.shape[0] == shape[0] and change.shape[2:] == shape[2:]:
        missing = shape[1] - change.shape[1]
        if missing > 0:
            return torch.nn.functional.pad(change, (0, 0, 0, 0, 0, missing))
    raise ValueError(f"a change of shape {tuple(change.shape)} does not fit a weight of shape {tuple(shape)}")
