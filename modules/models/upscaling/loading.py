"""Upscaler model files -> spandrel model descriptors, read safely.

Weights are read only through ``modules.models.safe_load``: ``.pth`` / ``.pt`` / ``.ckpt`` with its
allow-list unpickler (a pickle that would build anything but tensors and plain containers is
refused without running it), ``.safetensors`` with its header check.  The architecture and its
hyper-parameters are detected from the keys and shapes by spandrel (the library ComfyUI and Forge
use).

spandrel declares torchvision as a dependency but needs it only at run time of two architectures
that are not upscalers (LaMa inpainting, RestoreFormer face restoration); its package imports
``torchvision.transforms.functional`` eagerly, though.  Where torchvision is not installed,
``import_spandrel`` imports spandrel with a placeholder module in ``sys.modules`` for the length of
that one import (removed right after, so other libraries still see torchvision as missing), and
``load_descriptor`` refuses the two architectures with a clear message.
"""

from __future__ import annotations

import enum
import importlib.util
import sys
import threading
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from modules.core.errors import CheckpointError, UnsupportedModelError
from modules.models import safe_load

StateDict = dict[str, torch.Tensor]

MODEL_SUFFIXES = (".pth", ".pt", ".ckpt", ".safetensors")
SPANDREL_PIN = "spandrel==0.4.2"  # keep in step with requirements-nodeps.txt
TORCHVISION_ARCHITECTURES = frozenset({"LaMa", "RestoreFormer"})
_UPSCALER_PURPOSES = ("SR", "Restoration")
# Where trainers (BasicSR, Real-ESRGAN, KAIR) nest the weights; the first one present wins,
# so Real-ESRGAN's EMA weights are preferred over its raw ones.  spandrel unwraps the same keys.
_WRAPPER_KEYS = ("model_state_dict", "state_dict", "params_ema", "params-ema", "params", "model", "net")
_PREFIXES = ("module.", "netG.")
_TORCHVISION_MODULES = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")
_import_lock = threading.Lock()


def torchvision_available() -> bool:
    return "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is not None


def import_spandrel() -> types.ModuleType:
    """``spandrel``, imported without needing torchvision; UnsupportedModelError if it is not installed."""
    with _import_lock:
        if "spandrel" in sys.modules:
            return sys.modules["spandrel"]
        if importlib.util.find_spec("spandrel") is None:
            raise UnsupportedModelError(
                "Upscaler models need the spandrel package, which is not installed. Run `python launch.py` "
                f"(it installs requirements-nodeps.txt) or `pip install --no-deps {SPANDREL_PIN}`."
            )
        if torchvision_available():
            import spandrel
        else:
            with _torchvision_placeholder():
                import spandrel
        return spandrel


@contextmanager
def _torchvision_placeholder() -> Iterator[None]:
    """A stand-in ``torchvision.transforms.functional`` whose functions raise, for one import only."""
    placeholders = {name: types.ModuleType(name) for name in _TORCHVISION_MODULES}
    functional = placeholders["torchvision.transforms.functional"]
    functional.InterpolationMode = enum.Enum("InterpolationMode", {"NEAREST": "nearest", "BILINEAR": "bilinear"})
    functional.rotate = functional.normalize = _needs_torchvision
    placeholders["torchvision"].transforms = placeholders["torchvision.transforms"]
    placeholders["torchvision.transforms"].functional = functional
    sys.modules.update(placeholders)
    try:
        yield
    finally:
        for name, module in placeholders.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]


def _needs_torchvision(*args: Any, **kwargs: Any) -> None:
    raise UnsupportedModelError("This model needs torchvision, which is not installed.")


def read_weights(path: Path, *, allow_unsafe: bool = False) -> StateDict:
    """The flat ``{key: tensor}`` of an upscaler file, unwrapped from ``params_ema`` and the like."""
    suffix = path.suffix.lower()
    if suffix not in MODEL_SUFFIXES:
        raise CheckpointError(f"{path.name}: not an upscaler model file (expected one of {', '.join(MODEL_SUFFIXES)})")
    if not path.is_file():
        raise CheckpointError(f"upscaler model file not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path.name} is empty (0 bytes); the download or copy did not finish")
    raw = safe_load.read_object(path, allow_unsafe=allow_unsafe)  # UnsafeCheckpointError for code-running pickles
    return _unwrap(raw, path.name)


def _unwrap(obj: object, name: str) -> StateDict:
    if isinstance(obj, dict):
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if isinstance(obj, dict) and len(obj) == 1 and isinstance(next(iter(obj.values())), dict):
        obj = next(iter(obj.values()))
    if not isinstance(obj, dict):
        raise CheckpointError(f"{name} does not hold a state dict (found {type(obj).__name__})")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{name} holds no tensors; it is not an upscaler model")
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix) :]: v for k, v in tensors.items()}
    return tensors


def load_descriptor(path: Path, device: torch.device, *, allow_unsafe: bool = False) -> Any:
    """spandrel's ``ImageModelDescriptor`` for an upscaler file, in eval mode, float32, on ``device``."""
    state_dict = read_weights(path, allow_unsafe=allow_unsafe)
    spandrel = import_spandrel()
    try:
        descriptor = spandrel.ModelLoader(device="cpu").load_from_state_dict(state_dict)
    except spandrel.UnsupportedModelError:
        raise UnsupportedModelError(
            f"{path.name}: spandrel does not recognise this model's architecture from its weights "
            f"({len(state_dict)} tensors, first keys: {', '.join(list(state_dict)[:3])}); it is not a supported "
            "upscaler (ESRGAN, Real-ESRGAN, SwinIR, DAT, HAT, ...)"
        ) from None
    except (KeyError, ValueError, RuntimeError, IndexError, AssertionError, TypeError) as e:
        raise CheckpointError(f"{path.name}: the weights look like an upscaler but could not be built: {e}") from e
    _check_usable(descriptor, path.name, spandrel)
    return descriptor.to(device=device, dtype=torch.float32).eval()


def _check_usable(descriptor: Any, name: str, spandrel: types.ModuleType) -> None:
    arch = descriptor.architecture.id
    if arch in TORCHVISION_ARCHITECTURES and not torchvision_available():
        raise UnsupportedModelError(f"{name} is a {arch} model, which needs torchvision (not installed here)")
    if not isinstance(descriptor, spandrel.ImageModelDescriptor) or descriptor.purpose not in _UPSCALER_PURPOSES:
        raise UnsupportedModelError(f"{name} is a {arch} model for {descriptor.purpose}, not an upscaler")
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise UnsupportedModelError(
            f"{name}: {arch} model with {descriptor.input_channels} input / {descriptor.output_channels} output "
            "channels; only RGB upscalers are supported"
        )
