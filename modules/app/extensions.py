"""Extensions: discovery, registration and typed hooks.

An extension is a folder with an ``__init__.py`` that defines ``register(ext)``:

    def register(ext):
        ext.before_process(lambda request, args: ...)   # may return a modified GenerationRequest
        ext.on_step(lambda step, args: ...)              # may return replacement latents
        ext.after_image(lambda image, args: ...)         # may return a replacement uint8 image
        ext.infotext_fields(lambda request, args: {...}) # extra "Key: value" pairs for the infotext
        ext.on_app_started(lambda app: ...)              # app.fastapi / app.service: add routes
        ext.add_ui_section("img2img", "My section", build)   # build() -> {arg name: gradio component}
        ext.add_ui_tab("My tab", build_tab)                   # build_tab(service) builds inside a gr.Tab
        ext.add_script(Script(...))                           # a "Script" that runs process() itself

Built-in extensions live in ``extensions-builtin/``, user ones in ``extensions/``; they load in that
order, each sorted by folder name.  ``settings.disabled_extensions`` lists folder names not to load.
Arguments travel in ``GenerationRequest.extension_args[<extension name>]`` (a dict), never by
position; the API carries them in ``alwayson_scripts``.  An extension that raises is reported by
name (log, UI, the result's warnings) and skipped for the rest of the job; the server keeps running.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modules.core.hooks import Hooks, ImageInfo, ScriptRunner
from modules.core.request import GenerationRequest, GenerationResult, StepInfo

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
BUILTIN_DIR = ROOT / "extensions-builtin"


@dataclass
class UiSection:
    extension: str
    tab: str  # "img2img", "inpaint", "txt2img" or "*"
    title: str
    build: Callable[[], dict[str, Any]]  # -> {arg name: gradio component}


@dataclass
class UiTab:
    extension: str
    title: str
    build: Callable[[Any], None]  # build(service), called inside a gr.Tab


@dataclass
class Script:
    """A selectable script (A1111's "Script" dropdown / the API's ``script_name``).

    ``run(request, args, runner)`` replaces the plain generation: it may call ``runner.process`` (the
    normal pipeline) as often as it likes, save grids with ``runner.save_grid``, and returns one
    GenerationResult.
    """

    title: str
    run: Callable[[GenerationRequest, dict[str, Any], ScriptRunner], GenerationResult]
    ui: Callable[[str], dict[str, Any]] | None = None  # ui(tab) -> {arg name: gradio component}
    tabs: tuple[str, ...] = ("img2img", "inpaint", "txt2img")
    extension: str = ""
    positional: tuple[str, ...] = ()  # names for A1111's positional script_args (the API maps a list to them)


@dataclass
class Extension:
    """One loaded extension and what it registered."""

    name: str
    path: Path
    builtin: bool
    description: str = ""
    before_process_fns: list[Callable] = field(default_factory=list)
    on_step_fns: list[Callable] = field(default_factory=list)
    after_image_fns: list[Callable] = field(default_factory=list)
    infotext_fns: list[Callable] = field(default_factory=list)
    app_started_fns: list[Callable] = field(default_factory=list)
    ui_sections: list[UiSection] = field(default_factory=list)
    ui_tabs: list[UiTab] = field(default_factory=list)
    scripts: list[Script] = field(default_factory=list)
    error: str | None = None

    # --- what register(ext) calls ---------------------------------------------------------------
    def before_process(self, fn: Callable[[GenerationRequest, dict], GenerationRequest | None]) -> None:
        self.before_process_fns.append(fn)

    def on_step(self, fn: Callable[[StepInfo, dict], Any]) -> None:
        self.on_step_fns.append(fn)

    def after_image(self, fn: Callable[[ImageInfo, dict], Any]) -> None:
        self.after_image_fns.append(fn)

    def infotext_fields(self, fn: Callable[[GenerationRequest, dict], dict]) -> None:
        self.infotext_fns.append(fn)

    def on_app_started(self, fn: Callable[[Any], None]) -> None:
        self.app_started_fns.append(fn)

    def add_ui_section(self, tab: str, title: str, build: Callable[[], dict[str, Any]]) -> None:
        self.ui_sections.append(UiSection(self.name, tab, title, build))

    def add_ui_tab(self, title: str, build: Callable[[Any], None]) -> None:
        self.ui_tabs.append(UiTab(self.name, title, build))

    def add_script(self, script: Script) -> None:
        script.extension = self.name
        self.scripts.append(script)


def discover(folders: list[Path]) -> list[tuple[Path, bool]]:
    """Extension folders in load order: each folder's sub-folders with an __init__.py, sorted by name."""
    found = []
    for folder in folders:
        if not folder.is_dir():
            continue
        builtin = folder.resolve() == BUILTIN_DIR.resolve()
        for path in sorted(p for p in folder.iterdir() if p.is_dir() and (p / "__init__.py").is_file()):
            if not path.name.startswith((".", "_")):
                found.append((path, builtin))
    return found


def load_extension(path: Path, builtin: bool) -> Extension:
    """Import one extension folder as a package and call its register(ext); errors are kept, not raised."""
    ext = Extension(path.name, path, builtin)
    module_name = f"sd_extension_{'builtin_' if builtin else ''}{_identifier(path.name)}"
    try:
        spec = importlib.util.spec_from_file_location(
            module_name, path / "__init__.py", submodule_search_locations=[str(path)]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
        ext.description = (module.__doc__ or "").strip().split("\n")[0]
        register = getattr(module, "register", None)
        if not callable(register):
            raise TypeError("it has no register(ext) function")
        register(ext)
    except Exception as e:  # an extension's bug must not stop the program
        ext.error = f"{e.__class__.__name__}: {e}"
        log.error("Extension %s failed to load: %s\n%s", path.name, ext.error, traceback.format_exc())
    return ext


def _identifier(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


class ExtensionRegistry(Hooks):
    """The loaded extensions, dispatching the hooks ``process`` calls to the enabled ones."""

    def __init__(self, extensions: list[Extension], disabled: list[str] | None = None):
        self.extensions = extensions
        self.disabled = set(disabled or [])
        self._failed_this_job: set[str] = set()
        self._warnings: list[str] = []

    @classmethod
    def load(cls, folders: list[Path], disabled: list[str] | None = None) -> ExtensionRegistry:
        disabled = set(disabled or [])
        loaded = []
        for path, builtin in discover(folders):
            if path.name in disabled:
                loaded.append(Extension(path.name, path, builtin, error=None))
                continue
            loaded.append(load_extension(path, builtin))
        names = ", ".join(e.name for e in loaded if e.name not in disabled and not e.error) or "none"
        log.info("Extensions loaded: %s", names)
        return cls(loaded, list(disabled))

    # --- queries ----------------------------------------------------------------------------------
    def enabled(self) -> list[Extension]:
        return [e for e in self.extensions if e.name not in self.disabled and e.error is None]

    def scripts(self, tab: str | None = None) -> list[Script]:
        return [s for e in self.enabled() for s in e.scripts if tab is None or tab in s.tabs]

    def find_script(self, title: str) -> Script | None:
        wanted = (title or "").strip().lower()
        return next((s for s in self.scripts() if s.title.lower() == wanted), None)

    def script_titles(self) -> list[str]:
        return [s.title for s in self.scripts()]

    def ui_sections(self, tab: str) -> list[UiSection]:
        return [s for e in self.enabled() for s in e.ui_sections if s.tab in (tab, "*")]

    def ui_tabs(self) -> list[UiTab]:
        return [t for e in self.enabled() for t in e.ui_tabs]

    def status(self) -> list[dict[str, Any]]:
        return [
            {
                "name": e.name,
                "builtin": e.builtin,
                "enabled": e.name not in self.disabled,
                "error": e.error,
                "description": e.description,
                "path": str(e.path),
            }
            for e in self.extensions
        ]

    def set_disabled(self, names: list[str]) -> None:
        self.disabled = set(names)

    # --- hooks ------------------------------------------------------------------------------------
    def _call(self, ext: Extension, what: str, fn: Callable, *args) -> Any:
        if ext.name in self._failed_this_job:
            return None
        try:
            return fn(*args)
        except Exception as e:  # reported by name; the job goes on without this extension
            self._failed_this_job.add(ext.name)
            msg = f"extension {ext.name} failed in {what}: {e.__class__.__name__}: {e}"
            self._warnings.append(msg)
            log.error("%s\n%s", msg, traceback.format_exc())
            return None

    def begin_job(self) -> None:
        self._failed_this_job = set()
        self._warnings = []

    def take_warnings(self) -> list[str]:
        out, self._warnings = self._warnings, []
        return out

    def before_process(self, request: GenerationRequest) -> GenerationRequest:
        self.begin_job()
        for ext in self.enabled():
            for fn in ext.before_process_fns:
                changed = self._call(ext, "before_process", fn, request, request.extension_args.get(ext.name, {}))
                if isinstance(changed, GenerationRequest):
                    request = changed
        return request

    def on_step(self, info: StepInfo) -> Any | None:
        latents = None
        for ext in self.enabled():
            for fn in ext.on_step_fns:
                out = self._call(ext, "on_step", fn, info, info.extension_args.get(ext.name, {}))
                if out is not None:
                    info.latents = latents = out
        return latents

    def after_image(self, info: ImageInfo) -> Any | None:
        image = None
        for ext in self.enabled():
            for fn in ext.after_image_fns:
                out = self._call(ext, "after_image", fn, info, info.request.extension_args.get(ext.name, {}))
                if out is not None:
                    info.image = image = out
        return image

    def infotext_fields(self, request: GenerationRequest) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        for ext in self.enabled():
            for fn in ext.infotext_fns:
                out = self._call(ext, "infotext_fields", fn, request, request.extension_args.get(ext.name, {}))
                if isinstance(out, dict):
                    fields.update(out)
        return fields

    def app_started(self, app: Any) -> None:
        for ext in self.enabled():
            for fn in ext.app_started_fns:
                self._call(ext, "on_app_started", fn, app)
