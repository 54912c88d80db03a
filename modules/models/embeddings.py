"""Textual-inversion embeddings from a folder, and the hook that puts their vectors into a prompt.

Files (as A1111's ``textual_inversion.py`` reads them; the name is the file name without extension):

* A1111 / original-repo ``.pt``: ``{"string_to_param": {"*": [n, width]}, "step", "sd_checkpoint",
  "sd_checkpoint_name", ...}`` (older files hold an ``nn.ParameterDict`` there);
* ``.safetensors`` ``{"emb_params": [n, width]}`` and diffusers ``.bin`` ``{"<token>": [width] or
  [n, width]}``: any file with exactly one tensor.

Pickles are read only through ``safe_load``'s allow-list unpickler (``nn.ParameterDict`` added to it
for the old files), so a file that would run code is refused.  An embedding whose width is not the
text encoder's (an SD1 one with SD2) is skipped and listed, as A1111 does.

In a prompt an embedding is found by its name's token ids (A1111's ``find_embedding_at_position``:
the longest name whose ids follow at that position), so it matches where its name is written as a
word.  The prompt encoder uses three functions:

1. ``db.expand(ids)``: the token ids with each embedding's ids replaced by the ``Embedding`` itself
   (it takes ``len(embedding)`` token slots; a chunk must not split it);
2. ``layout(items)``: ids with placeholder slots, and ``(offset, vectors)`` fixes;
3. ``inject(text_encoder, fixes)``: within it, the token embedding's output at those positions is
   replaced by the vectors (positions in the 77-id row, i.e. chunk offset + 1 for the start token).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modules.core.errors import CheckpointError
from modules.models import model_files, safe_load
from modules.models.tokenizer import ClipTokenizer

log = logging.getLogger(__name__)

EMBEDDING_SUFFIXES = (".pt", ".bin", ".safetensors")
SHORTHASH_LEN = 12
Fix = tuple[int, torch.Tensor]  # (position, [n, width] vectors)


@dataclass
class Embedding:
    name: str
    vectors: torch.Tensor  # [n, width], float32
    path: Path
    sha256: str
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def width(self) -> int:
        return int(self.vectors.shape[-1])

    @property
    def shorthash(self) -> str:
        return self.sha256[:SHORTHASH_LEN]

    def describe(self) -> dict[str, Any]:
        """One entry of ``GET /sdapi/v1/embeddings``."""
        return {"step": self.step, "sd_checkpoint": self.sd_checkpoint, "sd_checkpoint_name": self.sd_checkpoint_name,
                "shape": self.width, "vectors": len(self)}  # fmt: skip


_digests = model_files.FileDigests()


def _file_sha256(path: Path) -> str:
    return _digests.get(path)


def _read_object(path: Path, allow_unsafe: bool) -> Any:
    """A safetensors file's tensors, or a pickle's object (nested dicts kept) through the safe unpickler."""
    if path.suffix.lower() == ".safetensors":
        return safe_load.read_state_dict(path)
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path.name} is empty (0 bytes)")
    with torch.serialization.safe_globals([nn.ParameterDict]):
        return safe_load.read_object(path, allow_unsafe=allow_unsafe)


def _vectors(data: Any, name: str) -> torch.Tensor:
    """The [n, width] vectors of an embedding file's contents (A1111's three layouts)."""
    if isinstance(data, dict) and "string_to_param" in data:
        params = data["string_to_param"]
        params = dict(getattr(params, "_parameters", params))
        if len(params) != 1:
            raise CheckpointError(f"embedding {name} holds {len(params)} terms; one is expected")
        vec = next(iter(params.values()))
    elif isinstance(data, dict) and {"clip_g", "clip_l"} <= data.keys():
        raise CheckpointError(f"embedding {name} is an SDXL embedding (clip_g + clip_l)")
    elif isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), torch.Tensor):
        vec = next(iter(data.values()))
    else:
        raise CheckpointError(f"{name} is neither a textual-inversion embedding nor a diffusers concept")
    vec = vec.detach().to(torch.float32)
    return vec.unsqueeze(0) if vec.dim() == 1 else vec.reshape(-1, vec.shape[-1])


def read_embedding(path: Path, *, allow_unsafe: bool = False) -> Embedding:
    """One embedding file; raises CheckpointError (UnsafeCheckpointError for a pickle that runs code)."""
    name = path.stem
    data = _read_object(path, allow_unsafe)
    vectors = _vectors(data, name)
    meta = data if isinstance(data, dict) else {}

    def text(key: str) -> str | None:
        value = meta.get(key)
        return value if isinstance(value, str) else None

    step = meta.get("step")
    return Embedding(name, vectors, path, _file_sha256(path), step if isinstance(step, int) else None,
                     text("sd_checkpoint"), text("sd_checkpoint_name"))  # fmt: skip


def _files(folders: Sequence[Path]) -> list[Path]:
    found = [p for p in model_files.scan(list(folders), EMBEDDING_SUFFIXES) if p.stat().st_size]
    return sorted(found, key=lambda p: p.name.lower())


@dataclass
class _Lookup:
    """Embeddings by the first id of their name's tokens, longest name first."""

    by_first: dict[int, list[tuple[tuple[int, ...], Embedding]]] = field(default_factory=dict)

    def add(self, ids: Sequence[int], emb: Embedding) -> None:
        entries = self.by_first.setdefault(ids[0], [])
        entries.append((tuple(ids), emb))
        entries.sort(key=lambda e: len(e[0]), reverse=True)


class EmbeddingDatabase:
    """The embeddings of the folders for one text encoder width and tokenizer; ``refresh`` rescans on change."""

    def __init__(self, folders: Sequence[Path], *, allow_unsafe: bool = False):
        self.folders = [Path(f) for f in folders]
        self.allow_unsafe = allow_unsafe
        self.loaded: dict[str, Embedding] = {}
        self.skipped: dict[str, Embedding] = {}
        self.failed: dict[str, str] = {}
        self._lookup = _Lookup()
        self._signature: tuple | None = None
        self._lock = threading.Lock()

    def refresh(self, tokenizer: ClipTokenizer, width: int, *, force: bool = False) -> bool:
        """(Re)load when the files, the tokenizer flavour or the width changed; True if it reloaded."""
        files = _files(self.folders)
        signature = (tokenizer.flavour, width, tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in files))
        with self._lock:
            if signature == self._signature and not force:
                return False
            self._load(files, tokenizer, width)
            self._signature = signature
        log.info("Textual inversion embeddings loaded (%d): %s", len(self.loaded), ", ".join(self.loaded))
        if self.skipped:
            log.info("Textual inversion embeddings skipped (%d, not %d wide): %s", len(self.skipped), width,
                     ", ".join(self.skipped))  # fmt: skip
        return True

    def _load(self, files: list[Path], tokenizer: ClipTokenizer, width: int) -> None:
        self.loaded, self.skipped, self.failed, self._lookup = {}, {}, {}, _Lookup()
        for path in files:
            try:
                emb = read_embedding(path, allow_unsafe=self.allow_unsafe)
            except CheckpointError as e:
                self.failed[path.stem] = str(e)
                log.warning("Embedding %s not loaded: %s", path.name, e)
                continue
            if emb.name in self.loaded or emb.name in self.skipped:
                log.warning("Embedding %s: %s is shadowed by an earlier file of that name", emb.name, path)
            elif emb.width != width:
                self.skipped[emb.name] = emb
            elif not (ids := tokenizer.encode(emb.name)):
                self.failed[emb.name] = "its name gives no tokens, so no prompt can name it"
            else:
                self.loaded[emb.name] = emb
                self._lookup.add(ids, emb)

    @property
    def key(self) -> str:
        """Changes whenever what is loaded may have changed (files, tokenizer, width): for conditioning caches."""
        return hashlib.sha256(repr(self._signature).encode()).hexdigest()[:16]

    def listing(self) -> dict[str, dict[str, dict[str, Any]]]:
        """``GET /sdapi/v1/embeddings``: A1111's ``{loaded: {name: ...}, skipped: {name: ...}}``."""
        with self._lock:
            return {"loaded": {n: e.describe() for n, e in self.loaded.items()},
                    "skipped": {n: e.describe() for n, e in self.skipped.items()}}  # fmt: skip

    def find_at(self, ids: Sequence[int], offset: int) -> tuple[Embedding, int] | None:
        """The embedding whose name's ids start at `offset` (the longest), and how many ids that name takes."""
        for name_ids, emb in self._lookup.by_first.get(ids[offset], ()):
            if tuple(ids[offset : offset + len(name_ids)]) == name_ids:
                return emb, len(name_ids)
        return None

    def expand(self, ids: Sequence[int]) -> list[int | Embedding]:
        """`ids` with every embedding name replaced by its ``Embedding`` (which stands for ``len(emb)`` slots)."""
        out: list[int | Embedding] = []
        i = 0
        while i < len(ids):
            hit = self.find_at(ids, i)
            out.append(hit[0] if hit else ids[i])
            i += hit[1] if hit else 1
        return out


def slots(item: int | Embedding) -> int:
    """Token slots an expanded item takes in a chunk."""
    return len(item) if isinstance(item, Embedding) else 1


def layout(items: Iterable[int | Embedding], placeholder: int = 0) -> tuple[list[int], list[Fix]]:
    """Token ids with `placeholder` slots for the embeddings, and each embedding's (offset, vectors)."""
    ids: list[int] = []
    fixes: list[Fix] = []
    for item in items:
        if isinstance(item, Embedding):
            fixes.append((len(ids), item.vectors))
            ids.extend([placeholder] * len(item))
        else:
            ids.append(item)
    return ids, fixes


def used(items: Iterable[int | Embedding]) -> list[Embedding]:
    return [item for item in items if isinstance(item, Embedding)]


def ti_hashes(embeddings: Iterable[Embedding]) -> str:
    """A1111's ``TI hashes`` infotext value: ``name: shorthash, ...`` once per name, ':' and ',' dropped."""
    seen: dict[str, str] = {}
    for emb in embeddings:
        seen.setdefault(emb.name.replace(":", "").replace(",", ""), emb.shorthash)
    return ", ".join(f"{name}: {h}" for name, h in seen.items())


@contextmanager
def inject(text_encoder: nn.Module, fixes: Sequence[Sequence[Fix]]) -> Iterator[None]:
    """Within: row ``b`` of the token embedding's output gets ``vectors`` at ``position`` for each of
    ``fixes[b]`` (positions in the whole id row, start token at 0).  The hook is on the shared module,
    so the text encoder must not be used by another thread meanwhile."""
    token_embedding = text_encoder.get_input_embeddings()

    def replace(_module: nn.Module, _args: tuple, out: torch.Tensor) -> torch.Tensor:
        out = out.clone()
        for row, row_fixes in enumerate(fixes):
            for position, vectors in row_fixes:
                out[row, position : position + vectors.shape[0]] = vectors.to(out.device, out.dtype)
        return out

    handle = token_embedding.register_forward_hook(replace)
    try:
        yield
    finally:
        handle.remove()
