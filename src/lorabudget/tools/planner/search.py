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
from ...model.families import ROLES, SHORT
from ...model.methods import METHODS, SWITCHES
from .arithmetic import (
    VARIANTS,
    Allocation,
    Counts,
    ModelShape,
    adapter_params,
    bias_params,
    count_allocation,
    global_bias_params,
    head_params,
    model_shape,
    norm_params,
)
from .ranking import rank_key

if TYPE_CHECKING:  # these pull in pydantic and torch; `lorabudget --help` imports this module for VARIANTS
    from ...config import Config
    from ...model.budget import Breakdown

BIASES = ("none", "all", "lora_only")
DEFAULT_RANKS = (4, 8, 16, 32, 64)
MAX_RANK_VECTORS = 300_000  # per-layer rank assignments enumerated; beyond this the search takes too long


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
    ranks: tuple[tuple[str, int], ...]  # (role, rank) in ROLES order
    method: str = "lora"  # an entry of METHODS
    modules: tuple[str, ...] = ()  # the module each role names on this family, in the order of `ranks`

    def allocation(self) -> Allocation:
        adapted = tuple((layer, m, r) for layer in self.layers for m, (_, r) in zip(self.modules, self.ranks))
        return Allocation(self.head, self.head_rank, self.bias, self.dora, adapted, self.method, self.layers)

    def describe_ranks(self) -> str:
        if not self.ranks:  # LN tuning: no linear module, the layers' LayerNorms
            return "LayerNorms"
        if METHODS[self.method].ranks == "none":  # (IA)^3: one vector per module, no rank
            return ",".join(SHORT[t] for t, _ in self.ranks)
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
    # LN tuning has no ranks or modules of its own: the base's r and targets stand (unread, but valid)
    r, pattern = rank_fields(cand.ranks) if cand.ranks else (base.adapter.r, {})
    ratio = base.adapter.alpha / base.adapter.r  # keep the base's LoRA scaling alpha / r (the default's is 2)
    raw["model"]["name"] = shape.name
    raw["budget"] = budget
    method = METHODS[cand.method]
    # the base's LoRA-only switches (rsLoRA, an init, LoRA+) would make a candidate of another method invalid
    raw["adapter"].update({k: off for k, off in SWITCHES.items() if k not in method.reads})
    if not method.loraplus:
        raw["optim"]["loraplus_lr_ratio"] = None
    raw["adapter"].update(
        r=r, alpha=ratio * r, rank_pattern=pattern,
        target_modules=[t for t, _ in cand.ranks] or base.adapter.target_modules,
        layers=None if len(cand.layers) == shape.n_layers else list(cand.layers),
        method=cand.method, use_dora=cand.dora, bias=cand.bias,
    )
    if "target_r" in method.reads:  # AdaLoRA prunes the planned r by the base's share (2/3: 6 -> 4), like alpha
        raw["adapter"]["target_r"] = min(r - 1, max(1, round(r * base.adapter.target_r / base.adapter.r)))
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


# the variants searched when --methods is not given (AdaLoRA only when asked: Method.searched)
SEARCHED = tuple(v for v, (method, _) in VARIANTS.items() if METHODS[method].searched)


@dataclass(frozen=True)
class SearchSpace:
    methods: tuple[str, ...] = SEARCHED
    modules: tuple[str, ...] = tuple(ROLES)  # roles; those the family lacks are left out at search time
    ranks: tuple[int, ...] = DEFAULT_RANKS
    heads: tuple[str, ...] | None = None  # None: every head the model family offers
    biases: tuple[str, ...] = BIASES
    custom_layers: tuple[tuple[int, ...], ...] = ()  # besides all layers and the top k for every k

    @classmethod
    def parse(cls, methods=None, modules=None, ranks=None, heads=None, bias=None, layers=None) -> SearchSpace:
        """From the CLI's comma-separated strings; every name is checked here, with the valid ones listed."""
        from ...model.heads import HEADS

        space = cls(
            methods=_csv(methods, "methods", tuple(VARIANTS)) or SEARCHED,
            modules=_csv(modules, "modules", tuple(ROLES)) or tuple(ROLES),
            ranks=_ints(ranks, "ranks") if ranks is not None else DEFAULT_RANKS,
            heads=_csv(heads, "heads", tuple(HEADS)),
            biases=_csv(bias, "bias", BIASES) or BIASES,
            custom_layers=tuple(_ints(spec, "layers") for spec in layers or ()),
        )
        if min(space.ranks) < 1:
            raise ConfigError("--ranks: ranks must be >= 1")
        return space


def module_subsets(shape: ModelShape, modules: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Non-empty subsets of the roles asked for that the family has."""
    offered = shape.roles
    ordered = [t for t in ROLES if t in modules and t in offered]
    if not ordered:
        raise ConfigError(f"--modules: {shape.name} has none of {', '.join(modules)}; its roles: "
                          f"{', '.join(offered)}")
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

    subset: tuple[str, ...]  # roles
    linears: tuple[str, ...]  # the modules they name on this family
    variant: str  # of VARIANTS: the method, and its options
    costs: list[int]
    ranks: list[tuple[int, ...]]


def rank_vectors(method: str, n: int, grid: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The rank assignments of n modules a method can take: any per module (LoRA), one for all (VeRA), or a
    single placeholder where the rank changes nothing ((IA)^3, LN tuning)."""
    ranks = METHODS[method].ranks
    grid = tuple(r for r in grid if r >= METHODS[method].min_rank)
    if ranks == "per module":
        return list(itertools.product(grid, repeat=n))
    return [(r,) * n for r in grid] if ranks == "shared" else [(grid[0],) * n]


def method_subsets(method: str, subsets: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """The module subsets a method is planned with: none for one that adapts no linear module (LN tuning)."""
    return [()] if METHODS[method].norm_params is not None else subsets


def rank_table(shape: ModelShape, subset: tuple[str, ...], grid: tuple[int, ...], variant: str) -> RankTable:
    method, options = VARIANTS[variant]
    linears = tuple(shape.roles[t] for t in subset)
    unit = {(lin, r): sum(adapter_params(shape, lin, r, method, options.get("use_dora", False)).values())
            for lin in linears for r in grid}  # what one module costs at one rank, looked up below
    rows = []
    for ranks in rank_vectors(method, len(subset), grid):
        cost = sum(unit[lin, r] for lin, r in zip(linears, ranks))
        # among equal costs the preferred assignment sorts last: fewer distinct ranks, then the larger minimum
        rows.append((cost, -len(set(ranks)), min(ranks, default=0), ranks))
    rows.sort()
    return RankTable(subset, linears, variant, [row[0] for row in rows], [row[3] for row in rows])


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
    norms: int = 0  # LN tuning's LayerNorms over the layer set, summed layer by layer (layers may differ)

    def total(self, i: int) -> int:
        return self.fixed + self.norms + len(self.layers) * (self.per_layer_fixed + self.table.costs[i])

    def adapter_params(self, i: int) -> int:
        return self.norms + len(self.layers) * self.table.costs[i]

    def rank_key(self) -> tuple:
        """HEURISTIC as a sort key (smaller sorts first), for the design's best assignment."""
        best = self.fits - 1
        return rank_key(len(self.layers), len(self.table.subset), self.table.variant, self.adapter_params(best),
                        self.total(best), len(set(self.table.ranks[best])))

    def candidate(self, i: int, head_rank: int) -> Candidate:
        ranks = tuple(zip(self.table.subset, self.table.ranks[i]))
        method, options = VARIANTS[self.table.variant]
        return Candidate(self.head, head_rank, self.bias, options.get("use_dora", False), self.layers,
                         self.layer_label, ranks, method, self.table.linears)


def _heads_for(shape: ModelShape, heads: tuple[str, ...] | None) -> tuple[str, ...]:
    from ...model.heads import HEADS

    offered = tuple(name for name, h in HEADS.items() if h.families is None or shape.family in h.families)
    if heads is None:
        return offered
    bad = [h for h in heads if h not in offered]
    if bad:
        raise ConfigError(f"--heads: {', '.join(bad)} not available for {shape.model_type!r} models; choose from "
                          f"{', '.join(offered)}")
    return heads


def enumerate_designs(shape: ModelShape, budget: int, space: SearchSpace, head_rank: int) -> list[Design]:
    """Every design with at least one fitting rank assignment, best first by HEURISTIC."""
    subsets = module_subsets(shape, space.modules)
    methods = [VARIANTS[v][0] for v in space.methods]
    n_vectors = sum(len(space.ranks) ** len(s) if METHODS[m].ranks == "per module"  # not built just to count
                    else len(rank_vectors(m, len(s), space.ranks)) for m in methods for s in method_subsets(m, subsets))
    if n_vectors > MAX_RANK_VECTORS:
        raise ConfigError(f"the search would enumerate {n_vectors:,} rank assignments per layer set (limit "
                          f"{MAX_RANK_VECTORS:,}); pass fewer --ranks or --modules")
    tables = [rank_table(shape, s, space.ranks, v) for v in space.methods
              for s in method_subsets(VARIANTS[v][0], subsets)]
    designs = []
    for head in _heads_for(shape, space.heads):
        head_n = sum(head_params(shape, head, head_rank).values())
        for bias in space.biases:
            if bias != "none" and not sum(shape.layer_biases) + shape.outside_biases[head]:
                continue  # a model without biases (ModernBERT): every bias mode is 'none'
            fixed = head_n
            if bias == "all":  # every bias of the model trains, adapted or not
                fixed += sum(shape.layer_biases) + global_bias_params(shape, head)
            for label, layers in layer_sets(shape, space.custom_layers):
                for table in tables:
                    method = VARIANTS[table.variant][0]
                    if bias not in METHODS[method].biases:  # (IA)^3, LN tuning: none only
                        continue
                    per_layer_fixed = 0
                    if bias == "lora_only":
                        per_layer_fixed = sum(bias_params(shape, lin) for lin in table.linears)
                    norms = sum(sum(norm_params(shape, layer, method).values()) for layer in layers)
                    allowance = (budget - fixed - norms) // len(layers) - per_layer_fixed  # per layer, for LoRA
                    fits = bisect_right(table.costs, allowance)
                    if fits:
                        designs.append(Design(head, bias, label, layers, table, fixed, per_layer_fixed, fits, norms))
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
    if base.adapter.train_layernorms:
        raise ConfigError("the search plans without adapter.train_layernorms; count such a config with "
                          "`lorabudget plan -c CONFIG`, or search LayerNorm tuning alone with --methods ln_tuning")
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
