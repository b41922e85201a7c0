"""The planner's arithmetic: the exact trainable count of an allocation from the model's widths alone, grouped as
`budget.count_trainable` groups the built model. Heads and adapter methods count themselves (their entries in
HEADS and METHODS); this module adds them up over layers, plus the biases."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ...errors import ModelError
from ...model.methods import METHODS, layernorm_params

if TYPE_CHECKING:  # pydantic; `lorabudget --help` imports the planner for its HEURISTIC
    from ...config import Config

# The planner's variants of the adapter methods (METHODS: 'lora', and LoRA with DoRA's magnitudes, 'dora'):
# variant -> (method, the adapter options it sets)
VARIANTS = {variant: (name, options) for name, method in METHODS.items()
            for variant, options in method.variants.items()}


@dataclass(frozen=True)
class ModelShape:
    """What the arithmetic needs of a model, read off its build on the meta device (no weights): the widths of
    each linear module of an encoder layer, the biases, and what the family's own head trains. Read off the
    built model rather than written per family, so every family the build supports is planned alike."""

    name: str
    family: str  # FAMILIES key (the model_type when no entry knows it)
    model_type: str
    hidden: int
    n_layers: int
    num_labels: int
    prefix: str  # the encoder layers' module path, e.g. 'roberta.encoder.layer'
    linears: dict[str, tuple[int, int, int]] = field(hash=False)  # module in a layer -> (in, out, bias)
    layer_biases: tuple[int, ...] = ()  # every bias of each encoder layer
    outside_biases: dict[str, int] = field(default_factory=dict, hash=False)  # head type -> biases outside the
    # encoder layers and the head that bias='all' trains (embeddings' LayerNorm, BERT's frozen pooler, ...)
    own_head: dict[str, int] = field(default_factory=dict, hash=False)  # the 'default' head's groups
    # per encoder layer, LayerNorm -> (its parameters, its bias): for LN tuning and adapter.train_layernorms
    norms: tuple[dict[str, tuple[int, int]], ...] = field(default=(), hash=False)

    @property
    def roles(self) -> dict[str, str]:
        """Role -> module, for the roles this family has (families.py)."""
        from ...model.families import family_of

        fam = family_of(self.model_type)
        return {role: m for role, m in (fam.roles.items() if fam else ()) if m in self.linears}

    def io(self, linear: str) -> tuple[int, int]:
        i, o, _ = self.linears[linear]
        return i, o

    def describe(self) -> str:
        widths = sorted({o for _, o, _ in self.linears.values()} | {self.hidden})
        return (f"{self.name} ({self.family}: {self.n_layers} layers, hidden {self.hidden:,}, widths "
                f"{', '.join(f'{w:,}' for w in widths)}), {self.num_labels} labels")


def _bias_count(module) -> int:
    return sum(p.numel() for n, p in module.named_parameters() if n.endswith("bias"))


def model_shape(name: str, num_labels: int, *, trust_remote_code: bool = False) -> ModelShape:
    """The model's shape, read off a meta-device build (shipped configuration, local folder or Hub)."""
    import copy

    from torch import nn

    from ...model.backbone import build_on_meta
    from ...model.heads import HEADS, apply_head, check_family, model_family, own_head_modules
    from ...model.targets import encoder_layout

    model = build_on_meta(name, num_labels, trust_remote_code=trust_remote_code)
    family = model_family(model.config)
    layout = encoder_layout(model)
    stack = model.get_submodule(layout.prefix)
    first = stack[0]
    linears = {n: (m.in_features, m.out_features, m.bias.numel() if m.bias is not None else 0)
               for n, m in first.named_modules() if n in layout.linear_names}
    own = {f"head ({n})": sum(p.numel() for p in model.get_submodule(n).parameters())
           for n in own_head_modules(model)}
    outside = {}
    for head in HEADS:
        try:
            check_family(head, family, model.config.model_type)
        except ModelError:
            continue
        built = copy.deepcopy(model)
        spec = apply_head(built, head)
        in_head = sum(_bias_count(m) for n, m in built.named_modules()  # modules_to_save are name suffixes
                      if any(n == s or n.endswith("." + s) for s in spec.modules_to_save))
        outside[head] = _bias_count(built) - _bias_count(built.get_submodule(layout.prefix)) - in_head
    # what adapters.layer_norms finds in each layer (layer by layer: ModernBERT's first has no attention norm)
    norms = tuple({n: (sum(p.numel() for p in m.parameters()), _bias_count(m)) for n, m in layer.named_modules()
                   if isinstance(m, nn.LayerNorm)} for layer in stack)
    return ModelShape(name, family, model.config.model_type, model.config.hidden_size, layout.n_layers,
                      num_labels, layout.prefix, linears, tuple(_bias_count(layer) for layer in stack), outside,
                      own, norms)


@dataclass(frozen=True)
class Allocation:
    """Everything the trainable count depends on. The init, alpha, dropout and rsLoRA do not change it."""

    head: str
    head_rank: int
    bias: str  # none / all / lora_only
    dora: bool
    adapted: tuple[tuple[int, str, int], ...]  # (layer, linear, rank): each adapted linear module once
    method: str = "lora"  # an entry of METHODS
    # the adapted encoder layers, for what is counted per layer: the LayerNorms of LN tuning (which adapts no
    # linear module) and of adapter.train_layernorms
    layers: tuple[int, ...] = ()
    train_layernorms: bool = False


@dataclass
class Counts:
    """The arithmetic's answer, grouped exactly as budget.count_trainable groups the built model."""

    total: int = 0
    groups: dict[str, int] = field(default_factory=dict)
    layers: dict[int, int] = field(default_factory=dict)

    def add(self, group: str, n: int, layer: int | None = None) -> None:
        if n == 0:  # nothing of the kind trains (ModernBERT has no biases): the built model lists no such group
            return
        self.total += n
        self.groups[group] = self.groups.get(group, 0) + n
        if layer is not None:
            self.layers[layer] = self.layers.get(layer, 0) + n


def adapter_params(shape: ModelShape, linear: str, r: int, method: str = "lora", dora: bool = False) -> dict[str, int]:
    """What one adapted linear module trains, by budget group ('lora attention.self.query': ...): the method's
    own arithmetic, from its METHODS entry."""
    i, o = shape.io(linear)
    options = {"use_dora": dora, "feedforward": linear == shape.roles.get("ffn_out")}
    return {f"{kind} {linear}": n for kind, n in METHODS[method].linear_params(i, o, r, options).items()}


def norm_params(shape: ModelShape, layer: int, method: str = "lora", train_layernorms: bool = False) -> dict[str, int]:
    """What the LayerNorms of one adapted layer train, by budget group ('layernorm output.LayerNorm': ...): LN
    tuning's own arithmetic, or with adapter.train_layernorms each trained in full; {} for neither."""
    count = METHODS[method].norm_params or (layernorm_params if train_layernorms else None)
    if count is None:
        return {}
    return {f"{kind} {norm}": n for norm, (own, _) in shape.norms[layer].items() for kind, n in count(own).items()}


def bias_params(shape: ModelShape, linear: str) -> int:
    return shape.linears[linear][2]


def layer_bias_params(shape: ModelShape, layer: int = 0) -> int:
    """Every bias of one encoder layer: its linear layers' and its LayerNorms'."""
    return shape.layer_biases[layer]


def head_params(shape: ModelShape, head: str, head_rank: int) -> dict[str, int]:
    """The modules the head trains in full (peft's modules_to_save), by the group name count_trainable uses: the
    head's own arithmetic, from its HEADS entry; the model class's own head as its build counted it."""
    from ...model.heads import check_family

    entry = check_family(head, shape.family, shape.model_type)
    if entry.params is None:
        return dict(shape.own_head)
    from ...model.families import family_of

    fam = family_of(shape.model_type)
    return entry.params(fam.head_style if fam else "", shape.hidden, shape.num_labels, head_rank)


def global_bias_params(shape: ModelShape, head: str) -> int:
    """bias='all' outside the encoder layers: the embeddings' LayerNorm, and BERT's frozen pooler when the
    default head keeps it. Biases inside the head are the head's (modules_to_save), counted there once."""
    return shape.outside_biases[head]


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
    for layer in alloc.layers:
        for group, n in norm_params(shape, layer, alloc.method, alloc.train_layernorms).items():
            c.add(group, n, layer)
    if alloc.bias == "all":
        for layer in range(shape.n_layers):
            own = layer_bias_params(shape, layer)
            if alloc.train_layernorms and layer in alloc.layers:  # their biases train in the LayerNorms' copies
                own -= sum(bias for _, bias in shape.norms[layer].values())
            c.add("biases", own, layer)
        c.add("biases", global_bias_params(shape, alloc.head))
    return c


def allocation_from_config(cfg: Config, shape: ModelShape) -> Allocation:
    """What a config adapts, resolved by the rules the build itself uses (targets.resolve_targets for the
    modules, targets.exact_rank_pattern for their ranks)."""
    from ...model.adapters import chosen_layers_only
    from ...model.targets import EncoderLayout, exact_rank_pattern, resolve_targets

    a = cfg.adapter
    layout = EncoderLayout(shape.prefix, shape.n_layers, tuple(shape.linears), shape.model_type)
    targets = resolve_targets(layout, chosen_layers_only(layout, a))
    ranks = exact_rank_pattern(targets, layout, a)
    adapted = []
    for full in targets:
        layer, linear = full[len(shape.prefix) + 1:].split(".", 1)
        adapted.append((int(layer), linear, ranks.get(re.escape(full), a.r)))
    layers = tuple(sorted({layer for layer, _, _ in adapted}))
    if METHODS[a.method].norm_params is not None:  # LN tuning: the targets choose the layers, adapt nothing
        adapted = []
    return Allocation(cfg.head.type, cfg.head.rank, a.bias, a.use_dora, tuple(adapted), a.method, layers,
                      a.train_layernorms)
