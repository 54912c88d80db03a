"""VAE files: the list, A1111's choices (``Automatic``, ``None``, a file), loading into the model's VAE.

As A1111's ``sd_vae``: every ``.safetensors`` / ``.pt`` / ``.ckpt`` under the VAE folders and every
``*.vae.*`` file beside the checkpoints is a choice, named by its file name.  ``Automatic`` takes the
VAE made for the checkpoint (``<checkpoint name>.vae.safetensors`` / ``.pt`` / ``.ckpt`` beside it, else
a listed file whose name starts with ``<checkpoint name>.``), or the checkpoint's own VAE when there is
none; ``None`` is always the checkpoint's own.

A file may hold a bare VAE (``encoder.*``, ``decoder.*``, ``quant_conv.*``), a whole LDM checkpoint
(``first_stage_model.*``; the rest is ignored), or a diffusers ``AutoencoderKL`` state dict.  LDM keys
go through diffusers' LDM -> diffusers VAE converter (the one the checkpoint was loaded with).  The
weights replace the VAE's parameter tensors (``networks.swap``): the checkpoint's own tensors are
kept and put back exactly.  Pickles are read only through ``safe_load``.  Infotext: ``VAE hash``
is the file's sha256, first 10 hex digits, ``VAE`` its file name (A1111).
"""

from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from diffusers.loaders import single_file_utils as sfu

from modules.core.errors import CheckpointError, UserError
from modules.models import model_files, safe_load
from modules.models.model_files import FileStamp
from modules.models.networks.swap import ParamBackup, like

log = logging.getLogger(__name__)

VAE_SUFFIXES = (".safetensors", ".pt", ".ckpt")
AUTOMATIC, NONE = "Automatic", "None"
SHORTHASH_LEN = 10
_IGNORED = ("model_ema.decay", "model_ema.num_updates")
_PREFIXES = ("first_stage_model.", "vae.")


class VaeNotFoundError(UserError):
    status_code = 404


@dataclass(frozen=True)
class VaeFile:
    name: str  # file name, as A1111 lists it
    path: Path

    @property
    def stamp(self) -> tuple[str, FileStamp]:
        """Identity of the file's contents as far as the disk tells (size, mtime, ctime, inode)."""
        return model_files.identity(self.path)

    @property
    def sha256(self) -> str:
        return _digests.get(self.path)

    @property
    def shorthash(self) -> str:
        return self.sha256[:SHORTHASH_LEN]

    def infotext(self) -> dict[str, str]:
        return {"VAE hash": self.shorthash, "VAE": self.name}


_digests = model_files.FileDigests()


def _walk(folder: Path, keep) -> list[Path]:
    return list(model_files.walk(folder, lambda name: keep(name.lower())))


def _is_vae(fname: str) -> bool:
    return fname.endswith(VAE_SUFFIXES)


def _is_sibling_vae(fname: str) -> bool:
    return any(fname.endswith(".vae" + s) for s in VAE_SUFFIXES)


class VaeRegistry:
    """The VAE files of the VAE folders, plus ``*.vae.*`` files in the checkpoint folders."""

    def __init__(self, vae_folders: list[Path], checkpoint_folders: list[Path] = ()):
        self.vae_folders = [Path(f) for f in vae_folders]
        self.checkpoint_folders = [Path(f) for f in checkpoint_folders]
        self._items: dict[str, VaeFile] = {}
        self._lock = threading.Lock()

    def refresh(self) -> list[VaeFile]:
        paths = [p for f in self.vae_folders if f.is_dir() for p in _walk(f, _is_vae)]
        paths += [p for f in self.checkpoint_folders if f.is_dir() for p in _walk(f, _is_sibling_vae)]
        items: dict[str, VaeFile] = {}
        for path in sorted(paths, key=lambda p: p.name.lower()):
            items.setdefault(path.name, VaeFile(path.name, path.resolve()))
        with self._lock:
            self._items = items
        return list(items.values())

    def list(self) -> list[VaeFile]:
        with self._lock:
            return list(self._items.values())

    def choices(self) -> list[str]:
        return [AUTOMATIC, NONE, *(v.name for v in self.list())]

    def resolve(self, choice: str, checkpoint: Path | None) -> VaeFile | None:
        """The file a choice stands for with `checkpoint` loaded; None for the checkpoint's own VAE."""
        if choice == NONE:
            return None
        if choice in (AUTOMATIC, "auto", ""):
            return self.automatic(checkpoint) if checkpoint is not None else None
        found = self._get(choice) or (self.refresh() and self._get(choice))
        if found is None:
            known = ", ".join(self.choices()[:20])
            raise VaeNotFoundError(f"VAE {choice!r} not found; choices: {known}")
        return found

    def _get(self, choice: str) -> VaeFile | None:
        items = self.list()
        return next((v for v in items if v.name == choice), None) or next(
            (v for v in items if v.path.stem == choice), None
        )

    def automatic(self, checkpoint: Path) -> VaeFile | None:
        """``<checkpoint name>.vae.<ext>`` beside the checkpoint, else a listed VAE named ``<checkpoint name>.*``."""
        stem = Path(checkpoint).name.rsplit(".", 1)[0]
        for suffix in VAE_SUFFIXES:
            beside = Path(checkpoint).with_name(f"{stem}.vae{suffix}")
            if beside.is_file():
                return VaeFile(beside.name, beside.resolve())
        return next((v for v in self.list() if v.name.startswith(stem + ".")), None)


def _vae_part(sd: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """The VAE's keys without a ``first_stage_model.`` / ``vae.`` prefix, loss and EMA counters dropped."""
    for prefix in _PREFIXES:
        part = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
        if part:
            sd = part
            break
    sd = {k: v for k, v in sd.items() if not k.startswith("loss.") and k not in _IGNORED}
    if not any(k.startswith(("encoder.", "decoder.")) for k in sd):
        raise CheckpointError(f"{name} holds no VAE weights (no encoder./decoder. or first_stage_model. keys)")
    return sd


def read_vae_weights(path: Path, vae: AutoencoderKL, *, allow_unsafe: bool = False) -> dict[str, torch.Tensor]:
    """The file's VAE as ``vae``'s own (diffusers) keys; raises CheckpointError when it does not fit."""
    sd = _vae_part(safe_load.read_state_dict(path, allow_unsafe=allow_unsafe), path.name)
    diffusers_layout = any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.")) for k in sd)
    converted = sd if diffusers_layout else sfu.convert_ldm_vae_checkpoint(sd, dict(vae.config))
    _check_fits(converted, vae, path.name)
    return converted


def _check_fits(weights: dict[str, torch.Tensor], vae: AutoencoderKL, name: str) -> None:
    wanted = {k: p.shape for k, p in vae.state_dict().items()}
    missing = [k for k in wanted if k not in weights]
    if missing:
        raise CheckpointError(f"{name} is not a VAE of this model: {len(missing)} weights missing, e.g. {missing[:3]}")
    wrong = [f"{k} {tuple(weights[k].shape)} (expected {tuple(s)})" for k, s in wanted.items() if weights[k].shape != s]
    if wrong:
        raise CheckpointError(f"{name} is a VAE of another shape than this model's: {'; '.join(wrong[:3])}")


@dataclass
class _VaeState:
    file: VaeFile | None = None
    stamp: tuple | None = None
    backup: ParamBackup = field(default_factory=ParamBackup)


class VaeSwitcher:
    """Which VAE file each loaded model's VAE holds (None: the checkpoint's own)."""

    def __init__(self, registry: VaeRegistry, *, allow_unsafe: bool = False):
        self.registry = registry
        self.allow_unsafe = allow_unsafe
        self._states: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._lock = threading.RLock()

    def apply(self, model, choice: str, checkpoint: Path | None) -> VaeFile | None:
        """Give `model` the VAE `choice` stands for (with `checkpoint` loaded); returns the file used."""
        return self.load(model, self.registry.resolve(choice, checkpoint))

    def current(self, model) -> VaeFile | None:
        state = self._states.get(model)
        return state.file if state else None

    def load(self, model, file: VaeFile | None) -> VaeFile | None:
        """`file`'s weights in `model.vae` (None: the checkpoint's own back); a no-op for the file in use."""
        with self._lock:
            state = self._states.setdefault(model, _VaeState())
            stamp = file.stamp if file is not None else None
            if stamp == state.stamp:
                return state.file
            weights = read_vae_weights(file.path, model.vae, allow_unsafe=self.allow_unsafe) if file else None
            state.backup.restore()
            state.file, state.stamp = None, None
            if weights is not None:
                try:
                    _replace_all(model.vae, weights, state.backup)
                except BaseException:
                    state.backup.restore()
                    raise
                state.file, state.stamp = file, stamp
                log.info("Loaded VAE %s [%s]", file.name, file.shorthash)
            return state.file


@torch.no_grad()
def _replace_all(vae: AutoencoderKL, weights: dict[str, torch.Tensor], backup: ParamBackup) -> None:
    for module_name, module in vae.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            key = f"{module_name}.{param_name}" if module_name else param_name
            backup.replace(module, param, like(weights[key], param.data))
