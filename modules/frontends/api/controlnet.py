"""ControlNet-depth requests (the sd-webui-controlnet extension's API) driving the SD2 depth model.

There are no ControlNet models here: the SD2 depth checkpoint takes a depth map as a fifth UNet input
channel, which is what a depth ControlNet is used for.  So an enabled *depth* unit becomes the
request's depth conditioning:

* module ``none`` (with a depth model): the unit's image *is* the depth map (``depth_image``);
* a depth preprocessor (``depth_midas``/``depth``, ``depth_leres``, ``depth_leres++``, ``depth_zoe``,
  ``depth_anything``, ``depth_anything_v2``, ``depth_hand_refiner``): MiDaS (DPT-Hybrid, the depth
  checkpoint's own estimator; the others are stood in for by it, with a warning).  When the unit's
  image is the init image MiDaS runs inside the job exactly as without a unit (cached); otherwise
  ``Service.estimate_depth`` runs on the unit's image first and its map becomes ``depth_image``.

Unit fields with no meaning for a depth-concat model (weight, guidance range, control mode, ...) are
named in ``info.warnings``.  A non-depth unit, or a depth unit while a model without depth input is
loaded, is a 422 naming the unit and what to do.  Units come as A1111 sends them: ``alwayson_scripts``
``controlnet`` / ``ControlNet`` (any case) with ``args`` a list of dicts or the legacy positional
form (15 values per unit, starting with ``enabled``), or the old top-level ``controlnet_units``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Query
from pydantic import AliasChoices, BaseModel, Field

from modules.app.service import Service
from modules.core.errors import ValidationError

from . import payloads

API_VERSION = 3  # what sd-webui-controlnet's /controlnet/version answers today
MODEL_NAME = "sd2_depth [built-in]"  # the only "model": the depth checkpoint's own depth input
MIDAS = ("depth", "depth_midas")
OTHER_ESTIMATORS = ("depth_leres", "depth_leres++", "depth_zoe", "depth_anything", "depth_anything_v2",
                    "depth_hand_refiner")  # fmt: skip
MODULES = ("none", "depth", *OTHER_ESTIMATORS)  # module_list names (alias_names=true: "depth" -> "depth_midas")
LEGACY_FIELDS = ("enabled", "module", "model", "weight", "image", "resize_mode", "low_vram", "processor_res",
                 "threshold_a", "threshold_b", "guidance_start", "guidance_end", "guess_mode", "pixel_perfect",
                 "control_mode")  # fmt: skip
ALIASES = {"input_image": "image", "guidance": "guidance_end", "lowvram": "low_vram", "guessmode": "guess_mode",
           "mask_image": "mask"}  # fmt: skip
# unit fields that change nothing for a depth-concat model: (field, values meaning "not asked for")
INERT_FIELDS = {
    "weight": (1, 1.0), "guidance_start": (0, 0.0), "guidance_end": (1, 1.0),
    "control_mode": (0, "Balanced", "BALANCED"), "resize_mode": (1, "Crop and Resize", "Inner Fit (Scale to Fit)"),
    "pixel_perfect": (False,), "processor_res": (-1, 64, 512), "threshold_a": (-1, -1.0, 64, 64.0),
    "threshold_b": (-1, -1.0, 64, 64.0), "low_vram": (False,), "guess_mode": (False,), "mask": (None, ""),
    "hr_option": ("Both", 0), "advanced_weighting": (None,), "effective_region_mask": (None,),
    "inpaint_crop_input_image": (True,),
}  # fmt: skip
MAX_UNITS = 16


@dataclass
class DepthUnit:
    """The one enabled depth unit of a request, reduced to what the depth model can use."""

    index: int
    module: str
    image: str | None  # base64 as sent
    warnings: list[str] = field(default_factory=list)


# --- finding the units ------------------------------------------------------------------------------


def take_units(body: Any) -> list[dict[str, Any]]:
    """Remove the ControlNet arguments from the request (so no "unknown extension" warning) and return its units."""
    raw: list[Any] = []
    scripts = body.alwayson_scripts or {}
    for key in [k for k in scripts if isinstance(k, str) and k.lower() == "controlnet"]:
        value = scripts.pop(key)
        args = value.get("args", []) if isinstance(value, dict) else value
        if not isinstance(args, list):
            raise ValidationError(f"alwayson_scripts.{key}.args", "expected a list of ControlNet units")
        raw += args
    extra = body.model_extra or {}
    legacy = extra.pop("controlnet_units", None)
    if legacy is not None:
        if not isinstance(legacy, list):
            raise ValidationError("controlnet_units", "expected a list of ControlNet units")
        raw += legacy
    return _units_from_args(raw)


def _units_from_args(args: list[Any]) -> list[dict[str, Any]]:
    """Dict units as they are; the legacy positional form (a bool starting 15 values) by LEGACY_FIELDS."""
    units, i = [], 0
    while i < len(args):
        item = args[i]
        if isinstance(item, bool):
            units.append(dict(zip(LEGACY_FIELDS, args[i : i + len(LEGACY_FIELDS)], strict=False)))
            i += len(LEGACY_FIELDS)
            continue
        if isinstance(item, dict):
            units.append({ALIASES.get(k, k): v for k, v in item.items()})
        elif item is not None:
            raise ValidationError(f"controlnet unit {len(units)}", f"expected an object, got {type(item).__name__}")
        i += 1
    if len(units) > MAX_UNITS:
        raise ValidationError("controlnet", f"at most {MAX_UNITS} ControlNet units")
    return units


def _enabled(unit: dict[str, Any]) -> bool:
    """``enabled`` as sent; a unit without it counts as enabled (older extension versions' default, which
    clients that leave it out rely on)."""
    return unit.get("enabled", True) not in (False, 0, "false", "False", None)


# --- the depth unit ----------------------------------------------------------------------------------


def is_depth_model(model: Any) -> bool:
    return isinstance(model, str) and ("depth" in model.lower() or model == MODEL_NAME)


def depth_unit(units: list[dict[str, Any]], warnings: list[str]) -> DepthUnit | None:
    """The first enabled unit, checked to be a depth unit (a 422 otherwise); later ones are refused likewise."""
    found: DepthUnit | None = None
    for i, unit in enumerate(units):
        if not _enabled(unit):
            continue
        module = str(unit.get("module") or "none").strip().lower()
        model = unit.get("model") or "None"
        if module not in (*MODULES, "depth_midas") or (module == "none" and not is_depth_model(model)):
            raise ValidationError(
                f"controlnet unit {i}",
                f"module {module!r} with model {model!r} is not a depth unit; the SD2 depth model takes only depth: "
                f"use module 'none' with a depth map as the image and model {MODEL_NAME!r}, or a depth "
                f"preprocessor ({', '.join(MODULES[1:])}), or disable the unit",
            )
        if found is not None:
            warnings.append(f"controlnet unit {i}: only the first depth unit is used; ignored")
            continue
        found = DepthUnit(i, module, _unit_image(unit, i))
        found.warnings = _inert_warnings(unit, i, module, model)
    return found


def _unit_image(unit: dict[str, Any], index: int) -> str | None:
    """The unit's image as sent: a base64 string, {"image": ...}, [image, mask] or [{"image": ...}, ...]."""
    image = unit.get("image")
    if isinstance(image, list) and image:
        image = image[0]
    if isinstance(image, dict):
        image = image.get("image")
    if image is not None and not isinstance(image, str):
        raise ValidationError(f"controlnet unit {index}.image", "expected a base64 image")
    return image or None


def _inert_warnings(unit: dict[str, Any], index: int, module: str, model: Any) -> list[str]:
    out = []
    inert = [k for k, idle in INERT_FIELDS.items() if k in unit and unit[k] not in idle]
    if inert:
        out.append(f"controlnet unit {index}: {', '.join(inert)} have no meaning for the SD2 depth model "
                   "(its depth map is an input channel of the UNet, not a weighted control); ignored")  # fmt: skip
    if module in OTHER_ESTIMATORS:
        out.append(f"controlnet unit {index}: {module} is not available here; MiDaS (DPT-Hybrid) used instead")
    if module != "none" and model not in ("None", "", None) and not is_depth_model(model):
        out.append(f"controlnet unit {index}: model {model!r} is not used; the depth checkpoint takes the depth map")
    return out


def apply_units(body: Any, units: list[dict[str, Any]], service: Service, warnings: list[str]) -> None:
    """Make the request's enabled depth unit its depth conditioning (``depth_image``, or MiDaS in the job)."""
    unit = depth_unit(units, warnings)
    if unit is None:
        return
    warnings += unit.warnings
    checkpoint = (body.override_settings or {}).get("sd_model_checkpoint")
    if service.checkpoint_has_depth(checkpoint) is False:
        raise ValidationError(
            f"controlnet unit {unit.index}",
            "a depth ControlNet unit needs the SD2 depth checkpoint (512-depth-ema), but the model in use has no "
            "depth input: load the depth checkpoint (POST /sdapi/v1/options sd_model_checkpoint) or drop the unit",
        )
    if body.depth_image:
        warnings.append(f"controlnet unit {unit.index}: depth_image is given and wins over the unit")
        return
    init = (getattr(body, "init_images", None) or [None])[0]
    image = unit.image or init
    if image is None:
        raise ValidationError(
            f"controlnet unit {unit.index}.image", "the unit has no image (and there is no init image)"
        )
    if unit.module == "none":
        body.depth_image = image
    elif init is None or payloads.decode_base64(image, "image") != payloads.decode_base64(init, "init_images[0]"):
        depth = service.estimate_depth(payloads.decode_base64(image, f"controlnet unit {unit.index}.image"))
        body.depth_image = payloads.encode_depth_base64(depth)
    # else: the init image itself -> MiDaS inside the job, as without a unit (cached with the init latent)


def check_depth_image(body: Any, service: Service) -> None:
    """``depth_image`` for a model without depth input is refused (it would be ignored without a word)."""
    if not body.depth_image:
        return
    if service.checkpoint_has_depth((body.override_settings or {}).get("sd_model_checkpoint")) is False:
        raise ValidationError(
            "depth_image", "the model in use has no depth input, so a depth map would be ignored: load the SD2 "
            "depth checkpoint (512-depth-ema) or leave depth_image out",
        )  # fmt: skip


# --- the /controlnet routes --------------------------------------------------------------------------


def add_routes(router: APIRouter, service: Service) -> None:
    """sd-webui-controlnet's listing routes and /detect on a /controlnet router."""
    routes = ControlNetRoutes(service)
    add = router.add_api_route
    add("/version", routes.version, methods=["GET"])
    add("/model_list", routes.model_list, methods=["GET"])
    add("/module_list", routes.module_list, methods=["GET"])
    add("/settings", routes.settings, methods=["GET"])
    add("/detect", routes.detect, methods=["POST"])


class DetectRequest(BaseModel):
    """The body of /controlnet/detect; the resolution, thresholds, masks and low_vram change nothing here."""

    controlnet_module: str = "none"
    controlnet_input_images: list[str] = Field(
        default_factory=list, validation_alias=AliasChoices("controlnet_input_images", "controlnet_images")
    )  # the webuiapi client sends controlnet_images
    controlnet_processor_res: int = -1
    controlnet_threshold_a: float = -1
    controlnet_threshold_b: float = -1
    controlnet_masks: list[str] = Field(default_factory=list)
    low_vram: bool = False


class ControlNetRoutes:
    """The route functions, in the extension's shapes; depth comes from ``service.estimate_depth``."""

    def __init__(self, service: Service):
        self.service = service

    async def version(self) -> dict[str, int]:
        return {"version": API_VERSION}

    async def model_list(self, update: bool = Query(True)) -> dict[str, list[str]]:
        """The one depth "model": the depth checkpoint's own depth input."""
        return {"model_list": [MODEL_NAME]}

    async def module_list(self, alias_names: bool = Query(False)) -> dict[str, Any]:
        names = [("depth_midas" if alias_names and m == "depth" else m) for m in MODULES]
        return {"module_list": names, "module_detail": {m: {"model_free": False, "sliders": []} for m in names}}

    async def settings(self) -> dict[str, int]:
        return {"control_net_unit_count": 1}

    def detect(self, body: DetectRequest) -> dict[str, Any]:
        """Depth maps of images (MiDaS, 16-bit PNG, white = near), as ``POST /sdapi/v1/depth`` per image."""
        module = (body.controlnet_module or "none").strip().lower()
        if module not in (*MODULES, "depth_midas") or module == "none":
            raise ValidationError("controlnet_module", f"module {module!r} is not available here; "
                                  f"depth modules: {', '.join(MODULES[1:])} (all run MiDaS)")  # fmt: skip
        if not body.controlnet_input_images:
            raise ValidationError("controlnet_input_images", "No image selected")
        maps = [self.service.estimate_depth(payloads.decode_base64(im, f"controlnet_input_images[{i}]"))
                for i, im in enumerate(body.controlnet_input_images)]  # fmt: skip
        return {"images": [payloads.encode_depth_base64(d) for d in maps], "info": "Success"}
