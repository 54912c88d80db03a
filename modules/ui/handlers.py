"""What the UI's buttons do, through the ``Service`` only (no torch, no models here).

``UiHandlers`` is created by ``build_ui`` with the Service; its methods are the Gradio event
handlers (plain values in, plain values or ``gr.update`` out), so they can be called in tests.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import gradio as gr

from modules.errors import UserError
from modules.request import GenerationResult
from modules.service import Service
from modules.settings import Settings
from modules.ui import convert, render
from modules.ui.outputs import OutputStore, ShownResult

log = logging.getLogger(__name__)

POLL_SECONDS = 0.25


def in_background(fn: Callable[..., Any], *args: Any) -> Future:
    """Run `fn(*args)` on a daemon thread (it only waits for the job worker; it never blocks shutdown)."""
    future: Future = Future()

    def target() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn(*args))
        except Exception as e:  # handed to the waiting handler, which shows it
            future.set_exception(e)

    threading.Thread(target=target, name="ui-generate", daemon=True).start()
    return future


class UiHandlers:
    """Event handlers bound to one Service and one output folder."""

    def __init__(self, service: Service, store: OutputStore, *, poll_seconds: float = POLL_SECONDS):
        self.service = service
        self.store = store
        self.poll_seconds = poll_seconds

    # --- checkpoints ----------------------------------------------------------------------------
    def model_folder(self) -> Path:
        folders = self.service.registry.folders
        return folders[0] if folders else Path("models/Stable-diffusion")

    def checkpoint_dropdown(self) -> dict[str, Any]:
        titles = [info.title for info in self.service.checkpoints()]
        current = self.service.current_checkpoint()
        value = current.title if current is not None and current.title in titles else None
        return gr.update(choices=titles, value=value)

    def checkpoint_status(self) -> str:
        current = self.service.current_checkpoint()
        error = self.service.models.last_error
        if error:
            return render.status_html(f"Could not load {error}", "error")
        if current is not None:
            return render.status_html(f"Loaded {current.title}")
        if self.service.checkpoints():
            return render.status_html("No checkpoint loaded yet: pick one (or press Generate to load the first).")
        return ""

    def notice(self) -> dict[str, Any]:
        empty = not self.service.checkpoints()
        return gr.update(value=render.no_checkpoint_html(self.model_folder()) if empty else "", visible=empty)

    def top_bar(self) -> tuple[dict[str, Any], str, dict[str, Any]]:
        """Dropdown, status and notice as the service has them now (page load)."""
        return self.checkpoint_dropdown(), self.checkpoint_status(), self.notice()

    def refresh_checkpoints(self) -> tuple[dict[str, Any], str, dict[str, Any]]:
        """🔄: rescan the model folders."""
        try:
            found = self.service.refresh_checkpoints()
        except Exception as e:  # an unreadable folder or file: say so, keep the old list
            log.exception("refreshing checkpoints failed")
            return gr.skip(), render.status_html(f"Refresh failed: {e}", "error"), gr.skip()
        status = render.status_html(f"Found {len(found)} checkpoint{'s' if len(found) != 1 else ''}.")
        return self.checkpoint_dropdown(), status, self.notice()

    def select_checkpoint(self, title: str | None) -> Iterator[tuple[dict[str, Any], str]]:
        """Load the picked checkpoint, showing "Loading…" then the time taken or the error."""
        if not title:
            yield gr.skip(), self.checkpoint_status()
            return
        yield gr.skip(), render.status_html(f"Loading {title}…", "busy")
        in_memory = title in self.service.models.loaded_titles()
        started = time.perf_counter()
        try:
            loaded = self.service.select_checkpoint(title)
        except UserError as e:
            yield self.checkpoint_dropdown(), render.status_html(f"Could not load {title}: {e}", "error")
            return
        except Exception as e:  # a bug or an I/O error while loading: shown, and logged with its traceback
            log.exception("loading %s failed", title)
            yield self.checkpoint_dropdown(), render.status_html(f"Could not load {title}: {e}", "error")
            return
        seconds = time.perf_counter() - started
        done = "Switched to" if in_memory else "Loaded"
        yield gr.update(value=loaded.info.title), render.status_html(f"{done} {loaded.info.title} in {seconds:.1f}s")

    # --- generation -----------------------------------------------------------------------------
    def generate(self, mode: str, values: dict[str, Any]) -> Iterator[tuple]:
        """Generate; yields (gallery, depth image, info, progress, shown result, selected index) as it goes."""
        try:
            request = convert.build_request(mode, values)
        except UserError as e:
            yield gr.skip(), gr.skip(), render.error_html(str(e)), "", gr.skip(), gr.skip()
            return
        future: Future[GenerationResult] = in_background(self.service.generate, request)
        yield gr.skip(), None, "", render.progress_html(self.service.progress()), gr.skip(), gr.skip()
        preview_id = -1
        while True:
            try:
                result = future.result(timeout=self.poll_seconds)
                break
            except TimeoutError:
                progress = self.service.progress()
                gallery, preview_id = self._preview(progress, preview_id)
                yield gallery, gr.skip(), gr.skip(), render.progress_html(progress), gr.skip(), gr.skip()
            except UserError as e:
                yield None, None, render.error_html(str(e)), "", ShownResult().to_dict(), 0
                return
            except Exception as e:  # a bug: the user sees it, the log has the traceback
                log.exception("generation failed")
                yield None, None, render.error_html(f"{type(e).__name__}: {e}"), "", ShownResult().to_dict(), 0
                return
        yield self._final(result)

    def _preview(self, progress: dict[str, Any], last_id: int) -> tuple[Any, int]:
        """The live preview for the gallery when a new one is there (and previews are on)."""
        image = progress.get("current_image")
        new_id = progress.get("preview_id", -1)
        if image is None or new_id == last_id or not self.service.settings.live_previews_enable:
            return gr.skip(), last_id
        return [image], new_id

    def _final(self, result: GenerationResult) -> tuple:
        shown = self.store.save_result(result)
        depth_image = shown.depth_maps[0] if shown.depth_maps else None
        return shown.images, depth_image, render.info_html(result), "", shown.to_dict(), 0

    def interrupt(self) -> None:
        self.service.interrupt()

    def skip(self) -> None:
        self.service.skip()

    @staticmethod
    def select_image(shown: dict[str, Any] | None, index: int | None) -> tuple[Any, Any]:
        """Gallery selection: the depth map and infotext of that image."""
        result = ShownResult.from_dict(shown)
        if index is None or not result.images or index >= len(result.images):
            return gr.skip(), gr.skip()
        depth_image = result.depth_maps[index] if index < len(result.depth_maps) else gr.skip()
        info = render.info_from_text(result.infotexts[index]) if index < len(result.infotexts) else gr.skip()
        return depth_image, info

    @staticmethod
    def last_seed(shown: dict[str, Any] | None, index: int | None, which: str = "seeds") -> Any:
        """♻: the seed (or variation seed) of the selected image of the last result."""
        values = (shown or {}).get(which) or []
        if not values:
            return gr.skip()
        return values[index if index is not None and index < len(values) else 0]

    # --- PNG Info -------------------------------------------------------------------------------
    def png_info(self, path: str | None) -> tuple[str, str]:
        """(HTML, raw parameters text) of an uploaded image."""
        data = convert.file_bytes(path)
        if data is None:
            return "", ""
        try:
            text, params = self.service.png_info(data)
        except UserError as e:
            return render.error_html(str(e)), ""
        return render.png_info_html(text, params), text

    # --- settings -------------------------------------------------------------------------------
    def apply_settings(self, values: dict[str, Any]) -> str:
        """Apply the changed settings (validated, saved to the JSON file); say what changed or what is wrong."""
        current = self.service.settings.to_dict()
        changed = {k: v for k, v in values.items() if k in current and v != current[k]}
        if not changed:
            return render.status_html("Nothing changed.")
        try:
            self.service.update_settings(changed)
        except UserError as e:
            return render.status_html(str(e), "error")
        names = ", ".join(sorted(changed))
        return render.status_html(f"Saved {len(changed)} setting{'s' if len(changed) != 1 else ''}: {names}.")

    def settings_now(self) -> Settings:
        return self.service.settings
