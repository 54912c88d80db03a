"""The Service's collaborator for what A1111 users bring: LoRA, embeddings, VAE files, styles.

``ExtraNetworkService`` answers the listings (``/sdapi/v1/loras``, ``embeddings``, ``sd-vae``,
``prompt-styles``), the refreshes, the checks made before a request is queued (an unknown VAE
choice, a malformed ``<lora:...>`` tag) and the cards of the UI's Extra Networks panel (name,
preview image beside the file, trigger text, the text a click inserts).  ``create_extra`` builds
the registries over the folders of the command line (the composition root calls it).
"""

from __future__ import annotations

import base64
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modules.core import extra_networks as tags
from modules.core.errors import ValidationError
from modules.core.request import GenerationRequest
from modules.core.settings import Settings
from modules.core.styles import StyleDatabase
from modules.models.extra_networks import ExtraNetworks
from modules.models.vae_files import AUTOMATIC, NONE

log = logging.getLogger(__name__)

PREVIEW_SUFFIXES = (".png", ".preview.png", ".jpg", ".jpeg", ".webp", ".preview.jpg", ".preview.webp")
THUMBNAIL = 256  # px, the longer side of a card's preview


def create_extra(data_dir: Path, *, lora_dir: Path | None, embeddings_dir: Path | None, vae_dir: Path | None,
                 checkpoint_dirs: list[Path], allow_unsafe: bool) -> ExtraNetworks:  # fmt: skip
    """The LoRA, embedding and VAE registries over the data folder's folders and the flags' extra ones."""

    def folders(default: Path, extra: Path | None) -> list[Path]:
        return [default, Path(extra)] if extra else [default]

    return ExtraNetworks.create(
        lora_dirs=folders(data_dir / "models" / "Lora", lora_dir),
        embedding_dirs=folders(data_dir / "embeddings", embeddings_dir),
        vae_dirs=folders(data_dir / "models" / "VAE", vae_dir),
        checkpoint_dirs=checkpoint_dirs,
        allow_unsafe=allow_unsafe,
    )


@dataclass(frozen=True)
class Card:
    """One card of the Extra Networks panel."""

    kind: str  # "lora" | "embedding" | "checkpoint"
    name: str
    insert: str  # the text a click puts into the prompt (a checkpoint's: its title, which selects it)
    description: str = ""  # trigger words / what the file is
    preview: str | None = None  # a data: URL of the thumbnail beside the file, if there is one
    path: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "insert": self.insert, "description": self.description,
                "preview": self.preview, "path": self.path}  # fmt: skip


@dataclass
class ExtraNetworkService:
    extra: ExtraNetworks | None
    styles: StyleDatabase | None
    models: Any  # the ModelManager (for the current model's text encoder)
    checkpoints: Any = None  # the CheckpointRegistry (its cards)
    _previews: dict[tuple, str | None] = field(default_factory=dict)

    # --- listings (A1111's shapes) -----------------------------------------------------------------
    def loras(self) -> list[dict[str, Any]]:
        return self.extra.lora_registry.api_list() if self.extra else []

    def refresh_loras(self) -> list[dict[str, Any]]:
        if self.extra:
            self.extra.lora_registry.refresh()
        return self.loras()

    def vae_files(self) -> list[dict[str, str]]:
        """``/sdapi/v1/sd-vae``: ``{model_name: file name, filename: full path}`` per VAE file."""
        files = self.extra.vae_registry.list() if self.extra else []
        return [{"model_name": v.name, "filename": str(v.path)} for v in files]

    def refresh_vae(self) -> list[dict[str, str]]:
        if self.extra:
            self.extra.vae_registry.refresh()
        return self.vae_files()

    def vae_choices(self) -> list[str]:
        return self.extra.vae_registry.choices() if self.extra else [AUTOMATIC, NONE]

    def embeddings(self, *, force: bool = False) -> dict[str, dict[str, Any]]:
        """``{loaded, skipped}`` for the current model's text encoder (empty without a model)."""
        if self.extra is None:
            return {"loaded": {}, "skipped": {}}
        current = self.models.current
        if current is not None:
            model = current.model
            width = int(model.text_encoder.get_input_embeddings().weight.shape[-1])
            self.extra.embeddings.refresh(model.tokenizer, width, force=force)
        return self.extra.embeddings.listing()

    def refresh_embeddings(self) -> dict[str, dict[str, Any]]:
        return self.embeddings(force=True)

    def prompt_styles(self) -> list[dict[str, str]]:
        return self.styles.listing() if self.styles else []

    def style_names(self) -> list[str]:
        return self.styles.names() if self.styles else []

    def apply_styles(self, prompt: str, negative_prompt: str, names: list[str]) -> tuple[str, str]:
        """The UI's "apply styles to prompt" button (unknown names are left out)."""
        if not self.styles:
            return prompt, negative_prompt
        prompt, negative_prompt, _missing = self.styles.apply(prompt, negative_prompt, list(names or []))
        return prompt, negative_prompt

    # --- before queueing ---------------------------------------------------------------------------
    def check(self, request: GenerationRequest, settings: Settings) -> None:
        """Malformed ``<lora:...>`` tags (422) and an unknown VAE choice (404), before the request is queued."""
        tags.prompt_networks(request.prompt, request.negative_prompt)
        self._check_vae((request.override_settings or {}).get("sd_vae"), "override_settings.sd_vae")

    def check_settings(self, values: dict[str, Any]) -> None:
        """A new ``sd_vae`` setting must name a choice there is (404 otherwise)."""
        self._check_vae(values.get("sd_vae"), "sd_vae")

    def _check_vae(self, choice: Any, field: str) -> None:
        if choice is None:
            return
        if not isinstance(choice, str):
            raise ValidationError(field, f"expected a VAE name, got {choice!r}")
        if choice in (AUTOMATIC, NONE, "auto", ""):
            return
        if self.extra is None:
            raise ValidationError(field, "no VAE folder here: only Automatic or None")
        self.extra.vae_registry.resolve(choice, None)

    # --- the Extra Networks panel ------------------------------------------------------------------
    def cards(self, kind: str, search: str = "") -> list[dict[str, Any]]:
        """The cards of one tab (``lora``, ``embedding``, ``checkpoint``) whose name or text holds `search`."""
        make = {"lora": self._lora_cards, "embedding": self._embedding_cards, "checkpoint": self._checkpoint_cards}
        if kind not in make:
            raise ValidationError("kind", f"{kind!r} is not one of {', '.join(make)}")
        needle = search.strip().lower()
        return [c.as_dict() for c in make[kind]() if needle in f"{c.name} {c.description}".lower()]

    def refresh_cards(self) -> None:
        self.refresh_loras()
        self.refresh_embeddings()
        if self.checkpoints is not None:
            self.checkpoints.refresh()
        self._previews.clear()

    def _lora_cards(self) -> list[Card]:
        if self.extra is None:
            return []
        return [Card("lora", n.name, tags.lora_tag(n.name), _trigger_text(n.path, n.metadata), self._preview(n.path),
                     str(n.path)) for n in self.extra.lora_registry.list()]  # fmt: skip

    def _embedding_cards(self) -> list[Card]:
        listing = self.embeddings()
        out = []
        for name, info in listing["loaded"].items():
            emb = self.extra.embeddings.loaded.get(name)
            path = emb.path if emb else None
            text = f"{info['vectors']} vector(s)" + (f", {info['step']} steps" if info.get("step") else "")
            out.append(Card("embedding", name, name, text, self._preview(path) if path else None, str(path or "")))
        return out

    def _checkpoint_cards(self) -> list[Card]:
        if self.checkpoints is None:
            return []
        return [Card("checkpoint", i.model_name, i.title, i.title, self._preview(Path(i.filename)), i.filename)
                for i in self.checkpoints.list()]  # fmt: skip

    def _preview(self, path: Path) -> str | None:
        """``<name>.png`` / ``<name>.preview.png`` (or .jpg / .webp) beside the file, as a small data: URL."""
        stem = path.with_suffix("")
        for suffix in PREVIEW_SUFFIXES:
            candidate = stem.with_name(stem.name + suffix)
            if candidate.is_file():
                st = candidate.stat()
                key = (str(candidate), st.st_mtime_ns, st.st_size)
                if key not in self._previews:
                    self._previews[key] = _thumbnail(candidate)
                return self._previews[key]
        return None


def _thumbnail(path: Path) -> str | None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.thumbnail((THUMBNAIL, THUMBNAIL))
            buf = io.BytesIO()
            im.convert("RGB").save(buf, format="PNG")
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as e:
        log.warning("preview %s not shown: %s", path.name, e)
        return None
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _trigger_text(path: Path, metadata: dict[str, Any]) -> str:
    """A1111's "activation text" from ``<name>.json`` beside the file, else the most frequent training tags."""
    user = path.with_suffix(".json")
    if user.is_file():
        try:
            data = json.loads(user.read_text("utf-8"))
            if isinstance(data, dict) and isinstance(data.get("activation text"), str):
                return data["activation text"]
        except (OSError, ValueError):
            pass
    freq = metadata.get("ss_tag_frequency")
    if isinstance(freq, dict):
        counts: dict[str, int] = {}
        for group in freq.values():
            if isinstance(group, dict):
                for tag, n in group.items():
                    counts[tag] = counts.get(tag, 0) + (n if isinstance(n, int) else 0)
        return ", ".join(sorted(counts, key=lambda t: -counts[t])[:5])
    return ""


class ExtraNetworksMixin:
    """The Service's A1111 listings of LoRA, embeddings, VAE files and styles (``self.extra_networks`` answers)."""

    extra_networks: ExtraNetworkService

    def vae_files(self) -> list[dict[str, str]]:
        """``/sdapi/v1/sd-vae``: ``{model_name, filename}`` per file in models/VAE (and ``*.vae.*`` beside checkpoints)."""
        return self.extra_networks.vae_files()

    def prompt_styles(self) -> list[dict[str, str]]:
        """``/sdapi/v1/prompt-styles``: ``{name, prompt, negative_prompt}`` per row of styles.csv."""
        return self.extra_networks.prompt_styles()

    def embeddings(self) -> dict[str, dict[str, Any]]:
        """``/sdapi/v1/embeddings``: ``{loaded, skipped}`` by embedding name, for the current model's text encoder."""
        return self.extra_networks.embeddings()

    def loras(self) -> list[dict[str, Any]]:
        """``/sdapi/v1/loras``: ``{name, alias, path, metadata}`` per LoRA file."""
        return self.extra_networks.loras()
