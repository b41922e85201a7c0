"""Classification heads: the `HEADS` table, one entry per head. Each is a budget lever: roberta's own head alone
is 593,668 parameters, 59% of a 1M budget.

An entry says everything the tool needs to know about a head: which model families offer it, which modules
train in full, how many parameters it trains (the planner's arithmetic, checked against the built model by the
tests), how it is put on a model, and what an exported model needs to rebuild it. The config's allowed
`head.type` values, the planner, the budget breakdown and export all read this table, so a new head is one entry
here plus its tests (docs/extending.md walks through one).

A head is set up on the plain transformers model *before* adapters are added; `peft` then trains the head's
modules in full (`modules_to_save`). The model families are told apart by their configuration's `model_type`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..errors import ModelError
from .head_modules import (
    FirstTokenLinear,
    FirstTokenLowRank,
    LowRankDense,
    LowRankPooler,
    MaskSlot,
    TokenPooling,
    head_settings,
    install_linear,
    install_lowrank,
    watch_mask,
)

ROBERTA_LIKE = {"roberta", "xlm-roberta", "camembert", "xlm-roberta-xl"}
BERT_LIKE = {"bert"}
DEFAULT_HEAD_RANK = 32
FAMILY_NAMES = {"roberta": "roberta", "bert": "BERT"}  # as people write them


@dataclass(frozen=True)
class Head:
    description: str
    families: tuple[str, ...] | None  # model families that offer it; None: every family
    params: Callable[[str, int, int, int], dict[str, int]]  # (family, hidden, labels, rank) -> {group: count}
    trains: Callable[[str], tuple[str, ...]] = lambda family: ()  # modules besides the classifier, in full
    install: Callable[[nn.Module, str, int, str], None] | None = None  # (model, family, rank, pooling); None:
    # the model class's own head
    exported: tuple = ()  # classes and functions a merged export's modeling file carries (custom heads only)
    unavailable_hint: str = ""  # said when a family does not offer it
    uses_rank: bool = False  # whether `head.rank` changes it
    uses_pooling: bool = False  # whether `head.pooling` changes it

    @property
    def stock_loadable(self) -> bool:
        """Can `PeftModel.from_pretrained` rebuild it on the stock model class?"""
        return self.install is None


def _dense(hidden: int) -> int:
    return hidden * hidden + hidden


def _out_layer(hidden: int, labels: int) -> int:
    return hidden * labels + labels


def _low_rank_dense(hidden: int, rank: int) -> int:
    return 2 * hidden * rank + hidden  # hidden -> k (no bias) -> hidden (bias)


def _default_params(family: str, hidden: int, labels: int, rank: int) -> dict[str, int]:
    # roberta's head holds a dense layer before its output layer; BERT's output layer sits behind a frozen pooler
    dense = _dense(hidden) if family == "roberta" else 0
    return {"head (classifier)": dense + _out_layer(hidden, labels)}


def _pooler_params(family: str, hidden: int, labels: int, rank: int) -> dict[str, int]:
    return {"head (classifier)": _out_layer(hidden, labels), "head (pooler)": _dense(hidden)}


def _linear_params(family: str, hidden: int, labels: int, rank: int) -> dict[str, int]:
    return {"head (classifier)": _out_layer(hidden, labels)}


def _lowrank_params(family: str, hidden: int, labels: int, rank: int) -> dict[str, int]:
    if family == "bert":  # the pooler's place, BERT's own classifier behind it
        return {"head (classifier)": _out_layer(hidden, labels), "head (pooler)": _low_rank_dense(hidden, rank)}
    return {"head (classifier)": _low_rank_dense(hidden, rank) + _out_layer(hidden, labels)}


_CUSTOM_CODE = (head_settings, MaskSlot, TokenPooling, watch_mask)

HEADS: dict[str, Head] = {
    "default": Head(
        "the model class's own head (roberta: dense 768x768 + output, 593,668; BERT: the output layer behind a "
        "frozen pooler)", None, _default_params),
    "pooler": Head(
        "BERT-style models only: BERT's own head, with its pooler trained too", ("bert",), _pooler_params,
        trains=lambda family: ("pooler",),
        unavailable_hint=" (roberta's 'default' head already holds the dense layer that plays its part)"),
    "linear": Head(
        "one output layer on the pooled tokens (`head.pooling`)", ("roberta", "bert"), _linear_params,
        install=install_linear, exported=(*_CUSTOM_CODE, FirstTokenLinear, install_linear), uses_pooling=True,
        unavailable_hint="; set head.type=default for the model class's own head"),
    "lowrank": Head(
        "pooled tokens (`head.pooling`) -> dense factored through rank `head.rank` (hidden -> k -> hidden) -> "
        "tanh -> output layer (for BERT it replaces the pooler); roberta-base, k=32, 4 classes: 52,996",
        ("roberta", "bert"), _lowrank_params, trains=lambda family: ("pooler",) if family == "bert" else (),
        install=install_lowrank,
        exported=(*_CUSTOM_CODE, LowRankDense, FirstTokenLowRank, LowRankPooler, install_lowrank), uses_rank=True,
        uses_pooling=True,
        unavailable_hint="; set head.type=default for the model class's own head"),
}


@dataclass(frozen=True)
class HeadSpec:
    """What a head set up on a model trains."""

    type: str
    modules_to_save: tuple[str, ...]  # module names (suffixes) that train in full
    stock_loadable: bool


def model_family(config) -> str:
    if config.model_type in ROBERTA_LIKE:
        return "roberta"
    if config.model_type in BERT_LIKE:
        return "bert"
    return config.model_type


def head_module_names(model) -> tuple[str, ...]:
    """Names of the modules the default head consists of ('classifier' or 'score')."""
    names = [n for n in ("classifier", "score") if isinstance(getattr(model, n, None), nn.Module)]
    if not names:
        raise ModelError(f"{type(model).__name__} has no 'classifier' or 'score' module to train as a head")
    return (names[0],)


def lookup(head_type: str) -> Head:
    if head_type not in HEADS:
        raise ModelError(f"unknown head type {head_type!r}; choose one of {', '.join(HEADS)}")
    return HEADS[head_type]


def check_family(head_type: str, family: str, model_type: str) -> Head:
    """The head's entry, or a ModelError saying which families offer it."""
    head = lookup(head_type)
    if head.families is not None and family not in head.families:
        offered = "- and ".join(FAMILY_NAMES.get(f, f) for f in head.families)  # 'roberta- and BERT'
        raise ModelError(f"head.type={head_type} is available for {offered}-style models, not {model_type!r}"
                         f"{head.unavailable_hint}")
    return head


def apply_head(model, head_cfg) -> HeadSpec:
    """Set up the head on a transformers sequence-classification model; return what trains.

    `head_cfg` is the config's head section (its type, rank and pooling), or just a head type (the rank and
    pooling at their defaults)."""
    if isinstance(head_cfg, str):
        head_type, rank, pooling = head_cfg, DEFAULT_HEAD_RANK, "cls"
    else:
        head_type, rank, pooling = head_cfg.type, head_cfg.rank, head_cfg.pooling
    family = model_family(model.config)
    head = check_family(head_type, family, model.config.model_type)
    classifier = head_module_names(model)
    if head.install is not None:
        head.install(model, family, rank, pooling)
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in head.trains(family) if m not in present]
    if missing:
        raise ModelError(f"head.type={head_type} trains the {missing[0]!r} module, which this "
                         f"{model.config.model_type!r} model does not have")
    return HeadSpec(head_type, classifier + head.trains(family), head.stock_loadable)
