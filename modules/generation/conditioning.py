"""Prompt -> cross-attention context, as A1111 builds it: 75-token chunks, BREAK, emphasis.

A prompt is split into chunks of 75 tokens (at a comma within the last ``comma_backtrack`` tokens
when possible, or at BREAK), each chunk becomes ``<start> tokens <end> <pad>...`` (77 ids) and is
encoded on its own; the chunks are concatenated along the token axis, so nothing is truncated.
Emphasis weights multiply the token embeddings ("Original" then restores the mean, as A1111).
A prompt without emphasis or BREAK that fits in one chunk gives exactly LDM's conditioning.

Textual-inversion embeddings (``models.embeddings``): within each emphasis fragment, an embedding's
name written as a word takes ``len(embedding)`` token slots (never split over two chunks, as A1111);
the text encoder's token embedding is replaced there by the embedding's vectors while it runs.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from threading import Lock

import torch

from modules.core.prompt_parser import BREAK, parse_weighted
from modules.models import embeddings as ti
from modules.models.embeddings import Embedding, EmbeddingDatabase
from modules.models.tokenizer import ClipTokenizer

CHUNK = 75


@dataclass(frozen=True)
class Chunk:
    ids: tuple[int, ...]  # 77 ids with start/end/padding
    weights: tuple[float, ...]  # 77 multipliers (1.0 on start/end/padding)
    fixes: tuple[ti.Fix, ...] = ()  # (position in the 77 ids, vectors) of the embeddings in this chunk


def split_chunks(pieces: list, comma_id: int, backtrack: int = 20, size: int = CHUNK) -> list[tuple[list, list]]:
    """(ids, weights) runs and BREAK markers -> lists of at most `size` tokens, A1111's wrapping rules."""
    chunks: list[tuple[list, list]] = []
    ids: list[int] = []
    weights: list[float] = []
    last_comma = -1

    def close() -> None:
        nonlocal ids, weights, last_comma
        chunks.append((ids, weights))
        ids, weights, last_comma = [], [], -1

    for piece in pieces:
        if piece == BREAK:
            close()
            continue
        piece_ids, weight = piece
        for token in piece_ids:
            if isinstance(token, Embedding):
                if ids and _slots(ids) + len(token) > size:  # an embedding is not split over two chunks
                    close()
                ids.append(token)
                weights.append(weight)
                continue
            if token == comma_id:
                last_comma = len(ids)
            elif backtrack and _slots(ids) == size and last_comma != -1 and len(ids) - last_comma <= backtrack:
                cut = last_comma + 1
                moved = ids[cut:], weights[cut:]
                ids, weights = ids[:cut], weights[:cut]
                close()
                ids, weights = list(moved[0]), list(moved[1])
            if _slots(ids) >= size:
                close()
            ids.append(token)
            weights.append(weight)
    if ids or not chunks:
        close()
    return chunks


def _slots(items: list) -> int:
    """Token slots a chunk's items take (an embedding takes one per vector)."""
    return sum(ti.slots(i) for i in items)


def prompt_chunks(tokenizer: ClipTokenizer, text: str, *, backtrack: int = 20, use_weights: bool = True,
                  embeddings: EmbeddingDatabase | None = None) -> list[Chunk]:  # fmt: skip
    """The 77-id chunks of a prompt with their emphasis multipliers (and embeddings' vectors)."""
    pieces: list = []
    for fragment, weight in parse_weighted(text):
        if (fragment, weight) == BREAK:
            pieces.append(BREAK)
        else:
            ids = tokenizer.encode(fragment)
            pieces.append((embeddings.expand(ids) if embeddings else ids, weight if use_weights else 1.0))
    comma_id = tokenizer.encode(",")[0]
    out = []
    for items, item_weights in split_chunks(pieces, comma_id, backtrack, size=tokenizer.context_length - 2):
        ids, fixes = ti.layout(items)
        weights = [w for item, w in zip(items, item_weights, strict=True) for _ in range(ti.slots(item))]
        padded = tokenizer.pad_chunk(ids)
        mult = [1.0, *weights] + [1.0] * (len(padded) - 1 - len(weights))
        out.append(Chunk(tuple(padded), tuple(mult), tuple((pos + 1, vec) for pos, vec in fixes)))
    return out


def used_embeddings(tokenizer: ClipTokenizer, text: str, embeddings: EmbeddingDatabase | None) -> list[Embedding]:
    """The embeddings a prompt names (for ``TI hashes``), in order."""
    if embeddings is None or not embeddings.loaded:
        return []
    found: list[Embedding] = []
    for fragment, weight in parse_weighted(text):
        if (fragment, weight) != BREAK:
            found += ti.used(embeddings.expand(tokenizer.encode(fragment)))
    return found


def encode_chunks(model, chunks: list[Chunk], *, clip_skip: int = 1, emphasis: str = "Original") -> torch.Tensor:
    """[1, 77 * len(chunks), C] context; emphasis 'Original' (mean restored), 'No norm' or 'None'."""
    ids = torch.tensor([c.ids for c in chunks], dtype=torch.long)
    if any(c.fixes for c in chunks):
        with ti.inject(model.text_encoder, [c.fixes for c in chunks]):
            z = model.encode_tokens(ids, clip_skip=clip_skip)
    else:
        z = model.encode_tokens(ids, clip_skip=clip_skip)
    weights = torch.tensor([c.weights for c in chunks], dtype=z.dtype, device=z.device)
    if emphasis != "None" and not bool((weights == 1.0).all()):
        out = []
        for zi, wi in zip(z, weights, strict=True):
            weighted = zi * wi[:, None]
            if emphasis == "Original":
                ratio = zi.mean() / weighted.mean()
                if torch.isfinite(ratio):  # a weighted mean of 0 (zero-mean embeddings) has no mean to restore
                    weighted = weighted * ratio
            out.append(weighted)
        z = torch.stack(out)
    return z.reshape(1, -1, z.shape[-1])


def pad_to_same_length(a: torch.Tensor, b: torch.Tensor, empty: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Extend the shorter context with encoded empty chunks so cond and uncond can be batched."""

    def extend(t: torch.Tensor, n: int) -> torch.Tensor:
        missing = (n - t.shape[1]) // empty.shape[1]
        return torch.cat([t, empty.expand(t.shape[0], -1, -1).repeat(1, missing, 1)], dim=1) if missing else t

    n = max(a.shape[1], b.shape[1])
    return extend(a, n), extend(b, n)


class ConditioningCache:
    """Encoded prompts per (model, prompt, clip skip, emphasis), least recently used evicted."""

    def __init__(self, size: int = 64):
        self.size = size
        self._items: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._lock = Lock()
        self.hits = 0
        self.misses = 0

    def get(self, model_key: str, model, text: str, *, clip_skip: int, emphasis: str, backtrack: int,
            embeddings: EmbeddingDatabase | None = None) -> torch.Tensor:  # fmt: skip
        """`model_key` must change with anything the encoding depends on (weights, merged networks, embeddings)."""
        key = (model_key, text, clip_skip, emphasis, backtrack)
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return hit
        chunks = prompt_chunks(model.tokenizer, text, backtrack=backtrack, use_weights=emphasis != "None",
                               embeddings=embeddings)  # fmt: skip
        value = encode_chunks(model, chunks, clip_skip=clip_skip, emphasis=emphasis)
        with self._lock:
            self.misses += 1
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
