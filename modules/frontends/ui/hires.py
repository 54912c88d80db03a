"""txt2img's Hires. fix accordion (A1111's controls and defaults) and its values -> request fields."""

from __future__ import annotations

from typing import Any

SAME_SAMPLER, SAME_SCHEDULER = "Use same sampler", "Use same scheduler"
FIELDS = ("enable_hr", "hr_upscaler", "hr_second_pass_steps", "hr_denoising_strength", "hr_scale", "hr_resize_x",
          "hr_resize_y", "hr_sampler_name", "hr_scheduler", "hr_prompt", "hr_negative_prompt", "hr_cfg")  # fmt: skip


def hires_controls(upscalers: list[str], samplers: list[str], schedules: list[str]) -> dict[str, Any]:
    """The accordion's controls by field name (build inside the txt2img parameters column)."""
    import gradio as gr

    with gr.Accordion("Hires. fix", open=False, elem_id="txt2img_hr"):
        enable = gr.Checkbox(label="Hires. fix", value=False, elem_id="txt2img_enable_hr")
        with gr.Row():
            upscaler = gr.Dropdown(upscalers, value=upscalers[0] if upscalers else "Latent", label="Upscaler",
                                   allow_custom_value=True, elem_id="txt2img_hr_upscaler")  # fmt: skip
            steps = gr.Slider(0, 150, value=0, step=1, label="Hires steps", elem_id="txt2img_hires_steps")
            strength = gr.Slider(0.0, 1.0, value=0.7, step=0.01, label="Denoising strength",
                                 elem_id="txt2img_denoising_strength")  # fmt: skip
        with gr.Row():
            scale = gr.Slider(1.0, 4.0, value=2.0, step=0.05, label="Upscale by", elem_id="txt2img_hr_scale")
            resize_x = gr.Slider(0, 2048, value=0, step=8, label="Resize width to", elem_id="txt2img_hr_resize_x")
            resize_y = gr.Slider(0, 2048, value=0, step=8, label="Resize height to", elem_id="txt2img_hr_resize_y")
        with gr.Row():
            sampler = gr.Dropdown([SAME_SAMPLER, *samplers], value=SAME_SAMPLER, label="Hires sampling method",
                                  elem_id="txt2img_hr_sampler")  # fmt: skip
            scheduler = gr.Dropdown([SAME_SCHEDULER, *schedules], value=SAME_SCHEDULER, label="Hires schedule type",
                                    elem_id="txt2img_hr_scheduler")  # fmt: skip
            cfg = gr.Slider(1.0, 30.0, value=7.0, step=0.5, label="Hires CFG Scale", elem_id="txt2img_hr_cfg")
        prompt = gr.Textbox(label="Hires prompt", lines=2, placeholder="empty: the prompt", elem_id="txt2img_hr_prompt")
        negative = gr.Textbox(label="Hires negative prompt", lines=2, placeholder="empty: the negative prompt",
                              elem_id="txt2img_hr_negative_prompt")  # fmt: skip
    return dict(zip(FIELDS, (enable, upscaler, steps, strength, scale, resize_x, resize_y, sampler, scheduler,
                             prompt, negative, cfg), strict=True))  # fmt: skip


def hires_fields(values: dict[str, Any]) -> dict[str, Any]:
    """The accordion's values -> GenerationRequest fields (nothing when the controls are absent or it is off)."""
    if not values.get("enable_hr"):
        return {}
    cfg = values.get("hr_cfg")
    return {
        "enable_hr": True,
        "hr_upscaler": values.get("hr_upscaler") or None,
        "hr_second_pass_steps": int(values.get("hr_second_pass_steps") or 0),
        "denoising_strength": float(values.get("hr_denoising_strength", 0.7)),
        "hr_scale": float(values.get("hr_scale") or 2.0),
        "hr_resize_x": int(values.get("hr_resize_x") or 0),
        "hr_resize_y": int(values.get("hr_resize_y") or 0),
        "hr_sampler_name": None
        if values.get("hr_sampler_name") in (None, "", SAME_SAMPLER)
        else values["hr_sampler_name"],
        "hr_scheduler": None if values.get("hr_scheduler") in (None, "", SAME_SCHEDULER) else values["hr_scheduler"],
        "hr_prompt": values.get("hr_prompt") or "",
        "hr_negative_prompt": values.get("hr_negative_prompt") or "",
        "hr_cfg": None if cfg is None or float(cfg) == float(values.get("cfg_scale", 7.0)) else float(cfg),
    }
