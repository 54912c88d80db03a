"""A1111's built-in X/Y/Z plot with positional ``script_args``, translated to our named arguments.

A1111 1.10 ``scripts/xyz_grid.py`` takes, in order: x_type, x_values, x_values_dropdown, y_type,
y_values, y_values_dropdown, z_type, z_values, z_values_dropdown, draw_legend, include_lone_images,
include_sub_grids, no_fixed_seeds, vary_seeds_x, vary_seeds_y, vary_seeds_z, margin_size, csv_mode
(before 1.7: without the three vary_seeds).  An axis type is an index into A1111's axis option list
*as its tab shows it* (txt2img leaves out the img2img-only options and the other way round); the
labels we have an axis for map to it, the others are refused naming the option.
"""

from __future__ import annotations

from typing import Any

from modules.core.errors import ValidationError

TITLES = ("x/y/z plot",)

# A1111 1.10's axis_options in order: (label, tab) with tab "" for both, "txt2img" or "img2img" only.
A1111_AXES: tuple[tuple[str, str], ...] = (
    ("Nothing", ""), ("Seed", ""), ("Var. seed", ""), ("Var. strength", ""), ("Steps", ""),
    ("Hires steps", "txt2img"), ("CFG Scale", ""), ("Image CFG Scale", "img2img"), ("Prompt S/R", ""),
    ("Prompt order", ""), ("Sampler", "txt2img"), ("Hires sampler", "txt2img"), ("Sampler", "img2img"),
    ("Checkpoint name", ""), ("Negative Guidance minimum sigma", ""), ("Sigma Churn", ""), ("Sigma min", ""),
    ("Sigma max", ""), ("Sigma noise", ""), ("Schedule type", ""), ("Schedule min sigma", ""),
    ("Schedule max sigma", ""), ("Schedule rho", ""), ("Beta schedule alpha", ""), ("Beta schedule beta", ""),
    ("Eta", ""), ("Clip skip", ""), ("Denoising", ""), ("Initial noise multiplier", ""), ("Extra noise", ""),
    ("Hires upscaler", "txt2img"), ("Cond. Image Mask Weight", "img2img"), ("VAE", ""), ("Styles", ""),
    ("UniPC Order", ""), ("Face restore", ""), ("Token merging ratio", ""), ("Token merging ratio high-res", ""),
    ("Always discard next-to-last sigma", ""), ("SGM noise multiplier", ""), ("Refiner checkpoint", ""),
    ("Refiner switch at", ""), ("RNG source", ""), ("FP8 mode", ""), ("Size", ""),
)  # fmt: skip
# A1111 labels our X/Y/Z plot has an axis for (same names: extensions-builtin/xyz_plot/axes.py)
OURS = {"Nothing", "Seed", "Var. seed", "Var. strength", "Steps", "CFG Scale", "Prompt S/R", "Sampler",
        "Checkpoint name", "Schedule type", "Clip skip", "Denoising"}  # fmt: skip
WITH_CHOICES = {"Sampler", "Checkpoint name", "Schedule type"}  # A1111 takes these from the dropdown list
ORDER_1_10 = ("x_type", "x_values", "x_values_dropdown", "y_type", "y_values", "y_values_dropdown", "z_type",
              "z_values", "z_values_dropdown", "draw_legend", "include_lone_images", "include_sub_grids",
              "no_fixed_seeds", "vary_seeds_x", "vary_seeds_y", "vary_seeds_z", "margin_size", "csv_mode")  # fmt: skip
ORDER_1_6 = (*ORDER_1_10[:13], "margin_size", "csv_mode")
# A1111 arguments we have no counterpart for: (name, values that mean "not asked for")
UNSUPPORTED = {"include_sub_grids": (False, None), "no_fixed_seeds": (False, None), "vary_seeds_x": (False, None),
               "vary_seeds_y": (False, None), "vary_seeds_z": (False, None), "margin_size": (0, None)}  # fmt: skip


def axis_labels(tab: str) -> list[str]:
    """A1111's X/Y/Z axis type dropdown in ``tab`` (its indices are what positional script_args send)."""
    return [label for label, only in A1111_AXES if only in ("", tab)]


def is_xyz(script_name: str | None) -> bool:
    return (script_name or "").strip().lower() in TITLES


def named_args(args: list[Any], *, img2img: bool, warnings: list[str]) -> dict[str, Any]:
    """A1111's positional X/Y/Z arguments -> ours: x_type (axis name), x_values, ..., draw_legend, include_cells."""
    order = ORDER_1_6 if len(args) == len(ORDER_1_6) else ORDER_1_10
    if len(args) > len(ORDER_1_10):
        raise ValidationError("script_args", f"X/Y/Z plot takes at most {len(ORDER_1_10)} positional arguments "
                              f"({', '.join(ORDER_1_10)}), got {len(args)}")  # fmt: skip
    given = dict(zip(order, args, strict=False))
    csv_mode = bool(given.get("csv_mode"))
    labels = axis_labels("img2img" if img2img else "txt2img")
    out: dict[str, Any] = {}
    for which in ("x", "y", "z"):
        axis = _axis(given.get(f"{which}_type", 0), labels, which)
        out[f"{which}_type"] = axis
        values = given.get(f"{which}_values") or ""
        dropdown = given.get(f"{which}_values_dropdown") or []
        if axis in WITH_CHOICES and not csv_mode and dropdown:
            values = [str(v) for v in dropdown]
        out[f"{which}_values"] = values
    out["draw_legend"] = given.get("draw_legend", True) not in (False, 0, "false")
    out["include_cells"] = given.get("include_lone_images", False) not in (False, 0, "false", None)
    asked = [k for k, idle in UNSUPPORTED.items() if k in given and given[k] not in idle]
    if asked:
        warnings.append(f"script_args: X/Y/Z plot's {', '.join(asked)} are not available here; ignored")
    return out


def _axis(value: Any, labels: list[str], which: str) -> str:
    """An axis type index (A1111's dropdown position) or label -> our axis name; refused if we have none."""
    field = f"script_args.{which}_type"
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValidationError(field, f"expected an axis index or name, got {value!r}")
    if isinstance(value, str) and not value.strip().lstrip("-").isdigit():
        return value  # a name: checked by the script
    index = int(value)
    if not 0 <= index < len(labels):
        raise ValidationError(field, f"axis index {index} is outside A1111's list of {len(labels)} axis types")
    label = labels[index]
    if label not in OURS:
        raise ValidationError(field, f"axis {index} is A1111's {label!r}, which this program has no axis for; "
                              f"available: {', '.join(sorted(OURS))} (or send axis names)")  # fmt: skip
    return label
