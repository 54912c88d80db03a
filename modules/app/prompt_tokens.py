"""A1111's token counter ("12/75"): the prompt's tokens with our tokenizer, the limit in chunks of 75.

The loaded model's tokenizer when there is one (SD1's CLIP or SD2's OpenCLIP), else SD2's.  Chunks wrap as
the conditioning wraps them (commas within the backtrack, BREAK), so the limit is what generation uses.
"""

from __future__ import annotations

from functools import lru_cache

from modules.core.prompt_parser import BREAK, parse_weighted
from modules.generation.conditioning import CHUNK, split_chunks
from modules.models.tokenizer import ClipTokenizer

MAX_PROMPT_CHARS = 20_000  # the counter of a pasted novel counts its start


@lru_cache(maxsize=1)
def sd2_tokenizer() -> ClipTokenizer:
    return ClipTokenizer("open_clip")


def count_tokens(text: str, tokenizer: ClipTokenizer | None = None, backtrack: int = 20) -> tuple[int, int]:
    """(tokens, limit): the limit is 75 per chunk the prompt takes (at least one chunk)."""
    tok = tokenizer or sd2_tokenizer()
    pieces: list = []
    for fragment, weight in parse_weighted((text or "")[:MAX_PROMPT_CHARS]):
        pieces.append(BREAK if (fragment, weight) == BREAK else (tok.encode(fragment), weight))
    chunks = split_chunks(pieces, tok.encode(",")[0], backtrack, size=CHUNK)
    tokens = sum(len(ids) for ids, _ in chunks)
    return tokens, max(1, len(chunks)) * CHUNK
