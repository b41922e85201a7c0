"""Exact trainable-parameter accounting, read off the built model rather than a formula.

What counts: every parameter that requires a gradient and actually trains, each once. peft keeps a frozen copy
of every module it trains in full (`modules_to_save`) under `.original_module.`; such a copy never trains, and
older peft versions marked its biases trainable under `bias="all"` (the 1,544-parameter gap between published and
real counts for roberta-base). Those are listed as excluded, not counted.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field

from torch import nn

from ..errors import BudgetError
from .adalora import pruning_plan
from .methods import METHODS, parameter_group

_LAYER = re.compile(r"\.layers?\.(\d+)\.")  # BERT-style '.layer.3.', ModernBERT's '.layers.3.'
# The adapter groups' first words in the order they are listed ('lora' before 'dora magnitude')
_ADAPTER_KINDS = list(dict.fromkeys(kind for method in METHODS.values() for kind in method.kinds.values()))


def is_frozen_copy(name: str) -> bool:
    """A parameter of peft's frozen copy of a module it trains in full: never trains, whatever its flag says."""
    return ".original_module." in name


def trained_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """(name, parameter) for what really trains, each once (named_parameters yields a shared one once)."""
    for name, p in model.named_parameters():
        if p.requires_grad and not is_frozen_copy(name):
            yield name, p


@dataclass
class Breakdown:
    total: int = 0
    groups: dict[str, int] = field(default_factory=OrderedDict)  # 'lora query', 'dora magnitude value', 'head', ..
    layers: dict[int, int] = field(default_factory=dict)  # encoder layer -> trainable params inside it
    excluded: list[tuple[str, int, str]] = field(default_factory=list)  # (name, numel, why)
    # AdaLoRA: its ranks at the start (what trains: `total`) and at the end (adalora.pruning_plan); None else
    pruning: dict | None = None

    def to_json(self) -> dict:
        out = {"total": self.total, "groups": dict(self.groups), "layers": {str(k): v for k, v in
                                                                             sorted(self.layers.items())},
               "excluded": [{"name": n, "params": c, "why": w} for n, c, w in self.excluded]}
        return out | ({"pruning": self.pruning} if self.pruning else {})


def _group(name: str) -> str:
    adapter = parameter_group(name)
    if adapter is not None:
        return adapter
    if ".modules_to_save." in name:
        saved = name.split(".modules_to_save.")[0].rsplit(".", 1)[-1]
        return f"head ({saved})"
    if name.endswith("bias"):
        return "biases"
    return "other"


def count_trainable(model: nn.Module) -> Breakdown:
    b = Breakdown()
    groups: dict[str, int] = {}
    for name, p in model.named_parameters():  # named_parameters yields a shared parameter once
        if not p.requires_grad:
            continue
        n = p.numel()
        if is_frozen_copy(name):
            b.excluded.append((name, n, "frozen copy kept by peft's modules_to_save; never trains"))
            continue
        b.total += n
        g = _group(name)
        groups[g] = groups.get(g, 0) + n
        m = _LAYER.search(name)
        if m:
            layer = int(m.group(1))
            b.layers[layer] = b.layers.get(layer, 0) + n
    order = sorted(groups, key=_group_order)
    b.groups = OrderedDict((g, groups[g]) for g in order)
    b.pruning = pruning_plan(model, b.total)
    return b


def _group_order(group: str) -> tuple:
    """Adapter groups first (by method kind), then the head, then the rest; by name within each."""
    kind = next((i for i, k in enumerate(_ADAPTER_KINDS) if group.startswith(k + " ")), len(_ADAPTER_KINDS))
    return (kind, not group.startswith("head"), group)


def format_breakdown(b: Breakdown, budget: int | None = None) -> str:
    width = max([len(g) for g in b.groups] + [22])
    lines = [f"{'trainable parameters':<{width}}  {'count':>11}  {'share':>6}"]
    for g, n in b.groups.items():
        lines.append(f"{g:<{width}}  {n:>11,}  {n / max(b.total, 1):>6.1%}")
    lines.append(f"{'total':<{width}}  {b.total:>11,}")
    if budget is not None:
        verdict = "fits" if b.total <= budget else f"EXCEEDS by {b.total - budget:,}"
        lines.append(f"{'budget':<{width}}  {budget:>11,}  {verdict}")
    if b.pruning:  # the count above is what trains; the pruned adapter holds fewer, so it fits whenever that does
        p = b.pruning
        lines.append(f"{'after pruning':<{width}}  {p['params_at_end']:>11,}  AdaLoRA keeps {p['ranks_at_end']:,} "
                     f"of {p['ranks_at_start']:,} ranks (target_r {p['target_r']} of r {p['init_r']} per module on "
                     "average; the figure if every module kept target_r, the split is learned)")
    if b.layers:
        per = ", ".join(f"{k}:{v:,}" for k, v in sorted(b.layers.items()))
        lines.append(f"per encoder layer: {per}")
    if b.excluded:
        n = sum(c for _, c, _ in b.excluded)
        lines.append(f"not counted: {n:,} parameters marked trainable that never train ({b.excluded[0][2]})")
    return "\n".join(lines)


def check_budget(b: Breakdown, budget: int) -> None:
    if b.total > budget:
        raise BudgetError(f"the adapted model trains {b.total:,} parameters, over the budget of {budget:,} by "
                          f"{b.total - budget:,}; lower adapter.r, adapt fewer modules or layers, or choose a "
                          f"smaller head (head.type=linear)\n{format_breakdown(b, budget)}")
