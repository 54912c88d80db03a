"""Tokenization: exactly open_clip's for SD2, transformers' CLIP for SD1."""

from __future__ import annotations

import random

import pytest

from modules.models.tokenizer import ClipTokenizer
from tests.helpers import oracle

TRICKY = [
    "a photo of a cat",
    "wow!",
    "!!",
    "!!!!!! hello!",
    "a &amp; b &lt;tag&gt; &amp;amp;",
    "<|startoftext|> x <|endoftext|>",
    "<start_of_text>abc",
    "!<start_of_text>",
    "  multiple   spaces\tand\nnewlines ",
    "CAPS Mixed",
    "émoji 🐈‍⬛ 日本語 テスト",
    "(masterpiece:1.2), [bad], {curly}",
    "don't you'll we've I'm",
    "123,456.789",
    "a" * 300,
    "mojibake: Ã©",
    "hello world " * 40,
    "",
]


def _corpus(n: int = 300) -> list[str]:
    rng = random.Random(0)
    alphabet = "abc XYZ!?.,;:'\"()[]{}<>|&;#0123456789éü日本🐈\t\n-_/\\@$%^*+=~`"
    return TRICKY + ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60))) for _ in range(n)]


def test_sd2_tokenizer_matches_open_clip():
    tokenize = oracle.open_clip_tokenizer()
    if tokenize is None:
        pytest.skip("open_clip_torch wheel could not be downloaded")
    ours = ClipTokenizer("open_clip")
    prompts = _corpus()
    mismatched = [p for p in prompts if ours([p])[0].tolist() != tokenize([p])[0].tolist()]
    assert mismatched == []


def test_exclamation_marks_stay_exclamation_marks():
    tok = ClipTokenizer("open_clip")
    # "!" is byte symbol 0; a pad_token="!" tokenizer would turn literal ones into the padding id 0
    assert tok.encode("!") == [256]
    assert 0 not in tok.encode("wow!! !") and 0 not in tok(["wow!"])[0].tolist()[:4]


def test_truncation_keeps_end_token_last():
    for flavour in ("open_clip", "clip"):
        tok = ClipTokenizer(flavour)
        row = tok(["word " * 200])[0].tolist()
        assert len(row) == 77 and row[0] == 49406 and row[-1] == 49407


def test_sd1_uses_transformers_clip_behaviour():
    tok = ClipTokenizer("clip")
    row = tok(["A  Cat"])[0].tolist()
    assert row[:4] == [49406, 320, 2368, 49407] and row[4:] == [49407] * 73
