"""app: the ``Service`` (the only door for front ends), its job worker, the extension registry, the
command-line ``Options`` and ``bootstrap`` (the composition root that builds the Service).

May import: modules.core, modules.models, modules.generation.
"""
