"""Reading checkpoint files into a flat state dict, safely and without copies.

* ``.safetensors``: the header is validated first, then each tensor is read (``readinto``) into
  memory of its own.
* ``.ckpt`` / ``.pt`` / ``.pth``: ``torch.load(weights_only=True)``, torch's allow-list unpickler:
  only tensors, storages and plain containers can be built, so no pickled code ever runs.  Zip
  archives are checked member by member first.  The explicit opt-out (``allow_unsafe``, the
  ``--disable-safe-unpickle`` flag) runs the full unpickler.

Weights are read into anonymous memory, not memory-mapped (``mmap=False``, the default): a mapped
file that is truncated or rewritten under the running program (a copy or a re-download over it)
kills the process with SIGBUS at the next touch of a lost page, or silently changes the weights.
Read, the file can change or vanish and the loaded weights stay exactly what was read; a file that
shrinks while it is read is a CheckpointError, never a crash.  Same bytes in RAM as a mapped file
once every page is touched (the first generation touches them all), read at load instead of on first
use (README, Reliability).  ``mmap=True`` maps instead (for measurements).

Lightning-style wrappers (``{"state_dict": {...}, "global_step": ...}``) are unwrapped.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from modules.core.errors import CheckpointError, UnsafeCheckpointError

log = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
SAFETENSORS_SUFFIX = ".safetensors"

# Members torch.save writes into its zip archive; anything else is refused.
_ZIP_MEMBER = re.compile(
    r"^[^/]+/(data\.pkl|version|byteorder|data/\d+|\.data/version|\.data/serialization_id"
    r"|\.format_version|\.storage_alignment)$"
)
_GLOBAL_IN_MESSAGE = re.compile(r"GLOBAL ([\w.]+)")


class _LightningCallbackPlaceholder:
    """Stands in for pytorch_lightning's ModelCheckpoint, kept by some training checkpoints.

    It is built from plain data only (its state is ignored); no Lightning code is imported or run.
    """

    def __setstate__(self, state: object) -> None:
        pass


# Non-tensor objects that appear in real Stable Diffusion checkpoints next to the weights and are
# harmless to build: numpy scalars/arrays (global_step, epoch) and Lightning's callback state.
def _extra_safe_globals() -> list:
    extra: list = [
        (np.dtype, "numpy.dtype"),
        (np.ndarray, "numpy.ndarray"),
        (_LightningCallbackPlaceholder, "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"),
    ]
    core = getattr(np, "_core", None) or np.core
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        extra.append((core.multiarray.scalar, f"{module}.scalar"))
        extra.append((core.multiarray._reconstruct, f"{module}._reconstruct"))
    for dtype_cls in (np.dtypes.Float64DType, np.dtypes.Int64DType, np.dtypes.Float32DType, np.dtypes.Int32DType):
        extra.append(dtype_cls)
    return extra


def read_state_dict(path: str | Path, *, allow_unsafe: bool = False, mmap: bool = False,
                    cast: Callable[[str], torch.dtype | None] | None = None) -> StateDict:  # fmt: skip
    """Flat ``{key: tensor}`` of a checkpoint file; raises CheckpointError with a reason.

    The tensors own their memory unless `mmap` (then they are views of the mapped file).  `cast(key)`
    names a floating dtype a tensor is converted to as it is read (a ``.safetensors`` file read into
    memory then never holds more than one tensor in its file dtype: a bfloat16 UNet costs its own size
    at load, not its float32 size too); None keeps the file's dtype."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path.name} is empty (0 bytes); the download or copy did not finish")
    if path.suffix.lower() == SAFETENSORS_SUFFIX:
        raw = _read_safetensors(path, mmap=mmap, cast=cast)
    else:
        raw = _read_pickle(path, allow_unsafe=allow_unsafe, mmap=mmap)
    flat = _flatten(raw, path.name)
    return flat if cast is None else {k: _cast(k, t, cast) for k, t in flat.items()}


def read_object(path: str | Path, *, allow_unsafe: bool = False) -> object:
    """What a model file holds, nested dicts kept (upscaler and embedding files wrap their tensors:
    ``params_ema``, ``string_to_param``): a ``.safetensors`` file's tensors, or a pickle's object through
    the allow-list unpickler.  Read into memory, never mapped."""
    path = Path(path)
    if path.suffix.lower() == SAFETENSORS_SUFFIX:
        return _read_safetensors(path, mmap=False)
    return _read_pickle(path, allow_unsafe=allow_unsafe)


def _cast(key: str, tensor: torch.Tensor, cast: Callable[[str], torch.dtype | None]) -> torch.Tensor:
    dtype = cast(key)
    return tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor


_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}  # fmt: skip


def _read_safetensors(path: Path, *, mmap: bool, cast: Callable[[str], torch.dtype | None] | None = None) -> dict:
    header, data_start = _check_safetensors_header(path)
    if not mmap:
        return _read_safetensors_into_memory(path, header, data_start, cast)
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises its own SafetensorError types
        raise CheckpointError(f"{path.name} is not a valid .safetensors file: {e}") from e


def _read_safetensors_into_memory(path: Path, header: dict, data_start: int,
                                  cast: Callable[[str], torch.dtype | None] | None = None) -> StateDict:  # fmt: skip
    """Each tensor read with ``readinto`` into a tensor of its own, in file order (no mapping, no copy),
    and converted at once when `cast` names a dtype for it."""
    entries = sorted(((k, m) for k, m in header.items() if k != "__metadata__"), key=lambda e: e[1]["data_offsets"][0])
    out: StateDict = {}
    with path.open("rb", buffering=0) as f:
        for key, meta in entries:
            tensor = _empty_tensor(path, key, meta)
            start, end = meta["data_offsets"]
            f.seek(data_start + start)
            _read_exactly(f, tensor, end - start, path, key)
            out[key] = tensor if cast is None else _cast(key, tensor, cast)
    return out


def _empty_tensor(path: Path, key: str, meta: dict) -> torch.Tensor:
    dtype = _ST_DTYPES.get(meta.get("dtype"))
    shape = meta.get("shape")
    if dtype is None:
        raise CheckpointError(f"{path.name} is not a valid .safetensors file: tensor {key!r} has unknown dtype "
                              f"{meta.get('dtype')!r}")  # fmt: skip
    if not (isinstance(shape, list) and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
        raise CheckpointError(f"{path.name} is not a valid .safetensors file: tensor {key!r} has shape {shape!r}")
    numel = 1
    for n in shape:
        numel *= n
    start, end = meta["data_offsets"]
    if numel * dtype.itemsize != end - start:
        raise CheckpointError(
            f"{path.name} is not a valid .safetensors file: tensor {key!r} of shape {shape} {meta['dtype']} needs "
            f"{numel * dtype.itemsize} bytes, the header gives it {end - start}"
        )
    return torch.empty(shape, dtype=dtype)


def _read_exactly(f, tensor: torch.Tensor, nbytes: int, path: Path, key: str) -> None:
    if nbytes == 0:
        return
    view = memoryview(tensor.view(-1).view(torch.uint8).numpy())
    done = 0
    while done < nbytes:
        got = f.readinto(view[done:])
        if not got:
            raise CheckpointError(
                f"{path.name} ended inside tensor {key!r} ({done} of {nbytes} bytes read): the file is truncated or "
                "is being rewritten (a copy or download still running?)"
            )
        done += got


def _check_safetensors_header(path: Path) -> tuple[dict, int]:
    """Validate the JSON header and that every tensor lies inside the file; the header and where data starts."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path.name} is too short to be a .safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, 100 * 2**20):
            raise CheckpointError(f"{path.name} has a corrupt .safetensors header (length {n} bytes)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path.name} has a corrupt .safetensors header: {e}") from e
    if not isinstance(header, dict):
        raise CheckpointError(f"{path.name} has a corrupt .safetensors header (not a JSON object)")
    data_size = size - 8 - n
    for key, meta in header.items():
        if key == "__metadata__":
            continue
        offsets = meta.get("data_offsets") if isinstance(meta, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and 0 <= offsets[0] <= offsets[1] <= data_size):
            raise CheckpointError(
                f"{path.name}: tensor {key!r} points outside the file (offsets {offsets}, data is {data_size} bytes);"
                " the file is truncated or corrupt"
            )
    return header, 8 + n


def _read_pickle(path: Path, *, allow_unsafe: bool, mmap: bool = False) -> object:
    is_zip = zipfile.is_zipfile(path)
    if is_zip:
        _check_zip_members(path)
    else:
        with path.open("rb") as f:
            magic = f.read(2)
        if magic[:1] != b"\x80":
            what = "a truncated zip archive" if magic == b"PK" else "neither a zip archive nor a pickle"
            raise CheckpointError(f"{path.name} is not a PyTorch checkpoint ({what})")
    if allow_unsafe:
        log.warning("Loading %s with the full unpickler (--disable-safe-unpickle): it can run code.", path.name)
    try:
        with torch.serialization.safe_globals(_extra_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=not allow_unsafe, mmap=is_zip and mmap)
    except pickle.UnpicklingError as e:
        found = _GLOBAL_IN_MESSAGE.findall(str(e))
        what = f"the forbidden global {found[0]!r}" if found else "pickled objects that are not plain tensor data"
        raise UnsafeCheckpointError(
            f"Refused to load {path.name}: it contains {what}, which would run code when loaded. "
            "Only tensors and plain containers are allowed. Use the .safetensors version of this model, "
            "or start with --disable-safe-unpickle only if you trust where the file came from."
        ) from e
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile, KeyError, struct.error) as e:
        raise CheckpointError(
            f"{path.name} could not be read as a checkpoint (truncated or not a model file): {type(e).__name__}: {e}"
        ) from e


def _check_zip_members(path: Path) -> None:
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"{path.name} is a damaged zip archive: {e}") from e
    names = [i.filename for i in infos]
    compressed = [i.filename for i in infos if i.compress_type != zipfile.ZIP_STORED]
    if compressed:  # torch.save never compresses; torch.load would inflate it all into memory (a zip bomb)
        raise UnsafeCheckpointError(
            f"Refused to load {path.name}: compressed member {compressed[0]!r} (PyTorch checkpoints store their "
            "members uncompressed)."
        )
    bad = [n for n in names if not _ZIP_MEMBER.match(n)]
    pickles = [n for n in names if n.endswith("/data.pkl")]
    if bad or len(pickles) != 1 or len({n.split("/", 1)[0] for n in names}) != 1:
        what = f"unexpected member {bad[0]!r}" if bad else f"{len(pickles)} data.pkl records"
        raise UnsafeCheckpointError(f"Refused to load {path.name}: not a plain PyTorch checkpoint archive ({what}).")


def _flatten(obj: object, name: str) -> StateDict:
    """Unwrap Lightning's ``state_dict`` entry and keep the tensors."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{name} does not hold a state dict (found {type(obj).__name__})")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    skipped = [k for k in obj if k not in tensors]
    if skipped:
        log.info("%s: ignoring %d non-tensor entries (%s)", name, len(skipped), ", ".join(map(str, skipped[:5])))
    if not tensors:
        raise CheckpointError(f"{name} holds no tensors; it is not a model checkpoint")
    return tensors
