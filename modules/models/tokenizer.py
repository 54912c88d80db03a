"""CLIP BPE tokenizers for the two text encoders, from the vocabulary shipped in configs/tokenizer.

* ``open_clip`` (SD2, OpenCLIP ViT-H/14): tokenizes exactly as open_clip's ``SimpleTokenizer``
  does: ftfy + double HTML unescape + whitespace collapse + lower case, open_clip's
  pre-tokenisation regex (its own ``<start_of_text>``/``<end_of_text>`` specials included), BPE,
  then ``<start> ... <end>`` truncated to the context length (end token kept last) and padded
  with id 0.  A ``!`` stays a ``!`` (a ``CLIPTokenizer`` with ``pad_token="!"`` would turn it
  into id 0, the padding id).
* ``clip`` (SD1, OpenAI CLIP ViT-L/14): as transformers' ``CLIPTokenizer`` does for
  ``openai/clip-vit-large-patch14`` (padding with the end token), after the ftfy clean-up the
  original slow tokenizer applied.

The BPE itself is transformers' (``tokenizers``) model built from the shipped files.
"""

from __future__ import annotations

import html
from functools import lru_cache
from pathlib import Path
from typing import Literal

import ftfy
import regex
import torch
from transformers import CLIPTokenizer

TOKENIZER_DIR = Path(__file__).resolve().parents[2] / "configs" / "tokenizer"
CONTEXT_LENGTH = 77

_OPEN_CLIP_SPECIALS = {"<start_of_text>": 49406, "<end_of_text>": 49407}
_OPEN_CLIP_PATTERN = regex.compile(
    r"<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
    regex.IGNORECASE,
)
_WHITESPACE = regex.compile(r"\s+")

Flavour = Literal["open_clip", "clip"]


@lru_cache(maxsize=1)
def _byte_encoder() -> dict[int, str]:
    """GPT-2/CLIP table mapping each byte to a printable unicode symbol."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return dict(zip(bs, map(chr, cs), strict=True))


@lru_cache(maxsize=1)
def _hf_tokenizer() -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR))


def open_clip_clean(text: str) -> str:
    """open_clip's 'lower' cleaning: ftfy, HTML unescape twice, collapse whitespace, lower case."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return _WHITESPACE.sub(" ", text).strip().lower()


def clip_clean(text: str) -> str:
    """The original CLIPTokenizer's cleaning (ftfy available): ftfy, collapse whitespace, lower case."""
    return _WHITESPACE.sub(" ", ftfy.fix_text(text)).strip().lower()


class ClipTokenizer:
    """Prompt text -> CLIP token ids, as the original LDM text encoders tokenize."""

    def __init__(self, flavour: Flavour, context_length: int = CONTEXT_LENGTH):
        if flavour not in ("open_clip", "clip"):
            raise ValueError(f"unknown tokenizer flavour {flavour!r}")
        self.flavour = flavour
        self.context_length = context_length
        self._hf = _hf_tokenizer()
        self.bos_id = self._hf.bos_token_id
        self.eos_id = self._hf.eos_token_id
        self.pad_id = 0 if flavour == "open_clip" else self.eos_id
        self._bpe_cache: dict[str, list[int]] = {}

    def _bpe(self, piece: str) -> list[int]:
        ids = self._bpe_cache.get(piece)
        if ids is None:
            symbols = "".join(_byte_encoder()[b] for b in piece.encode("utf-8"))
            ids = [t.id for t in self._hf.backend_tokenizer.model.tokenize(symbols)]
            if len(self._bpe_cache) < 100_000:
                self._bpe_cache[piece] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without start/end tokens and without truncation."""
        if self.flavour == "clip":
            return self._hf.encode(clip_clean(text), add_special_tokens=False)
        ids: list[int] = []
        for piece in _OPEN_CLIP_PATTERN.findall(open_clip_clean(text)):
            special = _OPEN_CLIP_SPECIALS.get(piece)
            ids.extend([special] if special is not None else self._bpe(piece))
        return ids

    def pad_chunk(self, ids: list[int]) -> list[int]:
        """<start> + ids + <end>, truncated to the context length (end kept last) and padded."""
        tokens = [self.bos_id, *ids, self.eos_id]
        if len(tokens) > self.context_length:
            tokens = tokens[: self.context_length]
            tokens[-1] = self.eos_id
        return tokens + [self.pad_id] * (self.context_length - len(tokens))

    def __call__(self, texts: list[str]) -> torch.LongTensor:
        """[B, context_length] token ids, exactly as the LDM text encoders build them."""
        return torch.tensor([self.pad_chunk(self.encode(t)) for t in texts], dtype=torch.long)
