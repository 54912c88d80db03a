"""The row under each gallery, as A1111's: 📂 Open folder (the server-side path), Save, Zip, Send to extras.

Save copies the selected picture (its infotext inside) into Settings -> Paths -> "Directory for saving
images using the Save button" and offers it for download; Zip packs every picture shown into one file.
The browser cannot open a folder on the server machine, so "Open folder" shows where the outputs are.
"""

from __future__ import annotations

import html
import re
import shutil
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from modules.app.service import Service
from modules.core.fileio import atomic_write_bytes
from modules.frontends.ui.outputs import ShownResult

OUTDIR_SETTING = {"txt2img": "outdir_txt2img_samples", "img2img": "outdir_img2img_samples"}


@dataclass
class GalleryTools:
    open_folder: gr.Button
    save: gr.Button
    zip: gr.Button
    send_to_extras: gr.Button
    files: gr.File
    message: gr.HTML


def server_path(service: Service, setting: str) -> Path:
    """A folder setting as an absolute path on the server (relative ones live under the data folder)."""
    folder = Path(getattr(service.settings, setting)).expanduser()
    return folder if folder.is_absolute() else (service.data_dir / folder)


def _note(text: str, path: Path | None = None) -> str:
    where = f" <code>{html.escape(str(path))}</code>" if path is not None else ""
    return f'<div class="sd-status sd-status-ok">{html.escape(text)}{where}</div>'


def open_folder(service: Service, tab: str) -> str:
    folder = server_path(service, OUTDIR_SETTING[tab])
    return _note("Outputs are saved on the server machine in", folder)


def _picked(shown: dict | None, index: int | None) -> tuple[ShownResult, int]:
    result = ShownResult.from_dict(shown)
    return result, index if index is not None and 0 <= index < len(result.images) else 0


def save_selected(service: Service, shown: dict | None, index: int | None) -> tuple[Any, str]:
    """Save: the selected picture into the Save folder (a new numbered name); returns (download, message)."""
    result, i = _picked(shown, index)
    if not result.images:
        return None, _error("nothing to save yet: generate an image first")
    folder = server_path(service, "outdir_save")
    folder.mkdir(parents=True, exist_ok=True)
    numbers = [int(m.group(1)) for p in folder.glob("*.png") if (m := re.match(r"(\d{5})-", p.name))]
    seed = result.seeds[i] if i < len(result.seeds) else i
    target = folder / f"{max(numbers, default=-1) + 1:05}-{seed}.png"
    atomic_write_bytes(target, Path(result.images[i]).read_bytes())
    return [str(target)], _note("Saved to", target)


def zip_all(shown: dict | None, folder: Path) -> tuple[Any, str]:
    """Zip: every picture shown, in one file next to them (served with them); returns (download, message)."""
    result = ShownResult.from_dict(shown)
    if not result.images:
        return None, _error("nothing to zip yet: generate an image first")
    target = folder / f"images-{time.strftime('%Y%m%d-%H%M%S')}.zip"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as archive:
        for n, path in enumerate(result.images):
            archive.write(path, f"{n:05}-{result.seeds[n] if n < len(result.seeds) else n}.png")
    return [str(target)], _note(f"{len(result.images)} image(s) in", target)


def _error(text: str) -> str:
    return f'<div class="sd-error" role="alert"><b>Error:</b> {html.escape(text)}</div>'


def selected_image(shown: dict | None, index: int | None) -> str | None:
    result, i = _picked(shown, index)
    return result.images[i] if result.images else None


def build_gallery_tools(tab: str) -> GalleryTools:
    """The buttons (build under the gallery); wiring needs the Service: ``wire_gallery_tools``."""
    with gr.Row(elem_classes="sd-send-row", elem_id=f"image_buttons_{tab}"):
        folder = gr.Button("📂", elem_id=f"{tab}_open_folder", elem_classes=["sd-tool", "sd-icon"], size="sm",
                           min_width=42)  # fmt: skip
        save = gr.Button("Save", size="sm", elem_id=f"{tab}_save", min_width=60)
        zipped = gr.Button("Zip", size="sm", elem_id=f"{tab}_zip", min_width=60)
        extras = gr.Button("Send to extras", size="sm", elem_id=f"{tab}_send_to_extras")
    files = gr.File(label="Download", visible=False, interactive=False, file_count="multiple",
                    elem_id=f"{tab}_download_files")  # fmt: skip
    message = gr.HTML("", elem_id=f"{tab}_gallery_message")
    return GalleryTools(folder, save, zipped, extras, files, message)


def wire_gallery_tools(service: Service, tab: str, output: Any, store_folder: Path) -> None:
    """``output``: the tab's OutputPanel (its tools, shown result, selected index and the js that reads it)."""
    tools, shown, selected = output.tools, output.shown, output.selected

    def show_files(files: Any, text: str) -> tuple[Any, str]:
        return gr.update(value=files, visible=files is not None), text

    tools.open_folder.click(lambda: open_folder(service, tab), outputs=tools.message, queue=False)
    tools.save.click(lambda s, i: show_files(*save_selected(service, s, i)), inputs=[shown, selected],
                     outputs=[tools.files, tools.message], queue=False, js=output.pick_js)  # fmt: skip
    tools.zip.click(lambda s: show_files(*zip_all(s, store_folder)), inputs=shown,
                    outputs=[tools.files, tools.message], queue=False)  # fmt: skip


def copy_to_extras(picture: str | None, folder: Path) -> str | None:
    """A copy of the picture for the Extras tab's input (the gallery's file may be pruned meanwhile)."""
    if not picture:
        return None
    target = folder / f"extras-{Path(picture).name}"
    shutil.copyfile(picture, target)
    return str(target)
