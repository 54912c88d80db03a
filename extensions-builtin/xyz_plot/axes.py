"""X/Y/Z plot axes: A1111's axis type names, value parsing (lists and ranges) and how each applies."""

from __future__ import annotations

import csv
import dataclasses
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from io import StringIO
from typing import Any

from modules.core.errors import ValidationError
from modules.core.request import GenerationRequest
from modules.core.samplers import SCHEDULE_TYPES, find_schedule, sampler_names, split_sampler_name

_INT_RANGE = re.compile(r"^\s*([+-]?\d+)\s*-\s*([+-]?\d+)(?:\s*\(([+-]\d+)\s*\))?\s*$")
_INT_COUNT = re.compile(r"^\s*([+-]?\d+)\s*-\s*([+-]?\d+)\s*\[(\d+)\]\s*$")
_FLOAT = r"[+-]?\d+(?:\.\d*)?|[+-]?\.\d+"
_FLOAT_RANGE = re.compile(rf"^\s*({_FLOAT})\s*-\s*({_FLOAT})(?:\s*\(([+-](?:\d+(?:\.\d*)?|\.\d+))\s*\))?\s*$")
_FLOAT_COUNT = re.compile(rf"^\s*({_FLOAT})\s*-\s*({_FLOAT})\s*\[(\d+)\]\s*$")


def split_values(text: str) -> list[str]:
    """Comma-separated values; double quotes protect commas inside a value (CSV rules)."""
    rows = list(csv.reader(StringIO(text or ""), skipinitialspace=True))
    return [v.strip() for row in rows for v in row if v.strip()]


def parse_ints(items: list[str]) -> list[int]:
    out: list[int] = []
    for item in items:
        if m := _INT_COUNT.match(item):
            a, b, n = int(m.group(1)), int(m.group(2)), int(m.group(3))
            out += [int(round(a + (b - a) * i / max(1, n - 1))) for i in range(n)]
        elif m := _INT_RANGE.match(item):
            a, b = int(m.group(1)), int(m.group(2))
            step = int(m.group(3)) if m.group(3) else (1 if b >= a else -1)
            if step == 0 or (b - a) * step < 0:
                raise ValueError(f"range {item!r} never reaches its end")
            out += list(range(a, b + (1 if step > 0 else -1), step))
        else:
            out.append(int(item))
    return out


def parse_floats(items: list[str]) -> list[float]:
    out: list[float] = []
    for item in items:
        if m := _FLOAT_COUNT.match(item):
            a, b, n = float(m.group(1)), float(m.group(2)), int(m.group(3))
            out += [round(a + (b - a) * i / max(1, n - 1), 10) for i in range(n)]
        elif m := _FLOAT_RANGE.match(item):
            a, b = float(m.group(1)), float(m.group(2))
            step = float(m.group(3)) if m.group(3) else (1.0 if b >= a else -1.0)
            if step == 0 or (b - a) * step < 0:
                raise ValueError(f"range {item!r} never reaches its end")
            count = int(math.floor((b - a) / step + 1e-9)) + 1
            out += [round(a + i * step, 10) for i in range(count)]
        else:
            out.append(float(item))
    return out


@dataclass(frozen=True)
class Axis:
    """One axis type: how values are parsed and applied to a request, and how a value is labelled."""

    name: str
    parse: Callable[[list[str]], list[Any]]
    apply: Callable[[GenerationRequest, Any], GenerationRequest]
    choices: Callable[[], list[str]] | None = None
    label: Callable[[str, Any], str] = staticmethod(lambda name, v: f"{name}: {v}")
    changes_model: bool = False


def _set(field: str) -> Callable[[GenerationRequest, Any], GenerationRequest]:
    return lambda r, v: dataclasses.replace(r, **{field: v})


def _override(key: str) -> Callable[[GenerationRequest, Any], GenerationRequest]:
    return lambda r, v: dataclasses.replace(r, override_settings={**r.override_settings, key: v})


def _choice(names: Callable[[], list[str]], what: str) -> Callable[[list[str]], list[str]]:
    def parse(items: list[str]) -> list[str]:
        known = {n.lower(): n for n in names()}
        bad = [i for i in items if i.lower() not in known]
        if bad:
            raise ValueError(f"unknown {what} {bad[0]!r}; known: {', '.join(names())}")
        return [known[i.lower()] for i in items]

    return parse


def _parse_samplers(items: list[str]) -> list[str]:
    """Sampler names or A1111 aliases (``k_euler_a``, ``DPM++ 2M Karras`` -> its sampler)."""
    found = [split_sampler_name(i) for i in items]
    if None in found:
        bad = items[found.index(None)]
        raise ValueError(f"unknown sampler {bad!r}; known: {', '.join(sampler_names())}")
    return [f[0].name for f in found]


def _parse_schedules(items: list[str]) -> list[str]:
    """Schedule type labels or A1111's /schedulers names (``sgm_uniform``, ``karras``)."""
    found = [find_schedule(i) for i in items]
    if None in found:
        bad = items[found.index(None)]
        raise ValueError(f"unknown schedule type {bad!r}; known: {', '.join(SCHEDULE_TYPES)}")
    return [f.label for f in found]


def _prompt_sr(r: GenerationRequest, pair: tuple[str, str]) -> GenerationRequest:
    search, replace = pair
    return dataclasses.replace(
        r, prompt=r.prompt.replace(search, replace), negative_prompt=r.negative_prompt.replace(search, replace)
    )


def _parse_sr(items: list[str]) -> list[tuple[str, str]]:
    """Prompt S/R: the first value is searched for, every value (itself first) replaces it."""
    return [(items[0], v) for v in items] if items else []


def _depth_source(r: GenerationRequest, v: str) -> GenerationRequest:
    if v == "MiDaS":
        return dataclasses.replace(r, depth_map=None)
    if r.depth_map is None:
        raise ValidationError("script_args", "the 'Depth source: uploaded map' cells need a depth map in the request")
    return r


AXES: dict[str, Axis] = {
    a.name: a
    for a in [
        Axis("Nothing", lambda items: [None], lambda r, v: r, label=lambda n, v: ""),
        Axis("Seed", parse_ints, _set("seed")),
        Axis("Var. seed", parse_ints, _set("subseed")),
        Axis("Var. strength", parse_floats, _set("subseed_strength")),
        Axis("Steps", parse_ints, _set("steps")),
        Axis("CFG Scale", parse_floats, _set("cfg_scale")),
        Axis("Denoising", parse_floats, _set("denoising_strength")),
        Axis("Sampler", _parse_samplers, _set("sampler_name"), choices=sampler_names),
        Axis("Schedule type", _parse_schedules, _set("scheduler"), choices=lambda: SCHEDULE_TYPES),
        Axis("Checkpoint name", lambda items: items, _override("sd_model_checkpoint"), changes_model=True),
        Axis("Prompt S/R", _parse_sr, _prompt_sr, label=lambda n, v: v[1]),
        Axis("Depth source", _choice(lambda: ["MiDaS", "uploaded map"], "depth source"), _depth_source,
             choices=lambda: ["MiDaS", "uploaded map"]),
        Axis("Clip skip", parse_ints, _override("CLIP_stop_at_last_layers")),
        Axis("Hires steps", parse_ints, _set("hr_second_pass_steps")),  # txt2img with hires. fix
        Axis("Hires upscaler", lambda items: items, _set("hr_upscaler")),  # names checked when the cell runs
        Axis("VAE", lambda items: items, _override("sd_vae")),
        Axis("Upscaler", lambda items: items, _override("upscaler_for_img2img")),  # img2img: init images enlarged  # Automatic, None or a VAE file; checked per cell
    ]
}  # fmt: skip


def parse_axis(kind: str | None, values: str | list | None, which: str) -> tuple[Axis, list[Any]]:
    """The axis and its parsed values; 'Nothing' (or no type) is a single empty position."""
    axis = AXES.get(kind or "Nothing")
    if axis is None:
        raise ValidationError(f"script_args.{which}_type", f"unknown axis type {kind!r}; known: {', '.join(AXES)}")
    if axis.name == "Nothing":
        return axis, [None]
    items = [str(v) for v in values] if isinstance(values, list) else split_values(values or "")
    if not items:
        raise ValidationError(f"script_args.{which}_values", f"no values given for the {axis.name} axis")
    try:
        parsed = axis.parse(items)
    except ValueError as e:
        raise ValidationError(f"script_args.{which}_values", f"{axis.name}: {e}") from e
    if not parsed:
        raise ValidationError(f"script_args.{which}_values", f"no values given for the {axis.name} axis")
    return axis, parsed


def fixed_seed(seed: int) -> int:
    """All cells share one seed: -1 is drawn once for the whole plot (as A1111)."""
    return seed if seed != -1 else random.randrange(4294967294)
