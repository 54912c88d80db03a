"""LoRA and LyCORIS networks: files in a folder, mapped onto the loaded model, merged into its weights.

* ``files``: the folder scan (``NetworkRegistry``), names/aliases, metadata, A1111's hashes, the
  ``GET /sdapi/v1/loras`` listing.
* ``keys``: which module of our diffusers UNet / transformers text encoder each key changes
  (kohya, LDM-style kohya, diffusers and PEFT spellings).
* ``formulas``: the change each type stands for (LoRA/LoCon, LoHa, LoKr, full diff).
* ``network``: one file read for one model, checked (another architecture is refused).
* ``stack``: ``NetworkStack.apply(model, [(name, te_mult, unet_mult), ...])``, merge and exact restore.
* ``swap``: replacing parameter tensors with the originals kept (also used for VAE files).
"""

from modules.models.networks.files import NetworkFile, NetworkNotFoundError, NetworkRegistry, network_hash
from modules.models.networks.network import ModulePatch, Network, load_network
from modules.models.networks.stack import AppliedNetwork, NetworkStack, Request, lora_hashes

__all__ = [
    "AppliedNetwork",
    "ModulePatch",
    "Network",
    "NetworkFile",
    "NetworkNotFoundError",
    "NetworkRegistry",
    "NetworkStack",
    "Request",
    "load_network",
    "lora_hashes",
    "network_hash",
]
