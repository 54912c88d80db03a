"""The sampler table as data: A1111's sampler names, aliases and schedule types, and what each maps to.

Plain data and look-ups (front ends list and check names with it); ``generation.sampling`` builds the
scheduler a spec names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from modules.core.errors import ValidationError

SCHEDULE_TYPES = ["Automatic", "Uniform", "Karras", "Exponential"]
SIGMA_OPTIONS = {"Karras": "use_karras_sigmas", "Exponential": "use_exponential_sigmas"}


@dataclass(frozen=True)
class SamplerSpec:
    name: str
    scheduler: str  # diffusers class name
    options: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    default_schedule: str = "Uniform"  # what "Automatic" means for this sampler (A1111's defaults)
    schedules: tuple[str, ...] = ("Uniform", "Karras", "Exponential")
    uses_eta: bool = False  # DDIM's eta
    stochastic: bool = False  # draws fresh noise every step


_K = {"timestep_spacing": "linspace"}
_LEADING = {"timestep_spacing": "leading", "steps_offset": 1}

SAMPLERS: list[SamplerSpec] = [
    SamplerSpec("DPM++ 2M", "DPMSolverMultistepScheduler", {**_K, "algorithm_type": "dpmsolver++", "solver_order": 2},
                ("k_dpmpp_2m",), default_schedule="Karras"),
    SamplerSpec("DPM++ SDE", "DPMSolverSDEScheduler", _K, ("k_dpmpp_sde",), default_schedule="Karras", stochastic=True),
    SamplerSpec("DPM++ 2M SDE", "DPMSolverMultistepScheduler",
                {**_K, "algorithm_type": "sde-dpmsolver++", "solver_order": 2},
                ("k_dpmpp_2m_sde",), default_schedule="Exponential", stochastic=True),
    SamplerSpec("Euler a", "EulerAncestralDiscreteScheduler", _K, ("k_euler_a", "k_euler_ancestral"),
                schedules=("Uniform",), stochastic=True),
    SamplerSpec("Euler", "EulerDiscreteScheduler", _K, ("k_euler",)),
    SamplerSpec("LMS", "LMSDiscreteScheduler", _K, ("k_lms",)),
    SamplerSpec("Heun", "HeunDiscreteScheduler", _K, ("k_heun",)),
    SamplerSpec("DPM2", "KDPM2DiscreteScheduler", _K, ("k_dpm_2",), default_schedule="Karras"),
    SamplerSpec("DPM2 a", "KDPM2AncestralDiscreteScheduler", _K, ("k_dpm_2_a",), default_schedule="Karras",
                stochastic=True),
    SamplerSpec("DDIM", "DDIMScheduler", {**_LEADING, "set_alpha_to_one": False, "clip_sample": False}, ("ddim",),
                schedules=("Uniform",), uses_eta=True),
    SamplerSpec("PLMS", "PNDMScheduler", {**_LEADING, "skip_prk_steps": True, "set_alpha_to_one": False}, ("plms",),
                schedules=("Uniform",)),
    SamplerSpec("UniPC", "UniPCMultistepScheduler", {**_K, "solver_order": 2}, ("unipc",)),
]  # fmt: skip


def sampler_names() -> list[str]:
    return [s.name for s in SAMPLERS]


def find_sampler(name: str | None, default: str = "Euler a") -> SamplerSpec:
    """By name or alias, case-insensitively; an unknown name is a ValidationError listing the known ones."""
    wanted = (name or default).strip().lower()
    for spec in SAMPLERS:
        if wanted == spec.name.lower() or wanted in spec.aliases:
            return spec
    raise ValidationError("sampler_name", f"unknown sampler {name!r}; known: {', '.join(sampler_names())}")


def resolve_schedule(spec: SamplerSpec, schedule: str | None) -> str:
    """'Automatic' -> the sampler's default; one the sampler cannot do is a ValidationError."""
    schedule = schedule or "Automatic"
    match = next((s for s in SCHEDULE_TYPES if s.lower() == schedule.strip().lower()), None)
    if match is None:
        raise ValidationError("scheduler", f"unknown schedule type {schedule!r}; known: {', '.join(SCHEDULE_TYPES)}")
    if match == "Automatic":
        return spec.default_schedule
    if match not in spec.schedules:
        raise ValidationError("scheduler", f"{spec.name} supports {', '.join(spec.schedules)}, not {match}")
    return match
