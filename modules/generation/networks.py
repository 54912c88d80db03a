"""Steps 1 and 5 for what users bring: styles, LoRA networks, the VAE choice, embeddings, tiling.

* ``apply_styles``: the request's ``styles`` (styles.csv) applied to prompt and negative prompt.
* ``prepare``: the ``<lora:...>`` tags of prompt and negative prompt merged into the model
  (``NetworkStack``: nothing re-done for the set already merged, the exact weights back without
  tags), the ``sd_vae`` setting's VAE loaded, the embeddings folder read for this text encoder;
  their infotext (``Lora hashes``, ``VAE hash``, ``VAE``, ``Tiling``) and cache keys.
* ``conditioning``: the prompts without their tags, encoded with the embeddings' vectors (``TI hashes``).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from modules.core import extra_networks as tags
from modules.core.request import GenerationRequest
from modules.generation.conditioning import pad_to_same_length, used_embeddings
from modules.generation.job import Job, ProcessingContext, PromptConditioning
from modules.models import embeddings as ti
from modules.models.networks import NetworkNotFoundError, lora_hashes


def apply_styles(request: GenerationRequest, ctx: ProcessingContext, warnings: list[str]) -> GenerationRequest:
    """The request with its styles applied to its prompts (and ``styles`` emptied); unknown names warned about."""
    if not request.styles:
        return request
    if ctx.styles is None:
        warnings.append(f"styles {', '.join(request.styles)} not applied: no styles.csv here")
        return dataclasses.replace(request, styles=[])
    prompt, negative, missing = ctx.styles.apply(request.prompt, request.negative_prompt, list(request.styles))
    if missing:
        warnings.append(f"styles not found in styles.csv: {', '.join(missing)}")
    return dataclasses.replace(request, prompt=prompt, negative_prompt=negative, styles=[])


def prepare(job: Job) -> None:
    """Networks, VAE and embeddings in place for the job, before its prompts are encoded."""
    r, extra, model = job.request, job.ctx.extra, job.model
    wanted = tags.prompt_networks(r.prompt, r.negative_prompt)
    other = [t for text in (r.prompt, r.negative_prompt) for t in tags.parse_prompt(text).other]
    if other:
        job.result.warnings.append(f"extra networks of kinds this program has not, ignored: {', '.join(other)}")
    if r.tiling:
        job.infotext["Tiling"] = "True"
    if extra is None:
        if wanted:
            job.result.warnings.append("LoRA tags ignored: this program was started without LoRA folders")
        return
    found = []
    for tag in wanted:
        try:
            extra.networks.registry.get(tag.name)
        except NetworkNotFoundError:
            job.result.warnings.append(f"couldn't find Lora with name {tag.name}")
            continue
        found.append((tag.name, tag.te, tag.unet))
    applied = extra.networks.apply(model, found)
    if applied:
        job.infotext["Lora hashes"] = lora_hashes(applied)
    vae = extra.vae.apply(model, job.settings.sd_vae, Path(job.loaded.info.filename))
    if vae is not None:
        job.infotext.update(vae.infotext())
    extra.embeddings.refresh(model.tokenizer, int(model.text_encoder.get_input_embeddings().weight.shape[-1]))
    job.text_key = f"{extra.networks.applied_key(model)}|{extra.embeddings.key}"
    job.vae_key = f"{vae.shorthash if vae else ''}|{'tiling' if r.tiling else ''}"
    _warn_failed_embeddings(job)


def _warn_failed_embeddings(job: Job) -> None:
    """A prompt naming an embedding file that was refused (unsafe, unreadable) is told why."""
    db = job.ctx.extra.embeddings
    for name, why in db.failed.items():
        word = re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])")
        if word.search(job.request.prompt) or word.search(job.request.negative_prompt):
            job.result.warnings.append(f"embedding {name} not used: {why}")


def conditioning(job: Job) -> PromptConditioning:
    """Prompt and negative prompt contexts (tags removed, embeddings in), cached, padded to the same length."""
    s, cache, model = job.settings, job.ctx.conditioning, job.model
    db = job.ctx.extra.embeddings if job.ctx.extra is not None else None
    key = f"{job.loaded.key}|{job.text_key}"
    args = {"clip_skip": s.CLIP_stop_at_last_layers, "emphasis": s.emphasis, "backtrack": s.comma_padding_backtrack,
            "embeddings": db}  # fmt: skip
    prompt, negative = tags.strip_tags(job.request.prompt), tags.strip_tags(job.request.negative_prompt)
    used = used_embeddings(model.tokenizer, prompt, db) + used_embeddings(model.tokenizer, negative, db)
    if used:
        job.infotext["TI hashes"] = ti.ti_hashes(used)
    cond = cache.get(key, model, prompt, **args)
    uncond = cache.get(key, model, negative, **args)
    return PromptConditioning(*pad_to_same_length(cond, uncond, cache.get(key, model, "", **args)))
