"""The ``/sdapi/v1`` routes: A1111's endpoints and shapes, on top of ``Service``.

Routes that wait (generation, model switches, depth) are plain ``def``: FastAPI runs them in its
thread pool while ``service`` queues the work on the one job worker, so concurrent clients are
answered in turn.  ``/progress``, ``/interrupt`` and ``/skip`` are ``async`` and never wait, so
they answer while jobs run even when every pool thread is waiting on one.
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from PIL import Image, UnidentifiedImageError
from starlette.exceptions import HTTPException

from modules.app.options import Options
from modules.app.service import Service
from modules.core import samplers
from modules.core.errors import CheckpointNotFoundError, UserError, ValidationError

from . import a1111_lists, controlnet, extra_networks, extras, payloads, script_args
from .disconnect import wait_for_client
from .models import (
    DepthResponse,
    ErrorResponse,
    ImageRequest,
    ImageResponse,
    Img2ImgRequest,
    PNGInfoResponse,
    ProgressResponse,
    SamplerItem,
    SchedulerItem,
    ScriptsList,
    SDModelItem,
    Txt2ImgRequest,
)

log = logging.getLogger(__name__)
SECRET_FLAGS = ("api_auth", "gradio_auth")


class ApiRoute(APIRoute):
    """Turns errors into A1111-style JSON: UserError -> its 4xx, anything else -> a short 500 (logged)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except (HTTPException, RequestValidationError):
                raise
            except UserError as e:
                return error_response(e.status_code, str(e), type(e).__name__)
            except Exception as e:
                log.exception("API error in %s %s", request.method, request.url.path)
                first_line = (str(e).splitlines() or [""])[0][:200]
                return error_response(500, f"internal error: {type(e).__name__}: {first_line} (see the server log)",
                                      type(e).__name__)  # fmt: skip

        return guarded


class ApiJSONResponse(JSONResponse):
    """JSON with non-ASCII characters escaped: text from a request may hold an unpaired surrogate ("\\ud800"
    is valid JSON), which cannot be encoded as UTF-8 but can be sent back escaped."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def error_response(status: int, detail: str, error: str) -> JSONResponse:
    return ApiJSONResponse({"detail": detail, "error": error}, status_code=status)


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 for a malformed body in the documented shape: ``detail`` (text naming the first fields),
    ``error``, and FastAPI's list as ``errors`` (at most 20, values cut), so any value quoted can be sent back."""
    errors = exc.errors()
    shown = [f"{'.'.join(map(str, e.get('loc', ())))[:200]}: {str(e.get('msg', ''))[:200]}{_got(e)}" for e in errors[:3]]
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    listed = [{k: v for k, v in e.items() if k != "input"} | {"input": _cut(e.get("input"))} for e in errors[:20]]
    body = {"detail": "; ".join(shown) + more, "error": "RequestValidationError",
            "errors": _json_safe(jsonable_encoder(listed))}  # fmt: skip
    return ApiJSONResponse(body, status_code=422)


def _got(error: dict) -> str:
    """`` (got inf)``: the offending value when it is a short scalar (NaN, an infinity, a number, a short text)."""
    value = error.get("input")
    if isinstance(value, bool | int | float) or (isinstance(value, str) and len(value) <= 40):
        return f" (got {value!r})"
    return ""


def _cut(value: Any) -> Any:
    """A quoted input value, short: long text and containers become a short description."""
    if isinstance(value, str) and len(value) > 200:
        return value[:200] + "..."
    if isinstance(value, list | dict) and (len(value) > 20 or len(repr(value)) > 200):
        return f"a {type(value).__name__} of {len(value)} items"
    return value


def _json_safe(value: Any) -> Any:
    """NaN and infinities (which a request may carry, and JSON cannot) as text."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


_ERRORS = {code: {"model": ErrorResponse} for code in (400, 404, 409, 422, 500)}


def build_router(service: Service, options: Options) -> APIRouter:
    """All /sdapi/v1 routes bound to `service`."""
    router = APIRouter(prefix="/sdapi/v1", route_class=ApiRoute, tags=["sdapi"], responses=_ERRORS,
                       default_response_class=ApiJSONResponse)  # fmt: skip
    api = Api(service, options)
    add = router.add_api_route
    add("/txt2img", api.txt2img, methods=["POST"], response_model=ImageResponse)
    add("/img2img", api.img2img, methods=["POST"], response_model=ImageResponse)
    add("/depth", api.depth, methods=["POST"], response_model=DepthResponse)
    add("/png-info", api.png_info, methods=["POST"], response_model=PNGInfoResponse)
    add("/progress", api.progress, methods=["GET"], response_model=ProgressResponse)
    add("/interrupt", api.interrupt, methods=["POST"])
    add("/skip", api.skip, methods=["POST"])
    add("/options", api.get_options, methods=["GET"])
    add("/options", api.set_options, methods=["POST"])
    add("/cmd-flags", api.cmd_flags, methods=["GET"])
    add("/samplers", api.samplers, methods=["GET"], response_model=list[SamplerItem])
    add("/schedulers", api.schedulers, methods=["GET"], response_model=list[SchedulerItem])
    add("/sd-models", api.sd_models, methods=["GET"], response_model=list[SDModelItem])
    add("/refresh-checkpoints", api.refresh_checkpoints, methods=["POST"])
    add("/unload-checkpoint", api.unload_checkpoint, methods=["POST"])
    add("/reload-checkpoint", api.reload_checkpoint, methods=["POST"])
    add("/memory", api.memory, methods=["GET"])
    add("/scripts", api.scripts, methods=["GET"], response_model=ScriptsList)
    extras.add_routes(router, service)
    a1111_lists.add_routes(router, service)
    extra_networks.add_routes(router, service)
    return router


def build_controlnet_router(service: Service) -> APIRouter:
    """sd-webui-controlnet's /controlnet routes (depth only: they drive the SD2 depth model)."""
    router = APIRouter(prefix="/controlnet", route_class=ApiRoute, tags=["controlnet"], responses=_ERRORS,
                       default_response_class=ApiJSONResponse)  # fmt: skip
    controlnet.add_routes(router, service)
    return router


class Api:
    """The route functions; everything they do goes through `service`."""

    def __init__(self, service: Service, options: Options):
        self.service = service
        self.options = options
        self.option_writer = a1111_lists.OptionWriter()

    # --- generation -------------------------------------------------------------------------------
    def img2img(self, body: Img2ImgRequest, http: Request) -> dict[str, Any]:
        """A1111's img2img / inpainting, plus depth_image / depth_invert; returns images, parameters, info."""
        if not body.init_images:
            raise payloads.ApiError(404, "Init image not found")
        return self._generate(body, img2img=True, http=http)

    def txt2img(self, body: Txt2ImgRequest, http: Request) -> dict[str, Any]:
        """A1111's txt2img (hires. fix included); with the depth model it needs depth_image (the layout's source)."""
        return self._generate(body, img2img=False, http=http)

    def _generate(self, body: Img2ImgRequest | Txt2ImgRequest, *, img2img: bool,
                  http: Request | None = None) -> dict[str, Any]:  # fmt: skip
        """Check and translate the request (refusals before queueing), run it on the worker, answer as A1111."""
        for name, value in body.model_dump().items():
            payloads.check_unicode(value, name)
        self._name_script_args(body)
        units = controlnet.take_units(body)  # before the warnings: ControlNet is no extension here
        warnings = self._request_warnings(body)
        if isinstance(body.script_args, list) and script_args.is_xyz(body.script_name):
            body.script_args = script_args.named_args(body.script_args, img2img=img2img, warnings=warnings)
        payloads.apply_infotext(body, warnings, self._known_checkpoint)
        overrides = payloads.check_override_settings(body.override_settings, self.service.settings, warnings)
        body.override_settings = overrides
        controlnet.check_depth_image(body, self.service)
        controlnet.apply_units(body, units, self.service, warnings)
        request = payloads.to_generation_request(body, img2img=img2img)
        self.service.check(request)  # every refusal before queueing (a 404 for an unknown checkpoint)
        settings = self.service.settings.override(overrides, strict=False)
        for w in warnings:
            log.warning("API request: %s", w)
        result = wait_for_client(self.service, self.service.submit(request), http)  # cancelled if the client goes
        info = payloads.info_dict(
            request, result, clip_skip=settings.CLIP_stop_at_last_layers, styles=body.styles, warnings=warnings
        )
        send = body.send_images
        pairs = zip(result.images, result.infotexts, strict=True)
        return {
            "images": [payloads.encode_png_base64(im, text) for im, text in pairs] if send else [],
            "depth_images": [payloads.encode_depth_base64(d) for d in result.depth_maps] if send else [],
            "parameters": payloads.parameters_echo(body, bool(getattr(body, "include_init_images", False))),
            "info": payloads.info_json(info),
        }

    def _name_script_args(self, body: Img2ImgRequest | Txt2ImgRequest) -> None:
        """A1111's positional ``script_args`` -> names, for scripts that declare them (SD upscale)."""
        if not isinstance(body.script_args, list) or not body.script_name:
            return
        wanted = body.script_name.strip().lower()
        script = next((s for s in self.service.scripts() if s.title.lower() == wanted), None)
        if script is not None and script.positional:
            body.script_args = dict(zip(script.positional, body.script_args, strict=False))

    def _request_warnings(self, body: Img2ImgRequest | Txt2ImgRequest) -> list[str]:
        """What the request asks for that will not happen (unsupported A1111 fields, unknown extensions)."""
        warnings = payloads.unsupported_warnings(body)
        known = set(self.service.enabled_extension_names())
        unused = sorted(set(body.alwayson_scripts or {}) - known)
        if unused:
            warnings.append(f"alwayson_scripts: no enabled extension called {', '.join(map(repr, unused))}; ignored")
        return warnings

    def _known_checkpoint(self, name: str) -> bool:
        try:
            self.service.find_checkpoint(name)
        except CheckpointNotFoundError:
            return False
        return True

    def depth(self, body: ImageRequest) -> dict[str, Any]:
        """MiDaS depth of an image, without generating: a 16-bit PNG at the image's size (white = near)."""
        data = payloads.decode_base64(body.image, "image")
        arr = self.service.estimate_depth(data)
        return {"depth_image": payloads.encode_depth_base64(arr), "width": arr.shape[1], "height": arr.shape[0]}

    def png_info(self, body: ImageRequest) -> dict[str, Any]:
        """The infotext of an image, its other text chunks, and the infotext parsed into parameters."""
        data = payloads.decode_base64(body.image, "image")
        try:
            with Image.open(io.BytesIO(data)) as img:
                items = {k: v for k, v in img.info.items() if isinstance(k, str) and isinstance(v, str | int | float)}
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise ValidationError("image", f"could not decode the image ({e.__class__.__name__}: {e})") from e
        items.pop("parameters", None)
        text, parsed = self.service.png_info(data)
        return {"info": text, "items": items, "parameters": parsed}

    # --- progress and control ---------------------------------------------------------------------
    async def progress(
        self, skip_current_image: Annotated[bool, Query(description="Leave the live preview out.")] = False
    ) -> dict[str, Any]:
        """A1111's progress: fraction done, ETA, job state and the live preview (base64 PNG)."""
        p = self.service.progress()
        image = p.get("current_image")
        return {
            "progress": p["progress"],
            "eta_relative": p["eta_relative"],
            "state": p["state"],
            "current_image": None if skip_current_image or image is None else payloads.encode_png_base64(image),
            "textinfo": p.get("textinfo") or None,
            "current_task": p["state"]["job"] or None,
        }

    async def interrupt(self) -> dict[str, Any]:
        """Stop the running job after its current step; the images finished so far are returned."""
        self.service.interrupt()
        return {}

    async def skip(self) -> dict[str, Any]:
        """Skip the running batch of the job and go on with the next."""
        self.service.skip()
        return {}

    # --- options and models -----------------------------------------------------------------------
    def get_options(self) -> dict[str, Any]:
        """All options (ours, then A1111's names); ``sd_model_checkpoint`` is the loaded checkpoint's title."""
        out = a1111_lists.options_view(self.service.settings)
        current = self.service.current_checkpoint()
        if current is not None:
            out["sd_model_checkpoint"] = current.title
        return out

    def set_options(self, body: Annotated[dict[str, Any], Body()]) -> None:
        """Validate and apply options (persisted); ``sd_model_checkpoint`` switches the model."""
        payloads.check_unicode(body, "options")
        values = self.option_writer.values(body, self.service.settings)  # A1111 names kept; others a 422
        ckpt = values.get("sd_model_checkpoint")
        if ckpt is not None:
            payloads.check_checkpoint_name(ckpt, "sd_model_checkpoint")
            current = self.service.current_checkpoint()
            if not ckpt or (current is not None and ckpt in current.aliases):
                values.pop("sd_model_checkpoint")  # already loaded (or cleared): nothing to switch
            else:
                self.service.find_checkpoint(ckpt)  # 404 "not found" before anything changes
        self.service.update_settings(values, may_raise_limits=bool(self.options.api_auth))  # 403 without a log-in
        return None

    def cmd_flags(self) -> dict[str, Any]:
        """The command-line flags (credentials redacted)."""
        out = {}
        for key, value in sorted(vars(self.options).items()):
            if key in SECRET_FLAGS and value:
                value = "***"
            if isinstance(value, list):
                value = [str(v) if isinstance(v, Path) else v for v in value]
            out[key] = str(value) if isinstance(value, Path) else value
        out["precision_in_use"] = self.service.precision_info()["label"]  # e.g. "bf16" on an AMX / AVX-512 BF16 CPU
        return out

    def samplers(self) -> list[dict[str, Any]]:
        """A1111's records: name, aliases and the sampler's options (its default schedule among them)."""
        return [{"name": s.name, "aliases": list(s.aliases), "options": s.a1111_options()} for s in samplers.SAMPLERS]

    def schedulers(self) -> list[dict[str, Any]]:
        return [schedule.record() for schedule in samplers.SCHEDULES]

    def sd_models(self) -> list[dict[str, Any]]:
        return [
            {
                "title": i.title,
                "model_name": i.model_name,
                "hash": i.shorthash,
                "sha256": i.sha256,
                "filename": i.filename,
                "config": i.config,
            }
            for i in self.service.checkpoints()
        ]

    def refresh_checkpoints(self) -> None:
        """Rescan the model folders (after the running job)."""
        self.service.refresh_checkpoints()
        return None

    def unload_checkpoint(self) -> dict[str, Any]:
        self.service.unload_checkpoint()
        return {}

    def reload_checkpoint(self) -> dict[str, Any]:
        """Load the current checkpoint again from disk (or the first one when none is loaded)."""
        self.service.reload_checkpoint()
        return {}

    def memory(self) -> dict[str, Any]:
        return self.service.memory()

    def scripts(self) -> dict[str, list[str]]:
        """Selectable scripts and enabled extensions by tab, lower-cased as A1111 lists them."""
        extensions = [n.lower() for n in self.service.enabled_extension_names()]
        return {
            tab: [s.title.lower() for s in self.service.scripts(tab)] + extensions for tab in ("txt2img", "img2img")
        }
