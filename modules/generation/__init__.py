"""generation: ``processing.process(request, ctx)``, the single entry point, split by its steps:
``job`` (typed job), ``inputs`` (image/mask/depth geometry), ``latents``, ``sampling``, ``outputs``.

May import: modules.core, modules.models.
"""
