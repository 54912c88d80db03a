"""The sampler and schedule-type tables as data: A1111 1.10's names, aliases and options, and look-ups.

Plain data (no torch): front ends list and check names with it; ``generation.sampling`` runs what a
spec names.  Any sampler takes any schedule type (A1111 1.9+); the timestep samplers (DDIM, PLMS,
UniPC, DDIM CFG++) ignore it, as A1111's do.  An unknown schedule type falls back to Automatic with a
warning; an unknown sampler is a ValidationError (A1111 would silently use its first one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from modules.core.errors import ValidationError


@dataclass(frozen=True)
class ScheduleType:
    """One of A1111's ``sd_schedulers.schedulers``: its /sdapi/v1/schedulers record."""

    name: str
    label: str
    default_rho: float = -1.0
    need_inner_model: bool = False
    aliases: tuple[str, ...] | None = None

    def record(self) -> dict[str, Any]:
        return {"name": self.name, "label": self.label, "aliases": list(self.aliases) if self.aliases else None,
                "default_rho": self.default_rho, "need_inner_model": self.need_inner_model}  # fmt: skip


SCHEDULES: list[ScheduleType] = [
    ScheduleType("automatic", "Automatic"),
    ScheduleType("uniform", "Uniform", need_inner_model=True),
    ScheduleType("karras", "Karras", default_rho=7.0),
    ScheduleType("exponential", "Exponential"),
    ScheduleType("polyexponential", "Polyexponential", default_rho=1.0),
    ScheduleType("sgm_uniform", "SGM Uniform", need_inner_model=True, aliases=("SGMUniform",)),
    ScheduleType("kl_optimal", "KL Optimal"),
    ScheduleType("align_your_steps", "Align Your Steps"),
    ScheduleType("simple", "Simple", need_inner_model=True),
    ScheduleType("normal", "Normal", need_inner_model=True),
    ScheduleType("ddim", "DDIM", need_inner_model=True),
    ScheduleType("beta", "Beta", need_inner_model=True),
]
SCHEDULE_TYPES = [s.label for s in SCHEDULES]  # the labels, in A1111's order


@dataclass(frozen=True)
class SamplerSpec:
    """One sampler: ``kind`` "k" (a k-diffusion-style function over sigmas) or "timesteps" (diffusers /
    DDIM-family loops over the model's timesteps, which ignore the schedule type)."""

    name: str
    function: str  # generation.sampling function name (k-diffusion's name for k samplers)
    aliases: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)  # A1111's options (scheduler, second_order, ...)
    kind: str = "k"
    scheduler: str | None = None  # diffusers class for the timestep samplers run by diffusers
    scheduler_options: dict[str, Any] = field(default_factory=dict)
    uses_eta: bool = False  # DDIM's eta (eta_ddim); the k samplers with an eta use eta_ancestral

    @property
    def default_schedule(self) -> str:
        """What "Automatic" means for this sampler: its A1111 default, else the model's own sigmas."""
        return label_of(self.options.get("scheduler", "automatic"))

    @property
    def schedules(self) -> tuple[str, ...]:
        return tuple(SCHEDULE_TYPES)

    @property
    def stochastic(self) -> bool:
        return self.function in _STOCHASTIC

    def a1111_options(self) -> dict[str, str]:
        """The /sdapi/v1/samplers ``options`` (A1111 sends its option values as strings)."""
        return {k: str(v) for k, v in self.options.items()}


_STOCHASTIC = {"sample_euler_ancestral", "sample_dpm_2_ancestral", "sample_dpmpp_2s_ancestral", "sample_dpmpp_sde",
               "sample_dpmpp_2m_sde", "sample_dpmpp_3m_sde", "sample_lcm", "restart_sampler"}  # fmt: skip
_KARRAS, _EXP = {"scheduler": "karras"}, {"scheduler": "exponential"}
_SECOND, _BROWN, _DISCARD = {"second_order": True}, {"brownian_noise": True}, {"discard_next_to_last_sigma": True}
_ENSD = {"uses_ensd": True}
_LEADING = {"timestep_spacing": "leading", "steps_offset": 1}

SAMPLERS: list[SamplerSpec] = [
    SamplerSpec("DPM++ 2M", "sample_dpmpp_2m", ("k_dpmpp_2m",), _KARRAS),
    SamplerSpec("DPM++ SDE", "sample_dpmpp_sde", ("k_dpmpp_sde",), {**_KARRAS, **_SECOND, **_BROWN}),
    SamplerSpec("DPM++ 2M SDE", "sample_dpmpp_2m_sde", ("k_dpmpp_2m_sde",), {**_EXP, **_BROWN}),
    SamplerSpec("DPM++ 2M SDE Heun", "sample_dpmpp_2m_sde", ("k_dpmpp_2m_sde_heun",),
                {**_EXP, **_BROWN, "solver_type": "heun"}),
    SamplerSpec("DPM++ 2S a", "sample_dpmpp_2s_ancestral", ("k_dpmpp_2s_a",), {**_KARRAS, **_ENSD, **_SECOND}),
    SamplerSpec("DPM++ 3M SDE", "sample_dpmpp_3m_sde", ("k_dpmpp_3m_sde",), {**_EXP, **_DISCARD, **_BROWN}),
    SamplerSpec("Euler a", "sample_euler_ancestral", ("k_euler_a", "k_euler_ancestral"), _ENSD),
    SamplerSpec("Euler", "sample_euler", ("k_euler",)),
    SamplerSpec("LMS", "sample_lms", ("k_lms",)),
    SamplerSpec("Heun", "sample_heun", ("k_heun",), _SECOND),
    SamplerSpec("DPM2", "sample_dpm_2", ("k_dpm_2",), {**_KARRAS, **_DISCARD, **_SECOND}),
    SamplerSpec("DPM2 a", "sample_dpm_2_ancestral", ("k_dpm_2_a",), {**_KARRAS, **_DISCARD, **_ENSD, **_SECOND}),
    SamplerSpec("DPM fast", "sample_dpm_fast", ("k_dpm_fast",), _ENSD),
    SamplerSpec("DPM adaptive", "sample_dpm_adaptive", ("k_dpm_ad",), _ENSD),
    SamplerSpec("Restart", "restart_sampler", ("restart",), {**_KARRAS, **_SECOND}),
    SamplerSpec("DDIM", "ddim", ("ddim",), kind="timesteps", scheduler="DDIMScheduler",
                scheduler_options={**_LEADING, "set_alpha_to_one": False, "clip_sample": False}, uses_eta=True),
    SamplerSpec("DDIM CFG++", "ddim_cfgpp", ("ddim_cfgpp",), kind="timesteps", uses_eta=True),
    SamplerSpec("PLMS", "plms", ("plms",), kind="timesteps", scheduler="PNDMScheduler",
                scheduler_options={**_LEADING, "skip_prk_steps": True, "set_alpha_to_one": False}),
    SamplerSpec("UniPC", "unipc", ("unipc",), kind="timesteps", scheduler="UniPCMultistepScheduler",
                scheduler_options={"timestep_spacing": "linspace", "solver_order": 2}),
    SamplerSpec("LCM", "sample_lcm", ("k_lcm",)),
]  # fmt: skip


def sampler_names() -> list[str]:
    return [s.name for s in SAMPLERS]


def _norm(name: str) -> str:
    return name.strip().lower().replace("_", " ")


def find_schedule(name: str | None) -> ScheduleType | None:
    """A schedule type by label, /schedulers name or alias ("Karras", "karras", "sgm_uniform", "SGMUniform")."""
    wanted = _norm(name or "automatic")
    for s in SCHEDULES:
        if wanted in {_norm(s.label), _norm(s.name), *(_norm(a) for a in s.aliases or ())}:
            return s
    return None


def label_of(name: str) -> str:
    found = find_schedule(name)
    return found.label if found else "Automatic"


def _exact_sampler(name: str) -> SamplerSpec | None:
    wanted = name.strip().lower()
    return next((s for s in SAMPLERS if wanted == s.name.lower() or wanted in s.aliases), None)


def split_sampler_name(name: str) -> tuple[SamplerSpec, str | None] | None:
    """A name or alias, or an old "<sampler> <schedule>" spelling ("DPM++ 2M Karras") -> (spec, schedule label)."""
    spec = _exact_sampler(name)
    if spec is not None:
        return spec, None
    for s in SCHEDULES[1:]:
        for option in (s.label, s.name, *(s.aliases or ())):
            if name.strip().lower().endswith(" " + option.lower()):
                spec = _exact_sampler(name.strip()[: -len(option) - 1])
                if spec is not None:
                    return spec, s.label
    return None


def find_sampler(name: str | None, default: str = "Euler a") -> SamplerSpec:
    """By name, alias or old "<sampler> Karras" spelling, case-insensitively; unknown: a ValidationError."""
    found = split_sampler_name(name or default)
    if found is None:
        raise ValidationError("sampler_name", f"unknown sampler {name!r}; known: {', '.join(sampler_names())}")
    return found[0]


def schedule_warning(schedule: str | None) -> str | None:
    """The ``info.warnings`` line for a schedule type A1111 would not know (it falls back to Automatic)."""
    if find_schedule(schedule) is not None:
        return None
    return f"unknown schedule type {schedule!r}: used Automatic (known: {', '.join(SCHEDULE_TYPES)})"


def resolve_schedule(spec: SamplerSpec, schedule: str | None) -> str:
    """The schedule label a job uses: "Automatic" (or an unknown name) -> the sampler's default.

    For a k sampler whose A1111 options name no scheduler, "Automatic" stays: the model's own sigmas
    (what Uniform gives).  Timestep samplers keep the requested label (they ignore it, A1111 writes it).
    """
    label = label_of(schedule or "Automatic")
    if label == "Automatic" and spec.kind == "k":
        return spec.default_schedule
    return label


@dataclass(frozen=True)
class SamplerChoice:
    spec: SamplerSpec
    schedule: str
    warnings: tuple[str, ...] = ()


def resolve(sampler_name: str | None, schedule: str | None, default: str = "Euler a") -> SamplerChoice:
    """A1111's ``get_sampler_and_scheduler``: the spec, the schedule label used, and any warning."""
    found = split_sampler_name(sampler_name or default)
    if found is None:
        raise ValidationError("sampler_name", f"unknown sampler {sampler_name!r}; known: {', '.join(sampler_names())}")
    spec, from_name = found
    if from_name is not None and label_of(schedule or "Automatic") == "Automatic":
        schedule = from_name
    warning = schedule_warning(schedule)
    return SamplerChoice(spec, resolve_schedule(spec, schedule), (warning,) if warning else ())
