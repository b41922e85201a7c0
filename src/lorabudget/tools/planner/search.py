"""The planner's search: enumerate allocations (a rank per module type, which module types, which layers, bias
mode, head, adapter method and variant) that fit a budget, rank them (HEURISTIC), and build the best ones and a
random sample of the others on the meta device through the real code path, failing loudly unless the arithmetic
equals `count_trainable` to the parameter, group by group and layer by layer.

The arithmetic exists because the search space is large (tens of thousands of allocations per layer set) and a
meta-device build costs ~0.3 s; the builds exist because arithmetic that is not checked against the code that
trains drifts from it silently.
"""

from __future__ import annotations

import itertools
import random
import warnings
from bisect import bisect_right
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...errors import BudgetError, ConfigError
from .arithmetic import (
    TARGETS,
    VARIANTS,
    Allocation,
    Counts,
    ModelShape,
    adapter_params,
    bias_params,
    count_allocation,
    global_bias_params,
    head_params,
    layer_bias_params,
    model_shape,
)

if TYPE_CHECKING:  # these pull in pydantic and torch; `lorabudget --help` imports the planner for HEURISTIC
    from ...config import Config
    from ...model.budget import Breakdown

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
BIASES = ("none", "all", "lora_only")
DEFAULT_RANKS = (4, 8, 16, 32, 64)
MAX_RANK_VECTORS = 300_000  # per-layer rank assignments enumerated; beyond this the search takes too long
SHORT = {"query": "q", "key": "k", "value": "v", "attention.output.dense": "attn_out",
         "intermediate.dense": "ffn_in", "output.dense": "ffn_out"}


class PlanMismatch(RuntimeError):
    """The planner's arithmetic disagrees with the built model: a bug in lorabudget, never a user error."""


@dataclass(frozen=True)
class Candidate:
    head: str
    head_rank: int
    bias: str
    dora: bool
    layers: tuple[int, ...]
    layer_label: str
    ranks: tuple[tuple[str, int], ...]  # (config target, rank) in TARGETS order
    method: str = "lora"  # an entry of METHODS

    def allocation(self) -> Allocation:
        adapted = tuple((layer, TARGETS[t][0], r) for layer in self.layers for t, r in self.ranks)
        return Allocation(self.head, self.head_rank, self.bias, self.dora, adapted, self.method)

    def describe_ranks(self) -> str:
        by_rank: dict[int, list[str]] = {}
        for t, r in self.ranks:
            by_rank.setdefault(r, []).append(SHORT[t])
        return " ".join(f"r{r}:{','.join(names)}" for r, names in sorted(by_rank.items(), reverse=True))

    def describe_head(self) -> str:
        from ...model.heads import HEADS

        return f"{self.head} k={self.head_rank}" if HEADS[self.head].uses_rank else self.head


def rank_fields(ranks: tuple[tuple[str, int], ...]) -> tuple[int, dict[str, int]]:
    """adapter.r and adapter.rank_pattern for per-type ranks: r is the most common rank, the pattern the rest."""
    freq = Counter(r for _, r in ranks)
    base = max(freq, key=lambda r: (freq[r], r))
    return base, {t: r for t, r in ranks if r != base}


def candidate_config(base: Config, shape: ModelShape, budget: int, cand: Candidate) -> Config:
    """A full, validated run config for a candidate: the base config (data, optim, ...) with the allocation."""
    from ...config import build_config

    raw = base.model_dump(mode="json")
    r, pattern = rank_fields(cand.ranks)
    ratio = base.adapter.alpha / base.adapter.r  # keep the base's LoRA scaling alpha / r (the default's is 2)
    raw["model"]["name"] = shape.name
    raw["budget"] = budget
    raw["adapter"].update(
        r=r, alpha=ratio * r, rank_pattern=pattern, target_modules=[t for t, _ in cand.ranks],
        layers=None if len(cand.layers) == shape.n_layers else list(cand.layers),
        method=cand.method, use_dora=cand.dora, bias=cand.bias,
    )
    raw["head"].update(type=cand.head, rank=cand.head_rank)
    return build_config(raw, "planned candidate")


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
    methods: tuple[str, ...] = tuple(VARIANTS)
    modules: tuple[str, ...] = tuple(TARGETS)
    ranks: tuple[int, ...] = DEFAULT_RANKS
    heads: tuple[str, ...] | None = None  # None: every head the model family offers
    biases: tuple[str, ...] = BIASES
    custom_layers: tuple[tuple[int, ...], ...] = ()  # besides all layers and the top k for every k

    @classmethod
    def parse(cls, methods=None, modules=None, ranks=None, heads=None, bias=None, layers=None) -> SearchSpace:
        """From the CLI's comma-separated strings; every name is checked here, with the valid ones listed."""
        from ...model.heads import HEADS

        space = cls(
            methods=_csv(methods, "methods", tuple(VARIANTS)) or tuple(VARIANTS),
            modules=_csv(modules, "modules", tuple(TARGETS)) or tuple(TARGETS),
            ranks=_ints(ranks, "ranks") if ranks is not None else DEFAULT_RANKS,
            heads=_csv(heads, "heads", tuple(HEADS)),
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
    variant: str  # of VARIANTS: the method, and its options
    costs: list[int]
    ranks: list[tuple[int, ...]]


def rank_table(shape: ModelShape, subset: tuple[str, ...], grid: tuple[int, ...], variant: str) -> RankTable:
    method, options = VARIANTS[variant]
    linears = [TARGETS[t][0] for t in subset]
    unit = {(lin, r): sum(adapter_params(shape, lin, r, method, options.get("use_dora", False)).values())
            for lin in linears for r in grid}  # what one module costs at one rank, looked up below
    rows = []
    for ranks in itertools.product(grid, repeat=len(subset)):
        cost = sum(unit[lin, r] for lin, r in zip(linears, ranks))
        # among equal costs the preferred assignment sorts last: fewer distinct ranks, then the larger minimum
        rows.append((cost, -len(set(ranks)), min(ranks), ranks))
    rows.sort()
    return RankTable(subset, variant, [row[0] for row in rows], [row[3] for row in rows])


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
        method, options = VARIANTS[self.table.variant]
        return Candidate(self.head, head_rank, self.bias, options.get("use_dora", False), self.layers,
                         self.layer_label, ranks, method)


def _heads_for(shape: ModelShape, heads: tuple[str, ...] | None) -> tuple[str, ...]:
    from ...model.heads import HEADS

    offered = tuple(name for name, h in HEADS.items() if h.families is None or shape.family in h.families)
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
    tables = [rank_table(shape, s, space.ranks, v) for s in subsets for v in space.methods]
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
    from ...model.build import planned_breakdown

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # peft calls a transformers API deprecated in v5
        built = planned_breakdown(cfg, num_labels)
    if built.total != counts.total or dict(built.groups) != counts.groups or built.layers != counts.layers:
        raise PlanMismatch(
            f"planner arithmetic disagrees with the built model for adapter={cfg.adapter.model_dump()} "
            f"head={cfg.head.model_dump()}: arithmetic {counts.total:,} {counts.groups} per layer {counts.layers}; "
            f"built {built.total:,} {dict(built.groups)} per layer {built.layers}")
    return built


def default_num_labels(cfg: Config, num_labels: int | None) -> int:
    if num_labels is not None:
        if num_labels < 2:
            raise ConfigError("--num-labels must be >= 2")
        return num_labels
    return len(cfg.data.label_names) if cfg.data.label_names else 4  # AG News has 4 classes


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
