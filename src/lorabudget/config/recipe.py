"""When two runs are the same recipe: the one definition that `sweep`, `report` and `benchmarks/recipes.py` use.

A recipe is what a run learns from and how: the config's effective settings, without where the run writes
(`output_dir`), how it logs (`logging`), where its data file lives (`data.source`: a path, which differs between
machines for the same data) and the seed. Runs of one recipe that differ only by seed are repeats of one
experiment: a report shows them as one row with mean and spread. Where a run's summary says which rows it
trained and was scored on, that identity stands in for the path, so runs on different data never merge.
"""

from __future__ import annotations

from ..model.families import FAMILIES
from ..model.heads import HEADS
from ..model.methods import METHODS
from .layers import canonical_layers
from .loading import get_dotted
from .schema import Config

BERT_ROLE_OF = {module: role for role, module in FAMILIES["bert"].roles.items() if module != role}
# Fields that are not part of a recipe (see the module's docstring)
NOT_RECIPE = ("seed", "output_dir", "logging", "data.source")


def effective_settings(cfg: Config, n_layers: int | None = None, precision: str | None = None) -> dict:
    """The config as a plain dict with the fields that have no effect blanked (None): `optim.epochs` under
    `optim.max_steps`, `optim.warmup_ratio` under `optim.warmup_steps`, `optim.ema_warmup` without
    `optim.ema_decay`, `head.rank` for heads without one, `speed.prefix_cache_storage` (RAM or disk hold the
    same numbers) and `speed.processes` (1 or 2 processes learn alike: benchmarks/accuracy.py's fast-2p path).
    Two runs that train alike compare equal, even when written by versions with other defaults for such fields.

    With the model's `n_layers` (a run's summary records it), `adapter.layers` is written one way: None for every
    layer, else the index list, so `top-half` and [3, 4, 5] on a 6-layer model compare equal. With the
    `precision` a run resolved (its summary records that too), `model.precision` is what it trained in:
    `auto` means bf16 on one machine and fp32 on another, and those are different numerics, not seeds of one
    recipe, while `auto` that became bf16 and an explicit `bf16` are the same."""
    out = cfg.model_dump(mode="json")
    out["speed"]["prefix_cache_storage"] = None
    out["speed"]["processes"] = None  # how many processes shared the work: a speed choice, like a thread count
    if n_layers is not None:
        out["adapter"]["layers"] = canonical_layers(cfg.adapter.layers, n_layers)
    if precision is not None:
        out["model"]["precision"] = precision
    if cfg.optim.max_steps is not None:
        out["optim"]["epochs"] = None
    if cfg.optim.warmup_steps is not None:
        out["optim"]["warmup_ratio"] = None
    if cfg.optim.ema_decay is None:
        out["optim"]["ema_warmup"] = None
    if not HEADS[cfg.head.type].uses_rank:
        out["head"]["rank"] = None
    if not HEADS[cfg.head.type].uses_pooling:
        out["head"]["pooling"] = None
    # BERT-style module names and the roles that name them are one recipe ('output.dense' is 'ffn_out')
    out["adapter"]["target_modules"] = [BERT_ROLE_OF.get(t, t) for t in out["adapter"]["target_modules"]]
    out["adapter"]["rank_pattern"] = {BERT_ROLE_OF.get(k, k): r for k, r in out["adapter"]["rank_pattern"].items()}
    for name in ("r", "alpha", "dropout", "target_modules"):  # those the adapter method does not read: VeRA has
        if name not in METHODS[cfg.adapter.method].reads:  # no alpha, (IA)^3 no rank, LN tuning no targets
            out["adapter"][name] = None
    return out


def recipe_settings(cfg: Config, summary: dict | None = None) -> dict:
    """The settings that make runs seeds of one recipe. With a run's `summary`, its model depth and resolved
    precision make the layers and the precision comparable (see `effective_settings`), and the rows it trained on
    (`data.identity`) replace the data file's path."""
    summary = summary or {}
    out = without_non_recipe(effective_settings(cfg, summary.get("encoder_layers"), summary.get("precision")))
    data = summary.get("data")
    if data and "validation_hash" in data:
        out["data"]["identity"] = {k: data.get(k) for k in ("train_rows", "validation_hash")}
    return out


def without_non_recipe(settings: dict) -> dict:
    """`settings` (a config as a plain dict) without the NOT_RECIPE fields, in place; returned for chaining."""
    for key in NOT_RECIPE:
        *parents, last = key.split(".")
        parent = get_dotted(settings, ".".join(parents)) if parents else settings
        if isinstance(parent, dict):
            parent.pop(last, None)
    return settings
