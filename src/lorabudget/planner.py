"""Budget planner behind `lorabudget plan`: what fits a trainable-parameter budget, counted exactly, no weights.

Two jobs:

- check one config: build its shape on the meta device (`pipeline.planned_breakdown`) and print
  `count_trainable`'s breakdown and whether it fits;
- search: enumerate allocations (a rank per module type, which module types, which layers, bias mode, head,
  LoRA or DoRA) for a roberta- or BERT-style encoder, count each with closed-form arithmetic from the model's
  configuration, rank them (HEURISTIC), then build the best ones and a random sample of the others on the meta
  device through the real code path and fail loudly unless the arithmetic equals `count_trainable` to the
  parameter, group by group and layer by layer.

The arithmetic exists because the search space is large (tens of thousands of allocations per layer set) and a
meta-device build costs ~0.3 s; the builds exist because arithmetic that is not checked against the code that
trains drifts from it silently.
"""

from __future__ import annotations

import itertools
import random
import re
import textwrap
import warnings
from bisect import bisect_right
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import BudgetError, ConfigError, ModelError

if TYPE_CHECKING:  # these pull in pydantic and torch; `lorabudget --help` imports this module for HEURISTIC
    from .budget import Breakdown
    from .config import Config

HEURISTIC = (
    "Ranking, best first: (1) more encoder layers adapted; (2) more module types adapted per layer; (3) more "
    "adapter parameters (LoRA + DoRA), so budget goes to adapters rather than to a large head or to biases; "
    "(4) more of the budget used, never more than all of it; (5) fewer distinct ranks. Rationale: LoRA on every "
    "layer and linear module at a modest rank generally beats a high rank on a few modules (LoRA and QLoRA "
    "papers), and a head trained in full buys no adaptation of the encoder. Each row is one design (head, bias, "
    "LoRA/DoRA, module types, layers) with its best ranks: per module type, from the rank grid, the combination "
    "that spends the most budget."
)

# Config target name -> (linear module inside one encoder layer, its input width, its output width) for
# roberta- and BERT-style layers. A target names the module of exactly that name (adapters.resolve_targets), so
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
METHODS = ("lora", "dora")
BIASES = ("none", "all", "lora_only")
DEFAULT_RANKS = (4, 8, 16, 32, 64)
MAX_RANK_VECTORS = 300_000  # per-layer rank assignments enumerated; beyond this the search takes too long


class PlanMismatch(RuntimeError):
    """The planner's arithmetic disagrees with the built model: a bug in lorabudget, never a user error."""


# ---- the model's shape and the arithmetic ------------------------------------------------------------------

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
    from .heads import model_family
    from .models import load_config

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


def lora_params(shape: ModelShape, linear: str, r: int) -> int:
    i, o = shape.io(linear)
    return r * (i + o)  # A is r x in, B is out x r


def dora_params(shape: ModelShape, linear: str) -> int:
    return shape.io(linear)[1]  # one magnitude per output feature


def bias_params(shape: ModelShape, linear: str) -> int:
    return shape.io(linear)[1]


def layer_bias_params(shape: ModelShape) -> int:
    """Every bias of one encoder layer: its six linear layers and its two LayerNorms."""
    return sum(bias_params(shape, linear) for linear in LINEARS) + 2 * shape.hidden


def head_params(shape: ModelShape, head: str, head_rank: int) -> dict[str, int]:
    """The modules the head trains in full (peft's modules_to_save), by the group name count_trainable uses."""
    h, labels = shape.hidden, shape.num_labels
    out_layer = h * labels + labels
    dense = h * h + h
    low_rank_dense = 2 * h * head_rank + h  # hidden -> k (no bias) -> hidden (bias)
    if head == "pooler" and shape.family != "bert":
        raise ModelError("head.type=pooler needs a BERT-style model with a pooler")
    if shape.family == "roberta":
        own = {"default": dense + out_layer, "linear": out_layer, "lowrank": low_rank_dense + out_layer}
        if head in own:
            return {"head (classifier)": own[head]}
    else:
        if head in ("default", "linear"):  # behind a frozen pooler / on [CLS] with the pooler removed
            return {"head (classifier)": out_layer}
        if head in ("pooler", "lowrank"):
            return {"head (classifier)": out_layer, "head (pooler)": dense if head == "pooler" else low_rank_dense}
    raise ModelError(f"unknown head type {head!r}")


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
        c.add(f"lora {linear}", lora_params(shape, linear, r), layer)
        if alloc.dora:
            c.add(f"dora magnitude {linear}", dora_params(shape, linear), layer)
        if alloc.bias == "lora_only":
            c.add("biases", bias_params(shape, linear), layer)
    if alloc.bias == "all":
        for layer in range(shape.n_layers):
            c.add("biases", layer_bias_params(shape), layer)
        c.add("biases", global_bias_params(shape, alloc.head))
    return c


def allocation_from_config(cfg: Config, shape: ModelShape) -> Allocation:
    """What a config adapts, resolved by the rules the build itself uses (adapters.resolve_targets for the
    modules, adapters.exact_rank_pattern for their ranks)."""
    from .adapters import EncoderLayout, exact_rank_pattern, resolve_targets

    a = cfg.adapter
    layout = EncoderLayout(shape.prefix, shape.n_layers, tuple(LINEARS))
    targets = resolve_targets(layout, a)
    ranks = exact_rank_pattern(targets, layout, a)
    adapted = []
    for full in targets:
        layer, linear = full[len(shape.prefix) + 1:].split(".", 1)
        adapted.append((int(layer), linear, ranks.get(re.escape(full), a.r)))
    return Allocation(cfg.head.type, cfg.head.rank, a.bias, a.use_dora, tuple(adapted))


# ---- candidates and their configs --------------------------------------------------------------------------

@dataclass(frozen=True)
class Candidate:
    head: str
    head_rank: int
    bias: str
    dora: bool
    layers: tuple[int, ...]
    layer_label: str
    ranks: tuple[tuple[str, int], ...]  # (config target, rank) in TARGETS order

    def allocation(self) -> Allocation:
        adapted = tuple((layer, TARGETS[t][0], r) for layer in self.layers for t, r in self.ranks)
        return Allocation(self.head, self.head_rank, self.bias, self.dora, adapted)

    def describe_ranks(self) -> str:
        by_rank: dict[int, list[str]] = {}
        for t, r in self.ranks:
            by_rank.setdefault(r, []).append(SHORT[t])
        return " ".join(f"r{r}:{','.join(names)}" for r, names in sorted(by_rank.items(), reverse=True))

    def describe_head(self) -> str:
        return f"lowrank k={self.head_rank}" if self.head == "lowrank" else self.head


def rank_fields(ranks: tuple[tuple[str, int], ...]) -> tuple[int, dict[str, int]]:
    """adapter.r and adapter.rank_pattern for per-type ranks: r is the most common rank, the pattern the rest."""
    freq = Counter(r for _, r in ranks)
    base = max(freq, key=lambda r: (freq[r], r))
    return base, {t: r for t, r in ranks if r != base}


def candidate_config(base: Config, shape: ModelShape, budget: int, cand: Candidate) -> Config:
    """A full, validated run config for a candidate: the base config (data, optim, ...) with the allocation."""
    from .config import build_config

    raw = base.model_dump(mode="json")
    r, pattern = rank_fields(cand.ranks)
    ratio = base.adapter.alpha / base.adapter.r  # keep the base's LoRA scaling alpha / r (the default's is 2)
    raw["model"]["name"] = shape.name
    raw["budget"] = budget
    raw["adapter"].update(
        r=r, alpha=ratio * r, rank_pattern=pattern, target_modules=[t for t, _ in cand.ranks],
        layers=None if len(cand.layers) == shape.n_layers else list(cand.layers),
        use_dora=cand.dora, bias=cand.bias,
    )
    raw["head"].update(type=cand.head, rank=cand.head_rank)
    return build_config(raw, "planned candidate")


# ---- the search ------------------------------------------------------------------------------------------

def _csv(text: str | None, what: str, allowed: tuple[str, ...]) -> tuple[str, ...] | None:
    if text is None:
        return None
    items = tuple(dict.fromkeys(x.strip() for x in text.split(",") if x.strip()))
    bad = [x for x in items if x not in allowed]
    if bad or not items:
        raise ConfigError(f"--{what}: {', '.join(bad) or 'nothing given'}; choose from {', '.join(allowed)}")
    return items


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        items = tuple(sorted({int(x) for x in text.split(",") if x.strip()}))
    except ValueError:
        raise ConfigError(f"--{what}: {text!r} is not a comma-separated list of integers") from None
    if not items:
        raise ConfigError(f"--{what}: nothing given")
    return items


@dataclass(frozen=True)
class SearchSpace:
    methods: tuple[str, ...] = METHODS
    modules: tuple[str, ...] = tuple(TARGETS)
    ranks: tuple[int, ...] = DEFAULT_RANKS
    heads: tuple[str, ...] | None = None  # None: every head the model family offers
    biases: tuple[str, ...] = BIASES
    custom_layers: tuple[tuple[int, ...], ...] = ()  # besides all layers and the top k for every k

    @classmethod
    def parse(cls, methods=None, modules=None, ranks=None, heads=None, bias=None, layers=None) -> SearchSpace:
        """From the CLI's comma-separated strings; every name is checked here, with the valid ones listed."""
        from .heads import HEAD_TYPES

        space = cls(
            methods=_csv(methods, "methods", METHODS) or METHODS,
            modules=_csv(modules, "modules", tuple(TARGETS)) or tuple(TARGETS),
            ranks=_ints(ranks, "ranks") if ranks is not None else DEFAULT_RANKS,
            heads=_csv(heads, "heads", HEAD_TYPES),
            biases=_csv(bias, "bias", BIASES) or BIASES,
            custom_layers=tuple(_ints(spec, "layers") for spec in layers or ()),
        )
        if min(space.ranks) < 1:
            raise ConfigError("--ranks: ranks must be >= 1")
        return space


def module_subsets(modules: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Non-empty subsets of the module types."""
    ordered = [t for t in TARGETS if t in modules]
    return [subset for n in range(1, len(ordered) + 1) for subset in itertools.combinations(ordered, n)]


def layer_sets(shape: ModelShape, custom: tuple[tuple[int, ...], ...]) -> list[tuple[str, tuple[int, ...]]]:
    """All layers, the top k (nearest the head) for every k, and the custom sets, as (label, layers)."""
    n = shape.n_layers
    sets = [(f"all {n}", tuple(range(n)))]
    sets += [(f"top {k} ({n - k}-{n - 1})" if k > 1 else f"top 1 ({n - 1})", tuple(range(n - k, n)))
             for k in range(n - 1, 0, -1)]
    for layers in custom:
        bad = [i for i in layers if not 0 <= i < n]
        if bad:
            raise ConfigError(f"--layers: {bad} out of range; {shape.name} has {n} encoder layers (0 to {n - 1})")
        if layers not in [s for _, s in sets]:
            sets.append((",".join(map(str, layers)), layers))
    return sets


@dataclass
class RankTable:
    """Every rank assignment of one module subset, sorted by what it costs per layer (LoRA + DoRA), so the
    assignments that fit a per-layer allowance are a prefix, found by bisection."""

    subset: tuple[str, ...]
    dora: bool
    costs: list[int]
    ranks: list[tuple[int, ...]]


def rank_table(shape: ModelShape, subset: tuple[str, ...], grid: tuple[int, ...], dora: bool) -> RankTable:
    linears = [TARGETS[t][0] for t in subset]
    magnitudes = sum(dora_params(shape, lin) for lin in linears) if dora else 0
    rows = []
    for ranks in itertools.product(grid, repeat=len(subset)):
        cost = sum(lora_params(shape, lin, r) for lin, r in zip(linears, ranks)) + magnitudes
        # among equal costs the preferred assignment sorts last: fewer distinct ranks, then the larger minimum
        rows.append((cost, -len(set(ranks)), min(ranks), ranks))
    rows.sort()
    return RankTable(subset, dora, [row[0] for row in rows], [row[3] for row in rows])


@dataclass
class Design:
    """A head, bias mode, layer set and rank table, with how many of the table's assignments fit."""

    head: str
    bias: str
    layer_label: str
    layers: tuple[int, ...]
    table: RankTable
    fixed: int  # head + biases outside the adapted layers
    per_layer_fixed: int  # lora_only biases in each adapted layer
    fits: int  # the table's first `fits` assignments fit the budget

    def total(self, i: int) -> int:
        return self.fixed + len(self.layers) * (self.per_layer_fixed + self.table.costs[i])

    def adapter_params(self, i: int) -> int:
        return len(self.layers) * self.table.costs[i]

    def rank_key(self) -> tuple:
        """HEURISTIC as a sort key (smaller sorts first), for the design's best assignment."""
        best = self.fits - 1
        return (-len(self.layers), -len(self.table.subset), -self.adapter_params(best), -self.total(best),
                len(set(self.table.ranks[best])))

    def candidate(self, i: int, head_rank: int) -> Candidate:
        ranks = tuple(zip(self.table.subset, self.table.ranks[i]))
        return Candidate(self.head, head_rank, self.bias, self.table.dora, self.layers, self.layer_label, ranks)


def _heads_for(shape: ModelShape, heads: tuple[str, ...] | None) -> tuple[str, ...]:
    offered = ("default", "pooler", "linear", "lowrank") if shape.family == "bert" else ("default", "linear",
                                                                                          "lowrank")
    if heads is None:
        return offered
    bad = [h for h in heads if h not in offered]
    if bad:
        raise ConfigError(f"--heads: {', '.join(bad)} not available for {shape.family}-style models; choose from "
                          f"{', '.join(offered)}")
    return heads


def enumerate_designs(shape: ModelShape, budget: int, space: SearchSpace, head_rank: int) -> list[Design]:
    """Every design with at least one fitting rank assignment, best first by HEURISTIC."""
    subsets = module_subsets(space.modules)
    n_vectors = sum(len(space.ranks) ** len(s) for s in subsets) * len(space.methods)
    if n_vectors > MAX_RANK_VECTORS:
        raise ConfigError(f"the search would enumerate {n_vectors:,} rank assignments per layer set (limit "
                          f"{MAX_RANK_VECTORS:,}); pass fewer --ranks or --modules")
    tables = [rank_table(shape, s, space.ranks, m == "dora") for s in subsets for m in space.methods]
    designs = []
    for head in _heads_for(shape, space.heads):
        head_n = sum(head_params(shape, head, head_rank).values())
        for bias in space.biases:
            fixed = head_n
            if bias == "all":  # every bias of the model trains, adapted or not
                fixed += shape.n_layers * layer_bias_params(shape) + global_bias_params(shape, head)
            for label, layers in layer_sets(shape, space.custom_layers):
                for table in tables:
                    per_layer_fixed = 0
                    if bias == "lora_only":
                        per_layer_fixed = sum(bias_params(shape, TARGETS[t][0]) for t in table.subset)
                    allowance = (budget - fixed) // len(layers) - per_layer_fixed  # per layer, for LoRA + DoRA
                    fits = bisect_right(table.costs, allowance)
                    if fits:
                        designs.append(Design(head, bias, label, layers, table, fixed, per_layer_fixed, fits))
    designs.sort(key=Design.rank_key)
    return designs


# ---- checking the arithmetic against the built model -------------------------------------------------------

def verify(cfg: Config, counts: Counts, num_labels: int) -> Breakdown:
    """Build the config on the meta device through the real code path; raise unless every count agrees."""
    from .pipeline import planned_breakdown

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # peft calls a transformers API deprecated in v5
        built = planned_breakdown(cfg, num_labels)
    if built.total != counts.total or dict(built.groups) != counts.groups or built.layers != counts.layers:
        raise PlanMismatch(
            f"planner arithmetic disagrees with the built model for adapter={cfg.adapter.model_dump()} "
            f"head={cfg.head.model_dump()}: arithmetic {counts.total:,} {counts.groups} per layer {counts.layers}; "
            f"built {built.total:,} {dict(built.groups)} per layer {built.layers}")
    return built


# ---- the verbs -----------------------------------------------------------------------------------------------

def default_num_labels(cfg: Config, num_labels: int | None) -> int:
    if num_labels is not None:
        if num_labels < 2:
            raise ConfigError("--num-labels must be >= 2")
        return num_labels
    return len(cfg.data.label_names) if cfg.data.label_names else 4  # AG News has 4 classes


def check_config(cfg: Config, num_labels: int | None = None) -> str:
    """The exact breakdown of one config, built on the meta device; BudgetError (exit 2) when over budget."""
    from .budget import check_budget, format_breakdown
    from .pipeline import planned_breakdown

    n = default_num_labels(cfg, num_labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        b = planned_breakdown(cfg, n)
    check_budget(b, cfg.budget)
    lines = [f"plan      {cfg.model.name}, head {cfg.head.type}, {n} labels (meta device: no weights loaded)"]
    if cfg.adapter.init in ("pissa", "olora"):
        lines.append(f"note      counted with the default init in place of {cfg.adapter.init}, which needs real "
                     "weights; the count does not depend on the init")
    lines.append(format_breakdown(b, cfg.budget))
    return "\n".join(lines)


@dataclass
class Plan:
    shape: ModelShape
    budget: int
    space: SearchSpace
    designs: int
    allocations: int  # fitting allocations across all designs
    rows: list[tuple[Candidate, Counts, Config]]
    sampled: int  # other fitting allocations built and checked besides the rows
    head_rank: int


def search(base: Config, model: str, space: SearchSpace, *, num_labels: int | None = None, top: int = 10,
           sample: int = 5, seed: int = 0) -> Plan:
    """Enumerate, rank, and verify the top `top` designs plus `sample` random other fitting allocations."""
    if top < 1 or sample < 0:
        raise ConfigError("--top must be >= 1 and --sample >= 0")
    shape = model_shape(model, default_num_labels(base, num_labels), trust_remote_code=base.model.trust_remote_code)
    budget, head_rank = base.budget, base.head.rank
    designs = enumerate_designs(shape, budget, space, head_rank)
    if not designs:
        smallest = min(sum(head_params(shape, h, head_rank).values()) for h in _heads_for(shape, space.heads))
        raise BudgetError(f"no allocation fits a budget of {budget:,} on {shape.name}: the smallest head alone "
                          f"trains {smallest:,}; raise --budget or add lower --ranks")

    def materialise(design: Design, i: int) -> tuple[Candidate, Counts, Config]:
        cand = design.candidate(i, head_rank)
        counts = count_allocation(shape, cand.allocation())
        if counts.total != design.total(i):  # the search's shortcut and the full arithmetic must agree too
            raise PlanMismatch(f"search total {design.total(i):,} != arithmetic {counts.total:,} for {cand}")
        return cand, counts, candidate_config(base, shape, budget, cand)

    rows = [materialise(d, d.fits - 1) for d in designs[:top]]
    rng = random.Random(seed)
    rest = designs[top:] or designs
    others = [materialise(d, rng.randrange(d.fits)) for d in (rng.choice(rest) for _ in range(sample))]
    for _, counts, cfg in rows + others:
        verify(cfg, counts, shape.num_labels)
    return Plan(shape, budget, space, len(designs), sum(d.fits for d in designs), rows, len(others), head_rank)


_COLUMNS = (f"{'#':>3}  {'total':>9}  {'used':>6}  {'adapters':>9}  {'head':>9}  {'biases':>7}  "
            f"{'head type':<14}  {'bias':<9}  {'method':<6}  {'layers':<15}  ranks per module type")
_MODULE_LEGEND = ("q, k, v = attention query/key/value; attn_out = attention.output.dense; ffn_in = "
                  "intermediate.dense; ffn_out = output.dense")


def _row(k: int, cand: Candidate, counts: Counts, budget: int) -> str:
    head = sum(n for g, n in counts.groups.items() if g.startswith("head"))
    biases = counts.groups.get("biases", 0)
    method = "dora" if cand.dora else "lora"
    return (f"{k:>3}  {counts.total:>9,}  {counts.total / budget:>6.1%}  {counts.total - head - biases:>9,}  "
            f"{head:>9,}  {biases:>7,}  {cand.describe_head():<14}  {cand.bias:<9}  {method:<6}  "
            f"{cand.layer_label:<15}  {cand.describe_ranks()}")


def format_plan(plan: Plan) -> str:
    s = plan.space
    layers = ", ".join([f"all, top 1..{plan.shape.n_layers - 1}"] + [",".join(map(str, c)) for c in s.custom_layers])
    space = (f"heads {', '.join(_heads_for(plan.shape, s.heads))} (k={plan.head_rank}) | bias {', '.join(s.biases)}"
             f" | {', '.join(s.methods)} | ranks {', '.join(map(str, s.ranks))} per module type | modules "
             f"{', '.join(SHORT[m] for m in s.modules)} | layers {layers}")
    checked = (f"{len(plan.rows) + plan.sampled} allocations (the {len(plan.rows)} rows and {plan.sampled} random "
               "others) built on the meta device: arithmetic == count_trainable, per group and per layer")
    lines = [f"plan      {plan.shape.describe()}, budget {plan.budget:,}",
             f"space     {space}",
             f"found     {plan.allocations:,} allocations that fit, in {plan.designs:,} designs",
             "",
             _COLUMNS]
    lines += [_row(k, cand, counts, plan.budget) for k, (cand, counts, _) in enumerate(plan.rows, 1)]
    lines += ["", f"verified  {checked}", f"modules   {_MODULE_LEGEND}"]
    lines += textwrap.wrap(HEURISTIC, width=116, initial_indent="ranking   ", subsequent_indent=" " * 10)
    return "\n".join(lines)


def write_candidate(plan: Plan, pick: int, path: str | Path, num_labels: int) -> str:
    """Write row `pick` (1-based) as a YAML config for `lorabudget train`, with its exact count in a comment."""
    import yaml

    from .budget import format_breakdown
    from .config import load_config

    if not 1 <= pick <= len(plan.rows):
        raise ConfigError(f"--pick {pick}: choose a row from 1 to {len(plan.rows)}")
    _, counts, cfg = plan.rows[pick - 1]
    raw = cfg.model_dump(mode="json", exclude_defaults=True)
    # the allocation is written out in full, whatever the defaults; the rest only where it differs from them
    raw["model"] = {"name": cfg.model.name, **raw.get("model", {})}
    raw["adapter"] = cfg.adapter.model_dump(mode="json")
    raw["head"] = cfg.head.model_dump(mode="json")
    raw["budget"] = cfg.budget
    order = ["model", "data", "adapter", "head", "budget"]
    raw = {k: raw[k] for k in order + [k for k in raw if k not in order] if k in raw}
    groups = ", ".join(f"{g} {n:,}" for g, n in counts.groups.items())
    text = (f"# Planned by `lorabudget plan`: row {pick} for {plan.shape.name} under a budget of {plan.budget:,} "
            f"({plan.shape.num_labels} labels).\n"
            f"# trainable: {counts.total:,} ({groups})\n"
            "# Set data.source (or pass --data) before training.\n" + yaml.safe_dump(raw, sort_keys=False))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    # The file, not the object, is what users train: read it back and count it once more.
    built = verify(load_config(out), counts, num_labels)
    return f"wrote     {out} (row {pick})\n{format_breakdown(built, plan.budget)}"


PLOT_GROUPS = [("head", "head")] + [(f"lora {TARGETS[t][0]}", f"LoRA {SHORT[t]}") for t in TARGETS] + [
    ("dora magnitude", "DoRA magnitudes"), ("biases", "biases")]


def plot_plan(plan: Plan, path: str | Path) -> str:
    """A stacked bar per row: how its budget splits into head, LoRA per module type, DoRA magnitudes, biases."""
    import numpy as np

    from .plots import _save, plt

    x = np.arange(len(plan.rows))
    fig, ax = plt.subplots(figsize=(max(6.4, 0.6 * len(x) + 3), 4.5))
    bottom = np.zeros(len(x))
    colors = plt.get_cmap("tab10").colors
    for k, (prefix, label) in enumerate(PLOT_GROUPS):
        values = np.array([sum(n for g, n in counts.groups.items() if g.startswith(prefix))
                           for _, counts, _ in plan.rows], dtype=float)
        if values.any():
            ax.bar(x, values, bottom=bottom, label=label, color=colors[k % len(colors)], width=0.7)
            bottom += values
    ax.axhline(plan.budget, color="black", ls="--", lw=1, label=f"budget {plan.budget:,}")
    ax.set_xticks(x, [f"#{k}" for k in range(1, len(x) + 1)])
    ax.set_xlabel("candidate (table row)")
    ax.set_ylabel("trainable parameters")
    ax.set_title(f"Budget split of the top candidates: {plan.shape.name}")
    ax.yaxis.set_major_formatter(lambda v, _: f"{v:,.0f}")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    _save(fig, Path(path))
    return f"wrote     {path} (budget split of the {len(x)} rows)"


def plan(base: Config, model: str, space: SearchSpace, *, num_labels: int | None = None, top: int = 10,
         sample: int = 5, seed: int = 0, write: str | None = None, pick: int = 1,
         plot: str | None = None) -> str:
    """`lorabudget plan --model ...`: search, verify, and the report; optionally write a row and draw the plot."""
    result = search(base, model, space, num_labels=num_labels, top=top, sample=sample, seed=seed)
    parts = [format_plan(result)]
    if write:
        parts.append(write_candidate(result, pick, write, result.shape.num_labels))
    if plot:
        parts.append(plot_plan(result, plot))
    return "\n".join(parts)

