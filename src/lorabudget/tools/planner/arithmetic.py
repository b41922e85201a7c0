"""The planner's arithmetic: the exact trainable count of an allocation from the model's widths alone, grouped as
`budget.count_trainable` groups the built model. Heads and adapter methods count themselves (their entries in
HEADS and METHODS); this module adds them up over layers, plus the biases."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ...errors import ModelError
from ...model.methods import METHODS

if TYPE_CHECKING:  # pydantic; `lorabudget --help` imports the planner for its HEURISTIC
    from ...config import Config

# Config target name -> (linear module inside one encoder layer, its input width, its output width) for
# roberta- and BERT-style layers. A target names the module of exactly that name (targets.resolve_targets), so
# 'output.dense' is the FFN output alone.
TARGETS: dict[str, tuple[str, str, str]] = {
    "query": ("attention.self.query", "hidden", "hidden"),
    "key": ("attention.self.key", "hidden", "hidden"),
    "value": ("attention.self.value", "hidden", "hidden"),
    "attention.output.dense": ("attention.output.dense", "hidden", "hidden"),
    "intermediate.dense": ("intermediate.dense", "hidden", "intermediate"),
    "output.dense": ("output.dense", "intermediate", "hidden"),
}
LINEARS = {linear: (i, o) for linear, i, o in TARGETS.values()}
SHORT = {"query": "q", "key": "k", "value": "v", "attention.output.dense": "attn_out",
         "intermediate.dense": "ffn_in", "output.dense": "ffn_out"}
FAMILIES = {"roberta": "roberta", "bert": "bert"}  # family -> base-model attribute (the module name prefix)
# The planner's variants of the adapter methods (METHODS: 'lora', and LoRA with DoRA's magnitudes, 'dora'):
# variant -> (method, the adapter options it sets)
VARIANTS = {variant: (name, options) for name, method in METHODS.items()
            for variant, options in method.variants.items()}


@dataclass(frozen=True)
class ModelShape:
    name: str
    family: str  # 'roberta' or 'bert'
    hidden: int
    intermediate: int
    n_layers: int
    num_labels: int

    @property
    def prefix(self) -> str:
        return f"{FAMILIES[self.family]}.encoder.layer"

    def io(self, linear: str) -> tuple[int, int]:
        i, o = LINEARS[linear]
        return getattr(self, i), getattr(self, o)

    def describe(self) -> str:
        return (f"{self.name} ({self.family}: {self.n_layers} layers, hidden {self.hidden:,}, intermediate "
                f"{self.intermediate:,}), {self.num_labels} labels")


def model_shape(name: str, num_labels: int, *, trust_remote_code: bool = False) -> ModelShape:
    """The widths the arithmetic needs, read from the model's configuration (shipped copy, local folder or Hub)."""
    from ...model.backbone import load_config
    from ...model.heads import model_family

    config = load_config(name, num_labels, trust_remote_code=trust_remote_code)
    family = model_family(config)
    if family not in FAMILIES:
        raise ModelError(f"the planner's arithmetic knows roberta- and BERT-style encoders, not "
                         f"{config.model_type!r}; `lorabudget plan -c CONFIG --set model.name={name}` still counts "
                         "one config on the built model")
    return ModelShape(name, family, config.hidden_size, config.intermediate_size, config.num_hidden_layers,
                      num_labels)


@dataclass(frozen=True)
class Allocation:
    """Everything the trainable count depends on. The init, alpha, dropout and rsLoRA do not change it."""

    head: str
    head_rank: int
    bias: str  # none / all / lora_only
    dora: bool
    adapted: tuple[tuple[int, str, int], ...]  # (layer, linear, rank): each adapted linear module once
    method: str = "lora"  # an entry of METHODS


@dataclass
class Counts:
    """The arithmetic's answer, grouped exactly as budget.count_trainable groups the built model."""

    total: int = 0
    groups: dict[str, int] = field(default_factory=dict)
    layers: dict[int, int] = field(default_factory=dict)

    def add(self, group: str, n: int, layer: int | None = None) -> None:
        self.total += n
        self.groups[group] = self.groups.get(group, 0) + n
        if layer is not None:
            self.layers[layer] = self.layers.get(layer, 0) + n


def adapter_params(shape: ModelShape, linear: str, r: int, method: str = "lora", dora: bool = False) -> dict[str, int]:
    """What one adapted linear module trains, by budget group ('lora attention.self.query': ...): the method's
    own arithmetic, from its METHODS entry."""
    i, o = shape.io(linear)
    return {f"{kind} {linear}": n for kind, n in METHODS[method].linear_params(i, o, r, {"use_dora": dora}).items()}


def bias_params(shape: ModelShape, linear: str) -> int:
    return shape.io(linear)[1]


def layer_bias_params(shape: ModelShape) -> int:
    """Every bias of one encoder layer: its six linear layers and its two LayerNorms."""
    return sum(bias_params(shape, linear) for linear in LINEARS) + 2 * shape.hidden


def head_params(shape: ModelShape, head: str, head_rank: int) -> dict[str, int]:
    """The modules the head trains in full (peft's modules_to_save), by the group name count_trainable uses: the
    head's own arithmetic, from its HEADS entry."""
    from ...model.heads import check_family

    entry = check_family(head, shape.family, shape.family)
    return entry.params(shape.family, shape.hidden, shape.num_labels, head_rank)


def global_bias_params(shape: ModelShape, head: str) -> int:
    """bias='all' outside the encoder layers: the embeddings' LayerNorm, and BERT's frozen pooler when the
    default head keeps it. Biases inside the head are the head's (modules_to_save), counted there once."""
    pooler = shape.hidden if shape.family == "bert" and head == "default" else 0
    return shape.hidden + pooler


def count_allocation(shape: ModelShape, alloc: Allocation) -> Counts:
    """The exact trainable count of an allocation, from widths alone."""
    c = Counts()
    for group, n in head_params(shape, alloc.head, alloc.head_rank).items():
        c.add(group, n)
    for layer, linear, r in alloc.adapted:
        for group, n in adapter_params(shape, linear, r, alloc.method, alloc.dora).items():
            c.add(group, n, layer)
        if alloc.bias == "lora_only":
            c.add("biases", bias_params(shape, linear), layer)
    if alloc.bias == "all":
        for layer in range(shape.n_layers):
            c.add("biases", layer_bias_params(shape), layer)
        c.add("biases", global_bias_params(shape, alloc.head))
    return c


def allocation_from_config(cfg: Config, shape: ModelShape) -> Allocation:
    """What a config adapts, resolved by the rules the build itself uses (targets.resolve_targets for the
    modules, targets.exact_rank_pattern for their ranks)."""
    from ...model.targets import EncoderLayout, exact_rank_pattern, resolve_targets

    a = cfg.adapter
    layout = EncoderLayout(shape.prefix, shape.n_layers, tuple(LINEARS))
    targets = resolve_targets(layout, a)
    ranks = exact_rank_pattern(targets, layout, a)
    adapted = []
    for full in targets:
        layer, linear = full[len(shape.prefix) + 1:].split(".", 1)
        adapted.append((int(layer), linear, ranks.get(re.escape(full), a.r)))
    return Allocation(cfg.head.type, cfg.head.rank, a.bias, a.use_dora, tuple(adapted), a.method)
