"""What a user brings besides checkpoints, for one Service: LoRA networks, embeddings, VAE files.

``ExtraNetworks.create(...)`` builds the three registries over their folders (``models/Lora``,
``embeddings``, ``models/VAE`` plus the extra flags' folders) and the per-model state that applies
them (``NetworkStack``, ``VaeSwitcher``).  Built by the composition root, handed to ``process``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from modules.models.embeddings import EmbeddingDatabase
from modules.models.networks import NetworkRegistry, NetworkStack
from modules.models.vae_files import VaeRegistry, VaeSwitcher

log = logging.getLogger(__name__)


@dataclass
class ExtraNetworks:
    networks: NetworkStack
    embeddings: EmbeddingDatabase
    vae: VaeSwitcher

    @classmethod
    def create(cls, *, lora_dirs: list[Path], embedding_dirs: list[Path], vae_dirs: list[Path],
               checkpoint_dirs: list[Path] = (), allow_unsafe: bool = False) -> ExtraNetworks:  # fmt: skip
        """The registries over their folders, scanned once."""
        loras = NetworkRegistry(lora_dirs)
        vaes = VaeRegistry(vae_dirs, list(checkpoint_dirs))
        found = loras.refresh(), vaes.refresh()
        log.info("Found %d LoRA file(s) and %d VAE file(s)", len(found[0]), len(found[1]))
        return cls(
            NetworkStack(loras, allow_unsafe=allow_unsafe),
            EmbeddingDatabase(embedding_dirs, allow_unsafe=allow_unsafe),
            VaeSwitcher(vaes, allow_unsafe=allow_unsafe),
        )

    @property
    def lora_registry(self) -> NetworkRegistry:
        return self.networks.registry

    @property
    def vae_registry(self) -> VaeRegistry:
        return self.vae.registry
