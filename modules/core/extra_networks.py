"""A1111's extra-network tags in prompts: ``<lora:name:w>``, ``<lora:name:te_w:unet_w>``, ``<lyco:...>``.

As A1111's ``extra_networks.parse_prompt``: every ``<kind:args>`` tag is removed from the text that is
encoded (the prompt itself, its infotext and the images' prompts keep it); ``args`` is split at ``:``
into positional values and ``key=value`` pairs.  For ``lora`` (and its old spelling ``lyco``) the first
value is the network's name, the second the text-encoder multiplier (default 1), the third the UNet
multiplier (default: the text-encoder one); ``te=`` and ``unet=`` name them (``dyn=`` is accepted and
ignored, as this program has no dynamic-rank option).  A tag whose two multipliers are 0 is off.
Plain data only: which file a name stands for is the model layer's business.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from modules.core.errors import ValidationError

TAG = re.compile(r"<(\w+):([^>]+)>")
NETWORK_KINDS = ("lora", "lyco")


@dataclass(frozen=True)
class NetworkTag:
    """One ``<lora:...>`` tag: the network's name and its two multipliers."""

    name: str
    te: float = 1.0
    unet: float = 1.0

    @property
    def off(self) -> bool:
        return self.te == 0 and self.unet == 0


@dataclass(frozen=True)
class ParsedPrompt:
    text: str  # the prompt without its tags, what the text encoder sees
    networks: tuple[NetworkTag, ...]  # lora / lyco tags in the order written
    other: tuple[str, ...] = ()  # tags of kinds this program has no networks for (hypernet, ...), as written


def strip_tags(text: str) -> str:
    """The prompt without any ``<kind:args>`` tag (A1111 replaces each by nothing)."""
    return TAG.sub("", text)


def parse_prompt(text: str, field: str = "prompt") -> ParsedPrompt:
    """The text without tags and the network tags in it; a multiplier that is no number is a ValidationError."""
    networks: list[NetworkTag] = []
    other: list[str] = []
    for m in TAG.finditer(text):
        kind, args = m.group(1).lower(), m.group(2)
        if kind in NETWORK_KINDS:
            networks.append(_network(args, m.group(0), field))
        else:
            other.append(m.group(0))
    return ParsedPrompt(strip_tags(text), tuple(networks), tuple(other))


def _network(args: str, tag: str, field: str) -> NetworkTag:
    positional: list[str] = []
    named: dict[str, str] = {}
    for item in args.split(":"):
        key, sep, value = item.partition("=")
        if sep and key.strip() in ("te", "unet", "dyn"):
            named[key.strip()] = value.strip()
        else:
            positional.append(item)
    name = positional[0].strip() if positional else ""
    if not name:
        raise ValidationError(field, f"{tag}: no network name (write <lora:name:weight>)")
    te = _number(named.get("te", positional[1] if len(positional) > 1 else "1"), tag, field)
    unet = _number(named.get("unet", positional[2] if len(positional) > 2 else str(te)), tag, field)
    return NetworkTag(name, te, unet)


def _number(text: str, tag: str, field: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValidationError(field, f"{tag}: {text.strip()!r} is not a multiplier (a number such as 0.8)") from None
    if not math.isfinite(value) or abs(value) > 100:
        raise ValidationError(field, f"{tag}: multiplier {text.strip()} is outside -100..100")
    return value


def prompt_networks(*prompts: str, fields: tuple[str, ...] = ("prompt", "negative_prompt")) -> list[NetworkTag]:
    """The network tags of several prompts (prompt, then negative prompt), the ones that are off dropped."""
    found: list[NetworkTag] = []
    for i, text in enumerate(prompts):
        found += [t for t in parse_prompt(text, fields[i] if i < len(fields) else "prompt").networks if not t.off]
    return found


def lora_tag(name: str, multiplier: float = 1.0) -> str:
    """The tag the Extra Networks panel inserts for a LoRA (A1111's ``<lora:name:1>``)."""
    return f"<lora:{name}:{multiplier:g}>"
