"""What the UI's buttons do, through the ``Service`` only (no torch, no models here).

``UiHandlers`` is created by ``build_ui`` with the Service; its methods are the Gradio event
handlers (plain values in, plain values or ``gr.update`` out), so they can be called in tests.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import gradio as gr

from modules.app.service import Service
from modules.core.errors import UserError
from modules.core.request import GenerationResult
from modules.core.settings import Settings
from modules.frontends.batch.plan import plan_batch
from modules.frontends.batch.runner import run_folder
from modules.frontends.ui import batch, forms, render
from modules.frontends.ui.messages import failure_message, setting_message, user_message
from modules.frontends.ui.outputs import OutputStore, ShownResult
from modules.frontends.ui.safe_inputs import read_image_bytes

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


def _unique(items) -> list[Any]:
    """`items` without repeats (by identity), in order."""
    out: list[Any] = []
    for item in items:
        if all(item is not seen for seen in out):
            out.append(item)
    return out


def extensions_message(before: set[str], after: set[str], not_loaded: set[str]) -> str:
    """What a change of the disabled extensions does: disabling is immediate, loading needs a restart."""
    parts = []
    if stopped := sorted(after - before):
        parts.append(f"Disabled {', '.join(stopped)}: stopped now (controls stay on the page until a restart).")
    started = sorted(before - after)
    if later := [n for n in started if n in not_loaded]:
        parts.append(f"Enabled {', '.join(later)}: restart the web UI to load newly enabled extensions.")
    if now := [n for n in started if n not in not_loaded]:
        parts.append(f"Enabled {', '.join(now)} again: active now.")
    return " ".join(parts) or "Saved."


class UiHandlers:
    """Event handlers bound to one Service and one output folder."""

    def __init__(self, service: Service, store: OutputStore, *, poll_seconds: float = POLL_SECONDS,
                 may_raise_limits: bool = True):  # fmt: skip
        self.service = service
        self.store = store
        self.may_raise_limits = may_raise_limits  # see frontends.ui.make_handlers
        self.poll_seconds = poll_seconds
        self._batch_stop = threading.Event()  # set by Interrupt: a running batch starts no further file
        # extensions disabled when the server started were never imported: enabling them needs a restart
        self.not_loaded = {e["name"] for e in service.extension_status() if not e["enabled"]}

    # --- checkpoints ----------------------------------------------------------------------------
    def model_folder(self) -> Path:
        return self.service.checkpoint_folder

    def checkpoint_dropdown(self) -> dict[str, Any]:
        titles = [info.title for info in self.service.checkpoints()]
        current = self.service.current_checkpoint()
        value = current.title if current is not None and current.title in titles else None
        return gr.update(choices=titles, value=value)

    def checkpoint_status(self) -> str:
        current = self.service.current_checkpoint()
        error = self.service.last_error
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

    def refresh_checkpoints(self) -> Iterator[tuple[Any, str, Any]]:
        """🔄: rescan the model folders; with exactly one checkpoint and none loaded, select and load it."""
        try:
            found = self.service.refresh_checkpoints()
        except Exception as e:  # an unreadable folder or file: say so, keep the old list
            log.exception("refreshing checkpoints failed")
            yield gr.skip(), render.status_html(f"Refresh failed: {e}", "error"), gr.skip()
            return
        pending = len(self.service.unhashed_checkpoints())
        note = f" {pending} not hashed yet (each is hashed when first loaded)." if pending else ""
        status = render.status_html(f"Found {len(found)} checkpoint{'s' if len(found) != 1 else ''}.{note}")
        yield self.checkpoint_dropdown(), status, self.notice()
        if len(found) == 1 and self.service.current_checkpoint() is None:
            for dropdown, loaded in self.select_checkpoint(found[0].title):
                yield dropdown, loaded, gr.skip()

    def select_checkpoint(self, title: str | None) -> Iterator[tuple[dict[str, Any], str]]:
        """Load the picked checkpoint, showing "Loading…" then the time taken or the error."""
        if not title:
            yield gr.skip(), self.checkpoint_status()
            return
        yield gr.skip(), render.status_html(f"Loading {title}…", "busy")
        in_memory = title in self.service.loaded_titles()
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
        # the choices too: a checkpoint listed before its first load gets its [hash] in the title now
        yield self.checkpoint_dropdown(), render.status_html(f"{done} {loaded.info.title} in {seconds:.1f}s")

    # --- generation -----------------------------------------------------------------------------
    def scripts(self, *tabs: str) -> list[Any]:
        """The scripts offered in any of `tabs`, each once, in the registry's order."""
        return _unique(s for tab in tabs for s in self.service.scripts(tab))

    def ui_sections(self, *tabs: str) -> list[Any]:
        """The extension UI sections for any of `tabs` ("*" ones included), each once."""
        return _unique(s for tab in tabs for s in self.service.ui_sections(tab))

    def script_titles(self, tab: str) -> list[str]:
        """The scripts the Script dropdown offers in `tab` (txt2img, img2img, inpaint)."""
        return [script.title for script in self.service.scripts(tab)]

    def generate(self, mode: str, values: dict[str, Any]) -> Iterator[tuple]:
        """Generate; yields (gallery, depth image, info, progress, shown result, selected index) as it goes."""
        if mode == "batch":
            yield from self.generate_batch(values)
            return
        try:
            request = forms.build_request(mode, values, scripts=self.script_titles(forms.script_tab(mode)))
            self.service.check(request)
        except UserError as e:
            yield gr.skip(), gr.skip(), render.error_html(user_message(e, mode)), "", gr.skip(), gr.skip()
            return
        started = time.perf_counter()
        future: Future[GenerationResult] = self.service.submit(request)
        yield gr.skip(), None, "", render.progress_html(self.service.progress()), gr.skip(), gr.skip()
        seen: dict[str, Any] = {}
        try:
            result = yield from self._wait(future, render.progress_html, seen)
        except Exception as e:  # shown to the user in words; a bug's traceback goes to the log
            yield self._failed(failure_message(e, request.script_name, mode))
            return
        result.timings.setdefault("total", time.perf_counter() - started)
        yield self._final(result, seen.get("state"))

    def _wait(self, future: Future, progress_html: Callable[[dict[str, Any]], str],
              seen: dict[str, Any] | None = None) -> Generator[tuple, None, Any]:  # fmt: skip
        """Poll `future`, yielding the progress bar (and live previews) until it is done; returns its result.

        `seen["state"]` keeps the job's last counters (the step an interrupted job stopped at).
        When Gradio drops the generator (the browser left), the job is cancelled or interrupted."""
        preview_id = -1
        try:
            while True:
                try:
                    return future.result(timeout=self.poll_seconds)
                except TimeoutError:
                    progress = self.service.progress()
                    if seen is not None and progress.get("active"):
                        seen["state"] = progress.get("state")
                    gallery, preview_id = self._preview(progress, preview_id)
                    yield gallery, gr.skip(), gr.skip(), progress_html(progress), gr.skip(), gr.skip()
        finally:
            if not future.done():
                self.service.cancel(future)

    @staticmethod
    def _failed(message: str) -> tuple:
        return None, None, render.error_html(message), "", ShownResult().to_dict(), 0

    def _preview(self, progress: dict[str, Any], last_id: int) -> tuple[Any, int]:
        """The live preview for the gallery when a new one is there (and previews are on)."""
        image = progress.get("current_image")
        new_id = progress.get("preview_id", -1)
        if image is None or new_id == last_id or not self.service.settings.live_previews_enable:
            return gr.skip(), last_id
        return [image], new_id

    def _final(self, result: GenerationResult, state: dict[str, Any] | None = None) -> tuple:
        shown = self.store.save_result(result)
        depth_image = shown.depth_maps[0] if shown.depth_maps else None
        return shown.images, depth_image, render.info_html(result, stopped=state), "", shown.to_dict(), 0

    # --- batch (img2img's Batch sub-tab) ---------------------------------------------------------
    def generate_batch(self, values: dict[str, Any]) -> Iterator[tuple]:
        """Every image of the input folder through ``run_folder``: progress per file, then a summary."""
        try:
            options = batch.batch_options(values)
            template = batch.batch_template(values, options, scripts=self.script_titles(batch.batch_tab(options)))
            self.service.check(template, template=True)
            items = plan_batch(options)
        except UserError as e:
            yield gr.skip(), gr.skip(), render.error_html(user_message(e, "img2img")), "", gr.skip(), gr.skip()
            return
        tracker = batch.BatchTracker(len(items))
        self._batch_stop.clear()
        future = in_background(run_folder, self.service, template, options, tracker, self._batch_stop.is_set, items)
        yield None, None, "", render.batch_progress_html(tracker.counts(), len(items), {}), gr.skip(), gr.skip()
        try:
            report = yield from self._wait(
                future, lambda p: render.batch_progress_html(tracker.counts(), len(items), p)
            )
            shown = batch.shown_outputs(self.store, report)
        except Exception as e:  # e.g. the output folder cannot be created
            yield self._failed(failure_message(e, template.script_name))
            return
        summary = render.batch_summary_html(report, len(items), options.output_dir)
        depth_image = shown.depth_maps[0] if shown.depth_maps else None
        yield shown.images, depth_image, summary, "", shown.to_dict(), 0

    def interrupt(self) -> None:
        """Interrupt the running job, and stop a running batch before its next file."""
        self._batch_stop.set()
        self.service.interrupt()

    def skip(self) -> None:
        self.service.skip()

    @staticmethod
    def select_image(shown: dict[str, Any] | None, index: int | None) -> tuple[Any, Any]:
        """Gallery selection: the depth map and infotext of that image."""
        result = ShownResult.from_dict(shown)
        if index is None or not result.images or index >= len(result.images):
            return gr.skip(), gr.skip()
        depth_image = result.depth_maps[index] if index < len(result.depth_maps) else None  # none for a grid
        note = render.GRID_NOTE if result.grid and index == 0 else ""
        text = result.infotexts[index] if index < len(result.infotexts) else None
        info = render.info_from_text(text, note, result.warnings) if text is not None else gr.skip()
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
        try:
            data = read_image_bytes(path, "the PNG Info image")
            if data is None:
                return "", ""
            text, params = self.service.png_info(data)
        except UserError as e:
            return render.error_html(str(e)), ""
        return render.png_info_html(text, params), text

    # --- extensions -----------------------------------------------------------------------------
    def extensions_view(self) -> tuple[str, dict[str, Any]]:
        """The Extensions tab's table and its "Enabled" checkboxes as the registry has them now."""
        rows = self.service.extension_status()
        enabled = [r["name"] for r in rows if r["enabled"]]
        table = render.extensions_table_html(rows, self.not_loaded)
        return table, gr.update(choices=[r["name"] for r in rows], value=enabled)

    def apply_extensions(self, enabled: list[str] | None) -> tuple[str, dict[str, Any], str]:
        """Save ``disabled_extensions`` (unticked ones; names of removed folders are kept); say what that does."""
        names = [r["name"] for r in self.service.extension_status()]
        before = set(self.service.settings.disabled_extensions)
        wanted = set(enabled or [])
        disabled = (before - set(names)) | {n for n in names if n not in wanted}
        if disabled == before:
            return *self.extensions_view(), render.status_html("Nothing changed.")
        try:
            self.service.update_settings({"disabled_extensions": sorted(disabled)})
        except UserError as e:
            return *self.extensions_view(), render.status_html(str(e), "error")
        return *self.extensions_view(), render.status_html(extensions_message(before, disabled, self.not_loaded))

    # --- settings -------------------------------------------------------------------------------
    def apply_settings(self, values: dict[str, Any]) -> str:
        """Apply the changed settings (validated, saved to the JSON file); say what changed or what is wrong."""
        current = self.service.settings.to_dict()
        changed = {k: v for k, v in values.items() if k in current and v != current[k]}
        if not changed:
            return render.status_html("Nothing changed.")
        try:
            self.service.update_settings(changed, may_raise_limits=self.may_raise_limits)
        except UserError as e:
            return render.status_html(setting_message(e), "error")
        names = ", ".join(sorted(changed))
        return render.status_html(f"Saved {len(changed)} setting{'s' if len(changed) != 1 else ''}: {names}.")

    def settings_now(self) -> Settings:
        return self.service.settings
