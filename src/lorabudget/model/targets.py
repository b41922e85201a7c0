"""Where the adapters go: the config's target names resolved to exact module names inside the chosen layers.

Target names from the config are roles ('query', 'ffn_in': the same on every family, see families.py) or module
names ('attention.output.dense'). They are resolved here to the exact module names
inside the chosen encoder layers, and peft gets that explicit list. Two traps of plain peft are closed that way:
indices in `layers_to_transform` beyond the model's depth are silently ignored by peft, and a short pattern such
as 'dense' also matches the head's own layers (roberta's `classifier.dense`, BERT's `pooler.dense`), which then get
LoRA-wrapped instead of trained in full.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from ..config import AdapterConfig, layer_indices
from ..errors import ModelError
from .families import ROLES, role_module


@dataclass(frozen=True)
class EncoderLayout:
    prefix: str  # e.g. 'roberta.encoder.layer'
    n_layers: int
    linear_names: tuple[str, ...]  # linear modules inside one layer, relative to it
    model_type: str = ""  # the configuration's, which says what the roles are called


def encoder_layout(model: nn.Module) -> EncoderLayout:
    """Find the stack of encoder layers (the largest ModuleList of identical blocks) and its linear modules."""
    best = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0 and "lora" not in name:
            if best is None or len(module) > len(best[1]):
                best = (name, module)
    if best is None:
        raise ModelError(f"cannot find the encoder layers of {type(model).__name__}")
    name, layers = best
    linears = tuple(n for n, m in layers[0].named_modules() if isinstance(m, nn.Linear))
    return EncoderLayout(name, len(layers), linears, model.config.model_type)


def _matches(module_name: str, target: str) -> bool:
    return module_name == target or module_name.endswith("." + target)


def _hits(names: tuple[str, ...] | list[str], target: str) -> list[str]:
    """Modules a target names: the exact name when one exists ('output.dense' is the FFN output, not also
    'attention.output.dense'), else every name it is a dotted suffix of ('dense' names all three)."""
    exact = [n for n in names if n == target]
    return exact or [n for n in names if _matches(n, target)]


def module_name(layout: EncoderLayout, target: str, field: str = "adapter.target_modules") -> str:
    """A role as this family calls it; a module name as it is."""
    if target not in ROLES:
        return target
    try:
        return role_module(target, layout.model_type)
    except ValueError as exc:
        raise ModelError(f"{field}: {exc}") from None


def resolve_targets(layout: EncoderLayout, cfg: AdapterConfig) -> list[str]:
    """Full module names to adapt, in layer order; unknown names and out-of-range layers are errors."""
    valid = ", ".join(layout.linear_names)
    per_layer = []
    for target in cfg.target_modules:
        hits = _hits(layout.linear_names, module_name(layout, target))
        if not hits:
            raise ModelError(f"adapter.target_modules: {target!r} names no linear layer of an encoder layer; "
                             f"roles: {', '.join(ROLES)}; module names: {valid}")
        per_layer.extend(h for h in hits if h not in per_layer)
    layers = layer_indices(cfg.layers, layout.n_layers)
    bad = [i for i in layers if not 0 <= i < layout.n_layers]
    if bad:
        raise ModelError(f"adapter.layers: {bad} out of range; the model has {layout.n_layers} encoder layers "
                         f"(0 to {layout.n_layers - 1})")
    if len(set(layers)) != len(layers):
        raise ModelError(f"adapter.layers lists a layer twice: {layers}")
    if not layers:
        raise ModelError("adapter.layers is empty: name at least one layer")
    targets = [f"{layout.prefix}.{i}.{n}" for i in sorted(layers) for n in per_layer]
    for key in cfg.rank_pattern:
        key = module_name(layout, key, "adapter.rank_pattern")
        if not _hits(per_layer, key) and not _hits(targets, key):
            raise ModelError(f"adapter.rank_pattern: {key!r} matches no adapted module; adapted: "
                             f"{', '.join(per_layer)}")
    return targets


def exact_rank_pattern(targets: list[str], layout: EncoderLayout, cfg: AdapterConfig) -> dict[str, int]:
    """rank_pattern keyed by full module names, resolved with the same rule as target_modules. peft would read
    a key such as 'output.dense' as a suffix pattern and also apply it to 'attention.output.dense'. As in peft,
    the first key that names a module decides its rank."""
    def relative(full: str) -> str:  # 'roberta.encoder.layer.3.attention.self.query' -> 'attention.self.query'
        return full[len(layout.prefix) + 1:].split(".", 1)[1]

    per_layer = sorted({relative(t) for t in targets})
    resolved: dict[str, int] = {}
    for key, rank in cfg.rank_pattern.items():
        key = module_name(layout, key, "adapter.rank_pattern")
        names = set(_hits(per_layer, key))
        for full in [t for t in targets if relative(t) in names] or _hits(targets, key):
            resolved.setdefault(full, rank)
    return {re.escape(full): rank for full, rank in resolved.items()}
