"""A1111's prompt syntax: emphasis weights and BREAK.

* ``(text)`` multiplies attention to `text` by 1.1, ``[text]`` divides it by 1.1, nesting multiplies;
* ``(text:1.3)`` sets the factor to 1.3;
* ``\\(``, ``\\)``, ``\\[``, ``\\]``, ``\\\\`` are literal characters;
* unclosed brackets apply to the end of the prompt, stray closers are literal;
* ``BREAK`` (a separate word) starts a new 75-token chunk.

``parse_weighted(text)`` returns ``[(fragment, weight), ...]`` with equal neighbours merged and
``("BREAK", -1.0)`` markers.
"""

from __future__ import annotations

import re

ROUND = 1.1
SQUARE = 1 / 1.1
BREAK = ("BREAK", -1.0)

_TOKEN = re.compile(
    r"""
      \\[()\[\]\\]              # escaped bracket or backslash
    | \\                        # a lone backslash
    | \(                        # open round
    | \[                        # open square
    | :\s*([+-]?[.\d]+)\s*\)    # ':weight)' closes a round bracket with an explicit weight
    | \)                        # close round
    | \]                        # close square
    | [^\\()\[\]:]+             # plain text
    | :                         # a colon that is not a weight
    """,
    re.VERBOSE,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


def parse_weighted(text: str) -> list[tuple[str, float]]:
    """Split a prompt into (fragment, weight) runs; BREAK markers are ``("BREAK", -1.0)``."""
    parts: list[list] = []  # [text, weight]
    rounds: list[int] = []
    squares: list[int] = []

    def scale_from(start: int, factor: float) -> None:
        for part in parts[start:]:
            part[1] *= factor

    for m in _TOKEN.finditer(text):
        token, weight = m.group(0), m.group(1)
        if token.startswith("\\"):
            parts.append([token[1:], 1.0])  # an escaped character; a lone backslash is dropped, as A1111
        elif token == "(":
            rounds.append(len(parts))
        elif token == "[":
            squares.append(len(parts))
        elif weight is not None and rounds:
            scale_from(rounds.pop(), _parse_float(weight))
        elif token == ")" and rounds:
            scale_from(rounds.pop(), ROUND)
        elif token == "]" and squares:
            scale_from(squares.pop(), SQUARE)
        else:
            for i, piece in enumerate(_BREAK.split(token)):
                if i:
                    parts.append(list(BREAK))
                parts.append([piece, 1.0])
    for start in rounds:
        scale_from(start, ROUND)
    for start in squares:
        scale_from(start, SQUARE)
    return _merge(parts) or [("", 1.0)]


def _parse_float(s: str) -> float:
    try:
        return float(s)
    except ValueError:
        return 1.0


def _merge(parts: list[list]) -> list[tuple[str, float]]:
    out: list[list] = []
    for text, weight in parts:
        if out and out[-1][1] == weight and weight != BREAK[1]:
            out[-1][0] += text
        else:
            out.append([text, weight])
    return [(t, w) for t, w in out]
