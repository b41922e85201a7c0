"""How the planner orders the designs that fit a budget: HEURISTIC in words (`plan` prints it) and as a sort key.

Its own module because it is where the studies' results come back into the tool: a term moves only on a
measured result, and the comment beside it says which."""

from __future__ import annotations

HEURISTIC = (
    "Ranking, best first: (1) more encoder layers adapted; (2) more module types adapted per layer; (3) more "
    "adapter parameters (LoRA + DoRA; VeRA's or (IA)^3's vectors; LayerNorms), so budget goes to adapters rather "
    "than to a large head or to biases; (4) more of the budget used, never more than all of it; (5) the adapter "
    "method the studies measured best (docs/recipes.md): plain LoRA before DoRA and the others; (6) fewer distinct "
    "ranks. Rationale: LoRA on every layer and linear module at a modest rank generally beats a high rank on a few "
    "modules (LoRA and QLoRA papers, and this project's proxy studies), and a head trained in full buys no "
    "adaptation of the encoder. Each row is one design (head, bias, method, module types, layers) with its best "
    "ranks: per module type, from the rank grid, the combination that spends the most budget."
)

# Term (5) of HEURISTIC, from the proxy studies (docs/recipes.md; MiniLM, budget 180,000). Every measured winner
# was plain LoRA; the one DoRA run, the planner's own DoRA row (five module types, 178,948 trainable), scored 90.4
# against 90.87 +- 0.42 for plain LoRA on all six types (167,428) at the same length, with more parameters and
# 39% more time per step. That is weak evidence (one seed, not the same allocation), so it only breaks ties:
# where two designs have the same coverage and count, plain LoRA ranks first, whatever order the search met them
# in (before, the enumeration order decided, so that a DoRA design with one head could precede a LoRA design with
# another). Methods not listed share the next place. A method moves only on a study's evidence.
# The round-2 study (configs/recipes/round2-*.yaml, docs/recipes.md; 2,000 validation rows, against LoRA at the same
# length) moved none: AdaLoRA scored 0.20 below LoRA on three paired seeds, (IA)^3 0.60 below on two (with a sixth
# of the parameters); VeRA 0.5 below after its first epoch at 5x LoRA's time per step (one seed); LayerNorms
# beside LoRA +0.15 on three seeds (a paired t-test: p 0.21, within the noise). Full fine-tuning of every weight
# scored no more than LoRA (benchmarks/ceiling.py). Differences this small cannot order those methods among themselves,
# so they keep sharing the place after LoRA. The one lever that won was an optimiser setting (lr 1e-3 instead of 2e-3:
# +0.23 on five paired seeds, p 0.01), which is a config's, not a design's: the planner writes its designs into the
# config it is given (`plan -c ... --write`), and the defaults now carry the lower rate, so every plan gets it.
MEASURED_METHOD_ORDER = {"lora": 0}


def rank_key(layers: int, module_types: int, variant: str, adapter_params: int, total: int,
             distinct_ranks: int) -> tuple:
    """HEURISTIC as a sort key, smaller first: one design's best assignment."""
    measured = MEASURED_METHOD_ORDER.get(variant, len(MEASURED_METHOD_ORDER))
    return (-layers, -module_types, -adapter_params, -total, measured, distinct_ranks)
