"""Labelled grids: column labels on top, row labels on the left, one panel per Z value, side by side.

Fonts: Pillow's bundled scalable default font, so labels render the same on a bare machine.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PAD = 4
BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)


@lru_cache(maxsize=16)
def font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def font_size(cell_w: int, cell_h: int) -> int:
    """A1111's rule of thumb ((w + h) / 25), at least 12 px so tiny cells stay readable."""
    return max(12, (cell_w + cell_h) // 25)


def wrap(text: str, fnt: ImageFont.FreeTypeFont, width: int) -> list[str]:
    """Greedy word wrap to `width` pixels; a word wider than that (a checkpoint title) is broken."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in (piece for w in paragraph.split(" ") for piece in _pieces(w, fnt, width)):
            candidate = f"{line} {word}".strip()
            if line and fnt.getlength(candidate) > width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return lines


def _pieces(word: str, fnt: ImageFont.FreeTypeFont, width: int) -> list[str]:
    """`word` cut into runs of characters that each fit `width` (at least one character per run)."""
    pieces, run = [], ""
    for ch in word:
        if run and fnt.getlength(run + ch) > width:
            pieces.append(run)
            run = ""
        run += ch
    return pieces + [run] if run or not pieces else pieces


def fitting_size(labels: list[str], width: int, height: int, size: int, smallest: int = 8) -> int:
    """The font size, `size` at most, at which every label's wrapped lines fit in width x height."""
    while size > smallest:
        fnt = font(size)
        if all(len(wrap(t, fnt, width - 2 * PAD)) * line_height(fnt) + 2 * PAD <= height for t in labels):
            break
        size -= 1
    return size


def line_height(fnt: ImageFont.FreeTypeFont) -> int:
    ascent, descent = fnt.getmetrics()
    return ascent + descent


def render_label(text: str, width: int, height: int, size: int) -> np.ndarray:
    """A label box: `text` wrapped and centred in width x height, black on white."""
    fnt = font(size)
    img = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(img)
    lines = wrap(text, fnt, width - 2 * PAD)
    lh = line_height(fnt)
    top = (height - lh * len(lines)) // 2
    for i, line in enumerate(lines):
        draw.text(((width - fnt.getlength(line)) / 2, top + i * lh), line, font=fnt, fill=INK)
    return np.asarray(img)


def band_height(labels: list[str], width: int, size: int) -> int:
    fnt = font(size)
    if not any(labels):
        return 0
    return max(len(wrap(t, fnt, width - 2 * PAD)) for t in labels) * line_height(fnt) + 2 * PAD


def band_width(labels: list[str], cell_w: int, size: int) -> int:
    fnt = font(size)
    if not any(labels):
        return 0
    widest = max(fnt.getlength(word) for t in labels for word in t.split(" ") if word)
    return int(min(max(widest + 2 * PAD, cell_w // 2), cell_w * 1.5))


def layout(x_labels: list[str], y_labels: list[str], w: int, h: int) -> tuple[int, int, int]:
    """(font size, top band height, left band width) for w x h cells: labels wrapped, and the font made
    smaller until every column label fits in half a cell's height and every row label in a cell's."""
    size = font_size(w, h)
    left = band_width(y_labels, w, size)
    size = min(fitting_size(x_labels, w, h // 2, size), fitting_size(y_labels, left or w, h, size))
    return size, band_height(x_labels, w, size), left


def draw_grid(cells: list[list[np.ndarray]], x_labels: list[str], y_labels: list[str]) -> np.ndarray:
    """cells[row][col] (equal sizes) with column labels above and row labels to the left."""
    h, w = cells[0][0].shape[:2]
    size, top, left = layout(x_labels, y_labels, w, h)
    rows, cols = len(cells), len(cells[0])
    out = np.full((top + rows * h, left + cols * w, 3), 255, np.uint8)
    for c, text in enumerate(x_labels if top else []):
        out[:top, left + c * w : left + (c + 1) * w] = render_label(text, w, top, size)
    for r, text in enumerate(y_labels if left else []):
        out[top + r * h : top + (r + 1) * h, :left] = render_label(text, left, h, size)
    for r, row in enumerate(cells):
        for c, cell in enumerate(row):
            out[top + r * h : top + (r + 1) * h, left + c * w : left + (c + 1) * w] = cell
    return out


def join_panels(panels: list[np.ndarray], titles: list[str], cell_w: int, cell_h: int) -> np.ndarray:
    """Z panels side by side, each titled; a single untitled panel is returned as it is."""
    if len(panels) == 1 and not titles[0]:
        return panels[0]
    size = font_size(cell_w, cell_h)
    width = max(p.shape[1] for p in panels)
    title_h = band_height(titles, width, size)
    height = max(p.shape[0] for p in panels) + title_h
    out = np.full((height, sum(p.shape[1] for p in panels) + PAD * (len(panels) - 1), 3), 255, np.uint8)
    x = 0
    for panel, title in zip(panels, titles, strict=True):
        pw = panel.shape[1]
        if title_h:
            out[:title_h, x : x + pw] = render_label(title, pw, title_h, size)
        out[title_h : title_h + panel.shape[0], x : x + pw] = panel
        x += pw + PAD
    return out
