"""Options, as a frozen dataclass persisted to a JSON file (A1111's option names).

The composition root loads one ``Settings``; per-request overrides make a copy with
``settings.override({...})`` and never mutate the shared one.  Saving is atomic.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field, fields
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from PIL import ImageColor

from modules.core.a1111_options import A1111_OPTIONS, check_value
from modules.core.errors import UserError, ValidationError
from modules.core.fileio import atomic_write_text

log = logging.getLogger(__name__)


def opt(default: Any, label: str, section: str, **meta: Any) -> Any:
    """A settings field with its UI label, section and (optional) choices / range."""
    kw = {"default_factory": lambda: list(default)} if isinstance(default, list) else {"default": default}
    return field(**kw, metadata={"label": label, "section": section, **meta})


@dataclass(frozen=True)
class Settings:
    # saving
    samples_save: bool = opt(True, "Always save all generated images", "Saving images")
    grid_save: bool = opt(True, "Always save all generated image grids", "Saving images")
    save_depth_maps: bool = opt(True, "Save the depth map used, as a 16-bit PNG beside each image", "Saving images")
    samples_format: str = opt("png", "File format for images", "Saving images", choices=["png", "jpg", "webp"])
    samples_filename_pattern: str = opt("", "Images filename pattern (empty: NNNNN-[seed])", "Saving images")
    save_to_dirs: bool = opt(True, "Save images to a subdirectory", "Saving images")
    directories_filename_pattern: str = opt("[date]", "Directory name pattern", "Saving images")
    outdir_img2img_samples: str = opt(
        "outputs/img2img-images", "Output directory for img2img images", "Paths", folder=True
    )
    outdir_img2img_grids: str = opt("outputs/img2img-grids", "Output directory for img2img grids", "Paths", folder=True)
    outdir_txt2img_samples: str = opt(
        "outputs/txt2img-images", "Output directory for txt2img images", "Paths", folder=True
    )
    outdir_txt2img_grids: str = opt("outputs/txt2img-grids", "Output directory for txt2img grids", "Paths", folder=True)
    outdir_save: str = opt("log/images", "Directory for saving images using the Save button", "Paths", folder=True)
    outdir_extras_samples: str = opt(
        "outputs/extras-images", "Output directory for images from extras", "Paths", folder=True
    )
    # model
    sd_model_checkpoint: str = opt("", "Stable Diffusion checkpoint", "Stable Diffusion")
    sd_checkpoints_limit: int = opt(
        1, "Maximum number of checkpoints loaded at the same time", "Stable Diffusion", minimum=1, maximum=10
    )
    sd_checkpoints_keep_in_cpu: bool = opt(
        True,
        "Only keep one model on device (the other loaded checkpoints wait in RAM, not in VRAM)",
        "Stable Diffusion",
    )
    auto_vae_precision: bool = opt(
        True,
        "Automatically revert VAE to 32-bit floats (when it produces NaNs in half precision; "
        "off: such images come out black)",
        "Stable Diffusion",
    )
    sd_vae: str = opt("Automatic", "SD VAE (Automatic: <checkpoint>.vae.* beside it, else its own; None: its own; "
                      "or a file in models/VAE)", "Stable Diffusion")
    CLIP_stop_at_last_layers: int = opt(1, "Clip skip", "Stable Diffusion", minimum=1, maximum=12)
    emphasis: str = opt("Original", "Emphasis mode", "Stable Diffusion", choices=["Original", "No norm", "None"])
    comma_padding_backtrack: int = opt(
        20, "Prompt word wrap length limit (tokens)", "Stable Diffusion", minimum=0, maximum=74
    )
    # sampling
    default_sampler: str = opt("Euler a", "Default sampling method", "Sampler parameters")
    eta_ancestral: float = opt(1.0, "Eta for ancestral samplers", "Sampler parameters", minimum=0.0, maximum=1.0)
    eta_ddim: float = opt(0.0, "Eta for DDIM", "Sampler parameters", minimum=0.0, maximum=1.0)
    img2img_fix_steps: bool = opt(False, "With img2img, do exactly the amount of steps the slider specifies", "img2img")
    initial_noise_multiplier: float = opt(1.0, "Noise multiplier for img2img", "img2img", minimum=0.0, maximum=1.5)
    img2img_background_color: str = opt(
        "#ffffff", "Fill colour for transparent parts of the input image", "img2img", color=True
    )
    depth_cache_size: int = opt(
        16, "Depth maps and init latents kept in memory (per image and model)", "img2img", minimum=0, maximum=256
    )
    # upscaling (Extras, hires. fix, SD upscale)
    ESRGAN_tile: int = opt(192, "Tile size for upscaler models (0 = no tiling)", "Upscaling", minimum=0, maximum=512)
    ESRGAN_tile_overlap: int = opt(
        8, "Tile overlap for upscaler models, in pixels (less: visible seams)", "Upscaling", minimum=0, maximum=48
    )
    upscaler_for_img2img: str = opt(
        "None", "Upscaler for img2img: init images made larger go through it, then Lanczos (None: Lanczos alone)",
        "Upscaling"
    )
    # optimizations (measured in BENCHMARKS.md)
    opt_channels_last: bool = opt(
        False,
        "Channels-last memory format for the UNet and VAE (for GPUs; on CPU no faster and +2.4 GB RAM)",
        "Optimizations",
    )
    opt_prepack_conv: bool = opt(
        False,
        "Pre-packed oneDNN convolution weights for the UNet and VAE (CPU; ~5% faster, +3 GB RAM for SD2)",
        "Optimizations",
    )
    opt_winograd_conv: bool = opt(
        True,
        "Winograd 3x3 convolutions for the UNet and VAE (CPU float32; ~20% faster; keeps 1.8 GB of "
        "transformed UNet weights for SD2 while RAM allows)",
        "Optimizations",
    )
    opt_torch_compile: bool = opt(False, "torch.compile the UNet (slow first run at each size)", "Optimizations")
    upcast_attn: bool = opt(
        False,
        "Upcast cross attention layer to float32 (float16/bfloat16 models: as LDM does for SD2; "
        "try it if images come out black)",
        "Optimizations",
    )
    token_merging_ratio: float = opt(
        0.0, "Token merging ratio (tomesd; lossy, faster at large sizes)", "Optimizations", minimum=0.0, maximum=0.9
    )
    s_min_uncond: float = opt(
        0.0,
        "Negative guidance minimum sigma (skip the negative prompt below it; lossy)",
        "Optimizations",
        minimum=0.0,
        maximum=15.0,
    )
    # limits
    # raised only from config.json or a logged-in request (limit=True; see raised_limits), never above the ceiling
    max_output_pixels: int = opt(
        2048 * 2048, "Largest output image, in pixels (width x height)", "Limits", minimum=64 * 64,
        ceiling=8192 * 8192, limit=True,
    )  # fmt: skip
    max_input_pixels: int = opt(8192 * 8192, "Largest accepted input image, in pixels", "Limits", minimum=64 * 64,
                                ceiling=16384 * 16384, limit=True)  # fmt: skip
    max_batch_images: int = opt(64, "Most images one request may make (batch count x batch size)", "Limits", minimum=1,
                                ceiling=1000, limit=True)  # fmt: skip
    # live preview
    live_previews_enable: bool = opt(True, "Show live previews of the image being generated", "Live previews")
    show_progress_every_n_steps: int = opt(
        5, "Live preview every N sampling steps", "Live previews", minimum=1, maximum=32
    )
    # extensions
    disabled_extensions: list = opt([], "Disabled extensions", "Extensions")
    # A1111 options with no setting here (core.a1111_options): accepted, persisted, no effect; not in the UI
    a1111_options: dict = field(default_factory=dict, metadata={"label": "A1111 options", "a1111": True})

    # --- API ----------------------------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def inert_option_names(cls) -> set[str]:
        """A1111 option names this program has no setting for (kept in ``a1111_options``, no effect)."""
        return set(A1111_OPTIONS) - set(cls.field_names())

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _copy(getattr(self, f.name)) for f in fields(self)}

    def override(self, values: dict[str, Any], *, strict: bool = True) -> Settings:
        """A copy with `values` applied, each validated; unknown names are errors when `strict`."""
        changes = {}
        known = {f.name: f for f in fields(self)}
        for name, value in (values or {}).items():
            f = known.get(name)
            if f is None:
                if strict:
                    raise ValidationError(f"override_settings.{name}", "unknown setting")
                continue
            changes[name] = _coerce(f, value)
        return dataclasses.replace(self, **changes) if changes else self

    # --- persistence --------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: Path) -> Settings:
        """From the JSON file; unknown or invalid entries are reported and left at their defaults."""
        base = cls()
        if not path.is_file():
            return base
        try:
            data = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError) as e:
            log.warning("settings file %s is unreadable (%s); using defaults", path, e)
            return base
        if not isinstance(data, dict):
            log.warning("settings file %s is not a JSON object; using defaults", path)
            return base
        good = {}
        stored = data.get("a1111_options") if isinstance(data.get("a1111_options"), dict) else {}
        for name in set(stored) & set(cls.field_names()):  # an A1111 option that has become a setting
            data.setdefault(name, stored.pop(name))
        inert = {k: data.pop(k) for k in cls.inert_option_names() & set(data)}  # A1111's flat config.json
        if inert:
            data["a1111_options"] = {**inert, **stored}
        for name, value in data.items():
            try:
                base.override({name: value})
                good[name] = value
            except ValidationError as e:
                log.warning("settings file %s: ignoring %s", path, e)
        return base.override(good)

    def save(self, path: Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True))


MAX_TEXT = 4096  # characters of a text setting
MAX_LIST = 1024  # names in a list setting (each at most MAX_NAME characters)
MAX_NAME = 256


class LimitRaiseError(UserError):
    """A request without a log-in that would raise a limit (only config.json or a logged-in request may)."""

    status_code = 403


def raised_limits(current: Settings, values: dict[str, Any]) -> list[str]:
    """The names of limit settings that `values` would raise above `current` (values already validated)."""
    out = []
    for f in fields(Settings):
        value = (values or {}).get(f.name)
        if f.metadata.get("limit") and isinstance(value, int | float) and value > getattr(current, f.name):
            out.append(f.name)
    return out


def check_limit_raise(current: Settings, values: dict[str, Any], *, allowed: bool) -> None:
    """Refuse (403) raising a limit unless `allowed` (a logged-in request)."""
    raised = raised_limits(current, values)
    if raised and not allowed:
        raise LimitRaiseError(
            f"{raised[0]}: limits can be lowered here but raised only by a logged-in request (--api-auth / "
            f"--gradio-auth) or in config.json by the machine's owner"
        )


FILENAME_PATTERNS = ("samples_filename_pattern", "directories_filename_pattern")
FORBIDDEN_IN_NAMES = '\\/:*?"<>|'  # core.images turns these into _ when it writes a file


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    """Check one value against its field's type and range; raise ValidationError naming it."""
    name, meta = f.name, f.metadata
    if meta.get("a1111"):
        return _check_a1111_options(value)
    kind = type(f.default) if f.default is not dataclasses.MISSING else list
    if kind is bool:
        if not isinstance(value, bool):
            raise ValidationError(name, f"expected true or false, got {_short(value)}")
    elif kind is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ValidationError(name, f"expected a whole number, got {_short(value)}")
        value = int(value)
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise ValidationError(name, f"expected a number, got {_short(value)}")
        value = float(value)
    elif kind is str:
        if not isinstance(value, str):
            raise ValidationError(name, f"expected text, got {_short(value)}")
        if len(value) > MAX_TEXT:
            raise ValidationError(name, f"{len(value)} characters; at most {MAX_TEXT}")
        if name in FILENAME_PATTERNS and (bad := sorted(set(value) & set(FORBIDDEN_IN_NAMES))):
            raise ValidationError(name, f"{' '.join(bad)} cannot be part of a file name (saving would turn it into _); "
                                        "use [date], [seed], [prompt_words] ... and - or _ between them")  # fmt: skip
    elif kind is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value[:MAX_LIST + 1]):
            raise ValidationError(name, f"expected a list of names, got {_short(value)}")
        if len(value) > MAX_LIST or any(len(v) > MAX_NAME for v in value):
            raise ValidationError(name, f"{len(value)} names; at most {MAX_LIST}, each at most {MAX_NAME} characters")
        value = list(value)
    if meta.get("color"):
        try:
            ImageColor.getrgb(value)
        except ValueError as e:
            raise ValidationError(name, f"{_short(value)} is not a colour (use e.g. #ffffff or white)") from e
    if "choices" in meta and value not in meta["choices"]:
        raise ValidationError(name, f"{_short(value)} is not one of {', '.join(map(str, meta['choices']))}")
    if "minimum" in meta and value < meta["minimum"]:
        raise ValidationError(name, f"{value} is below the minimum {meta['minimum']}")
    if "maximum" in meta and value > meta["maximum"]:
        raise ValidationError(name, f"{value} is above the maximum {meta['maximum']}")
    if "ceiling" in meta and value > meta["ceiling"]:  # a limit's maximum (the UI keeps a number box, not a slider)
        raise ValidationError(name, f"{value} is above the maximum {meta['ceiling']}")
    return value


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, list) else dict(value) if isinstance(value, dict) else value


def _check_a1111_options(value: Any) -> dict[str, Any]:
    """``a1111_options``: only A1111 names this program has no setting for, each value of its type, bounded."""
    if not isinstance(value, dict):
        raise ValidationError("a1111_options", f"expected an object of A1111 option names, got {value!r}")
    inert = Settings.inert_option_names()
    out = {}
    for name, item in value.items():
        if name not in inert:
            raise ValidationError(str(name)[:80], "not an A1111 option without a setting here")
        try:
            out[name] = check_value(name, item)
        except ValueError as e:
            raise ValidationError(name, str(e)) from e
    return out


def summarise_names(names: list[str], shown: int = 10, width: int = 60) -> str:
    """'a, b, c' for a few names; at most `shown` (each cut to `width` characters) then "... and N more"."""
    cut = [n if len(n) <= width else n[: width - 3] + "..." for n in names[:shown]]
    more = f" ... and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(cut) + more


def _short(value: Any, limit: int = 100) -> str:
    """repr(value), cut to `limit` characters (an error message never echoes a whole 57 MB value)."""
    text = repr(value) if not isinstance(value, list | dict | str) or len(value) < limit else None
    if text is None:
        text = f"a {type(value).__name__} of {len(value)} items" if not isinstance(value, str) else repr(value[:limit])
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_request_folders(values: dict[str, Any]) -> None:
    """Folder options sent by the UI or the API must stay inside the data folder (names, never other paths).

    Only config.json, edited by the owner of the machine, may point them elsewhere.
    """
    for f in fields(Settings):
        value = (values or {}).get(f.name)
        if not f.metadata.get("folder") or not isinstance(value, str):
            continue
        parts = value.replace("\\", "/").split("/")
        if (
            not value.strip()
            or PurePosixPath(value).is_absolute()
            or PureWindowsPath(value).is_absolute()
            or PureWindowsPath(value).drive
            or value.startswith("~")
            or ".." in parts
            or "\0" in value
        ):
            raise ValidationError(
                f.name,
                f"{_short(value)} is not a folder inside the data folder: give a relative path such as "
                f"{f.default!r} (other places can be set in config.json by the machine's owner)",
            )
