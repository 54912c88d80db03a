"""Applying a set of networks to a loaded model: merged into its weights, originals kept for an exact restore.

``NetworkStack.apply(model, [(name, te_multiplier, unet_multiplier), ...])`` makes the model's UNet and
text-encoder weights ``W + sum(multiplier * scale * change)`` over the requested networks (the
text-encoder multiplier for text-encoder modules, the UNet one for UNet modules), as A1111 does
with its default (non-"functional") method.  Asking again for the set that is applied does nothing;
asking for another set restores the original weights first.  ``apply(model, [])`` restores them.

Merged weights are new tensors (see ``swap``): the original tensors are kept, not copied, and a
memory-mapped checkpoint is never written; merging costs new memory only for the weights the
networks change.  Everything a request needs is read and checked before any
weight changes, so a request that fails leaves the model as it was.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch

from modules.models.networks import formulas, keys
from modules.models.networks.files import NetworkFile, NetworkRegistry
from modules.models.networks.keys import TEXT, ModuleNames, Target
from modules.models.networks.network import ModulePatch, Network, load_network
from modules.models.networks.swap import ParamBackup

log = logging.getLogger(__name__)

Request = tuple[str, float, float]  # (network name or alias, text-encoder multiplier, UNet multiplier)


@dataclass(frozen=True)
class AppliedNetwork:
    """A network as merged, for infotext (``Lora hashes``) and logs."""

    name: str  # as requested (the name used in the prompt)
    alias: str
    path: str
    shorthash: str
    te_multiplier: float
    unet_multiplier: float
    modules: int


@dataclass(frozen=True)
class _Wanted:
    file: NetworkFile
    name: str
    te: float
    unet: float


@dataclass
class _ModelState:
    names: ModuleNames
    backup: ParamBackup = field(default_factory=ParamBackup)
    key: tuple = ()
    applied: tuple[AppliedNetwork, ...] = ()
    cache: OrderedDict = field(default_factory=OrderedDict)  # file stamp -> Network


def lora_hashes(applied: Sequence[AppliedNetwork]) -> str:
    """A1111's ``Lora hashes`` infotext value: ``name: shorthash, ...`` (':' and ',' dropped from names)."""
    drop = str.maketrans("", "", ":,")
    return ", ".join(f"{a.name.translate(drop)}: {a.shorthash}" for a in applied)


class NetworkStack:
    """The networks applied to each loaded model (state kept per model, dropped with the model)."""

    def __init__(self, registry: NetworkRegistry, *, cache_size: int = 2, allow_unsafe: bool = False):
        self.registry = registry
        self.cache_size = cache_size  # parsed networks kept per model (A1111's lora_in_memory_limit)
        self.allow_unsafe = allow_unsafe
        self._states: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._lock = threading.RLock()
        self.last_stats: dict[str, float] = {}

    def apply(self, model, requested: Sequence[Request]) -> list[AppliedNetwork]:
        """Make `requested` the networks merged into `model`; a no-op when it already is."""
        with self._lock:
            state = self._state(model)
            wanted = [_Wanted(self.registry.get(name), name, float(te), float(unet)) for name, te, unet in requested]
            key = tuple((w.file.stamp, w.te, w.unet) for w in wanted)
            if key == state.key:
                self.last_stats = {"restored": 0, "merged": 0, "seconds": 0.0}
                state.applied = tuple(replace(a, name=w.name) for a, w in zip(state.applied, wanted, strict=True))
                return list(state.applied)
            t0 = time.perf_counter()
            nets = [self._network(state, w.file, model) for w in wanted]  # read and checked before any change
            restored, merged = self._switch(state, nets, wanted)
            state.key = key
            self.last_stats = {"restored": restored, "merged": merged, "seconds": time.perf_counter() - t0}
            log.info("Networks %s: %d weights restored, %d merged in %.2fs", lora_hashes(state.applied) or "none",
                     restored, merged, self.last_stats["seconds"])  # fmt: skip
            return list(state.applied)

    @staticmethod
    def _switch(state: _ModelState, nets: list[Network], wanted: list[_Wanted]) -> tuple[int, int]:
        """Originals back, then `nets` merged; on an error the originals stay. Returns (restored, merged)."""
        restored = state.backup.restore()
        state.key, state.applied = (), ()
        try:
            merged = merge(state, [(net, w.te, w.unet) for net, w in zip(nets, wanted, strict=True)])
        except BaseException:
            state.backup.restore()
            raise
        state.applied = tuple(_applied(net, w) for net, w in zip(nets, wanted, strict=True))
        return restored, merged

    def restore(self, model) -> None:
        """The model's original weights back (no networks applied)."""
        self.apply(model, [])

    def applied(self, model) -> list[AppliedNetwork]:
        with self._lock:
            state = self._states.get(model)
            return list(state.applied) if state else []

    def applied_key(self, model) -> str:
        """Identity of the merged set, for caches of anything computed with the weights (prompt conditioning)."""
        return ";".join(f"{a.shorthash}:{a.te_multiplier:g}:{a.unet_multiplier:g}" for a in self.applied(model))

    def _state(self, model) -> _ModelState:
        state = self._states.get(model)
        if state is None:
            state = _ModelState(keys.module_names(model))
            self._states[model] = state
        return state

    def _network(self, state: _ModelState, file: NetworkFile, model) -> Network:
        stamp = file.stamp
        net = state.cache.pop(stamp, None)
        if net is None:
            net = load_network(file, model, state.names, allow_unsafe=self.allow_unsafe)
        if self.cache_size > 0:
            state.cache[stamp] = net
            while len(state.cache) > self.cache_size:
                state.cache.popitem(last=False)
        return net


def _applied(net: Network, w: _Wanted) -> AppliedNetwork:
    file = net.file
    return AppliedNetwork(w.name, file.alias, str(file.path), file.shorthash, w.te, w.unet, len(net.patches))


def merge(state: _ModelState, nets: Sequence[tuple[Network, float, float]]) -> int:
    """Merge the networks' changes into the weights; returns how many weights changed."""
    by_target: OrderedDict[Target, list[tuple[ModulePatch, float]]] = OrderedDict()
    for net, te, unet in nets:
        for target, patch in net.patches.items():
            multiplier = te if target[0] == TEXT else unet
            if multiplier != 0:
                by_target.setdefault(target, []).append((patch, multiplier))
    merged = 0
    for target, patches in by_target.items():
        merged += merge_module(state, state.names.modules[target], patches)
    return merged


@torch.no_grad()
def merge_module(state: _ModelState, module: torch.nn.Module, patches: list[tuple[ModulePatch, float]]) -> int:
    """``W + sum(m * change)`` (and the bias for full diffs) as new tensors; returns the tensors set."""
    weight = module.weight
    base = state.backup.original(weight)
    change = formulas.fit_to(patches[0][0].change(base.device, patches[0][1]), base.shape)
    for patch, m in patches[1:]:
        change.add_(formulas.fit_to(patch.change(base.device, m), base.shape))
    state.backup.replace(module, weight, _added(base, change))
    biases = [(p.bias_change(base.device), m) for p, m in patches if "diff_b" in p.tensors]
    if not biases or module.bias is None:
        return 1
    bias = state.backup.original(module.bias)
    state.backup.replace(module, module.bias, _added(bias, sum(b.reshape(bias.shape) * m for b, m in biases)))
    return 2


def _added(base: torch.Tensor, change: torch.Tensor) -> torch.Tensor:
    """``base + change`` computed in float32, as a new tensor laid out like `base`.

    `change` is a new float32 tensor of ours: where it is laid out as `base`, the sum is written into
    it (one weight-sized allocation and pass fewer; float addition is commutative, so same bits)."""
    if base.dtype == change.dtype and base.device == change.device and base.stride() == change.stride():
        return change.add_(base)
    out = torch.empty_like(base)
    return out.copy_(base.float() + change)
