"""Adapter methods: the `METHODS` table, one entry per method. `peft` does the math; an entry says how to ask
peft for it, which of the built model's parameters are its own (for the budget breakdown), and how many
parameters it adds to one adapted linear layer (the planner's arithmetic, checked against the built model by the
tests). The config's allowed `adapter.method` values, the planner and the budget all read this table, so a new
method is one entry here plus its tests (docs/extending.md walks through one).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# adapter.init -> peft's init_lora_weights
LORA_INITS = {"default": True, "gaussian": "gaussian", "pissa": "pissa", "olora": "olora"}
REAL_WEIGHT_INITS = ("pissa", "olora")  # decompose the pretrained weights: not on a meta-device shape


@dataclass(frozen=True)
class Method:
    description: str
    # (adapter section, full module names, head modules trained in full, exact per-module ranks) -> a peft config
    peft_config: Callable[[Any, list[str], tuple[str, ...], dict[str, int]], Any]
    # one of the method's parameter names -> (kind, adapted module): 'lora' or 'dora magnitude', say
    parameter: re.Pattern
    kinds: dict[str, str]  # the pattern's `kind` group -> the budget group's first words
    # (in features, out features, rank, options) -> {budget group's first words: count} for one adapted linear
    linear_params: Callable[[int, int, int, dict], dict[str, int]]
    # the planner's variants: name -> the adapter options it sets (lora: plain, dora: with magnitudes)
    variants: dict[str, dict] = field(default_factory=dict)

    def group(self, name: str) -> str | None:
        """The budget group of a trainable parameter ('lora attention.self.query'), or None if not this
        method's."""
        m = self.parameter.search(name)
        return f"{self.kinds[m['kind']]} {m['module']}" if m else None


def _lora_config(adapter, targets: list[str], modules_to_save: tuple[str, ...], rank_pattern: dict[str, int]):
    from peft import LoraConfig, TaskType

    return LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=adapter.r,
        lora_alpha=adapter.alpha,
        lora_dropout=adapter.dropout,
        target_modules=targets,
        modules_to_save=list(modules_to_save),
        use_dora=adapter.use_dora,
        use_rslora=adapter.use_rslora,
        init_lora_weights=LORA_INITS[adapter.init],
        bias=adapter.bias,
        rank_pattern=rank_pattern,
    )


def _lora_params(fan_in: int, fan_out: int, r: int, options: dict) -> dict[str, int]:
    counts = {"lora": r * (fan_in + fan_out)}  # A is r x in, B is out x r
    if options.get("use_dora"):
        counts["dora magnitude"] = fan_out  # one magnitude per output feature
    return counts


METHODS: dict[str, Method] = {
    "lora": Method(
        "LoRA (peft): a rank-r update B A beside each adapted linear layer; DoRA (adapter.use_dora) adds a "
        "magnitude vector per layer, rsLoRA (adapter.use_rslora) scales by alpha / sqrt(r)",
        _lora_config,
        re.compile(r"\.layer\.\d+\.(?P<module>.+?)\.(?P<kind>lora_A|lora_B|lora_magnitude_vector|lora_embedding_A|"
                   r"lora_embedding_B)\."),
        {"lora_A": "lora", "lora_B": "lora", "lora_embedding_A": "lora", "lora_embedding_B": "lora",
         "lora_magnitude_vector": "dora magnitude"},
        _lora_params,
        variants={"lora": {}, "dora": {"use_dora": True}},
    ),
}


def parameter_group(name: str) -> str | None:
    """The budget group of an adapter parameter, whichever method it belongs to; None for other parameters."""
    return next((g for m in METHODS.values() if (g := m.group(name)) is not None), None)
