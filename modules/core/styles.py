"""Prompt styles as A1111 keeps them: ``styles.csv`` with ``name,prompt,negative_prompt``.

A style's prompt holding ``{prompt}`` has the user's prompt put in its place; otherwise the style is
appended after a comma (A1111's ``merge_prompts``).  Several styles apply one after the other in the
order chosen.  The file is read again whenever it changes on disk; rows whose name is empty or starts
with ``#`` are skipped (A1111 too).
"""

from __future__ import annotations

import csv
import io
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PLACEHOLDER = "{prompt}"


@dataclass(frozen=True)
class PromptStyle:
    name: str
    prompt: str = ""
    negative_prompt: str = ""

    def api_json(self) -> dict[str, str]:
        """One entry of ``GET /sdapi/v1/prompt-styles``."""
        return {"name": self.name, "prompt": self.prompt, "negative_prompt": self.negative_prompt}


def merge_prompts(style_prompt: str, prompt: str) -> str:
    """A1111's ``merge_prompts``: the prompt at ``{prompt}``, else both joined with ``, `` (empty parts left out)."""
    if PLACEHOLDER in style_prompt:
        return style_prompt.replace(PLACEHOLDER, prompt)
    return ", ".join(p for p in (prompt.strip(), style_prompt.strip()) if p)


def parse_csv(text: str) -> list[PromptStyle]:
    """The styles of a styles.csv text (A1111's columns; old files name the prompt column ``text``)."""
    out: list[PromptStyle] = []
    for row in csv.DictReader(io.StringIO(text), skipinitialspace=True):
        name = (row.get("name") or "").strip()
        if not name or name.startswith("#"):
            continue
        prompt = row.get("prompt") if row.get("prompt") is not None else row.get("text") or ""
        out.append(PromptStyle(name, prompt or "", row.get("negative_prompt") or ""))
    return out


class StyleDatabase:
    """The styles of one styles.csv, read again when the file changes."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._stamp: tuple[int, int] | None = None
        self._styles: dict[str, PromptStyle] = {}
        self._lock = threading.Lock()

    def styles(self) -> dict[str, PromptStyle]:
        with self._lock:
            stamp = self._file_stamp()
            if stamp != self._stamp:
                self._styles = self._read() if stamp else {}
                self._stamp = stamp
            return dict(self._styles)

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def _read(self) -> dict[str, PromptStyle]:
        try:
            text = self.path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as e:
            log.warning("could not read the styles file %s: %s", self.path, e)
            return {}
        try:
            found = parse_csv(text)
        except csv.Error as e:
            log.warning("%s is not a CSV file A1111 would read: %s", self.path, e)
            return {}
        return {s.name: s for s in found}  # a later row of the same name wins, as in A1111's dict

    def names(self) -> list[str]:
        return list(self.styles())

    def listing(self) -> list[dict[str, str]]:
        return [s.api_json() for s in self.styles().values()]

    def apply(self, prompt: str, negative_prompt: str, names: list[str]) -> tuple[str, str, list[str]]:
        """(prompt, negative prompt) with the named styles applied in order, and the names not found."""
        styles = self.styles()
        missing = [n for n in names if n not in styles]
        for name in names:
            if name in styles:
                prompt = merge_prompts(styles[name].prompt, prompt)
                negative_prompt = merge_prompts(styles[name].negative_prompt, negative_prompt)
        return prompt, negative_prompt, missing
