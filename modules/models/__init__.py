"""models: checkpoint files (scanning, hashing, the safe unpickler), the LDM -> diffusers/transformers
key mapping, loading, the model manager, offloading, precision and speed options, MiDaS.

May import: modules.core, torch, diffusers, transformers, safetensors, omegaconf.
"""
