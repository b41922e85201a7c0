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
from .families import FAMILIES, family_key
from .head_modules import (
    FirstTokenLinear,
    FirstTokenLowRank,
    LowRankDense,
    LowRankPooler,
    LowRankTanh,
    MaskSlot,
    TokenPooling,
    head_settings,
    install_linear,
    install_lowrank,
    output_layer,
    watch_mask,
)

DEFAULT_HEAD_RANK = 32


@dataclass(frozen=True)
class Head:
    description: str
    families: tuple[str, ...] | None  # FAMILIES keys that offer it; None: every family
    # (style, hidden, labels, rank) -> {group: count}, the style being the family's `head_style`; None: the
    # model class's own head, counted on the built model (model_shape reads it off a meta-device build)
    params: Callable[[str, int, int, int], dict[str, int]] | None
    trains: Callable[[str], tuple[str, ...]] = lambda style: ()  # modules besides the classifier, in full
    install: Callable[[nn.Module, str, int, str], None] | None = None  # (model, style, rank, pooling); None:
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


def _pooler_params(style: str, hidden: int, labels: int, rank: int) -> dict[str, int]:
    return {"head (classifier)": _out_layer(hidden, labels), "head (pooler)": _dense(hidden)}


def _linear_params(style: str, hidden: int, labels: int, rank: int) -> dict[str, int]:
    return {"head (classifier)": _out_layer(hidden, labels)}


_LOWRANK_HOLDER = {"pooler": "pooler", "top_pooler": "pooler", "prediction_head": "head"}  # style -> module


def _lowrank_params(style: str, hidden: int, labels: int, rank: int) -> dict[str, int]:
    if style in _LOWRANK_HOLDER:  # the factored dense layer sits in a module of its own, the classifier behind it
        return {"head (classifier)": _out_layer(hidden, labels),
                f"head ({_LOWRANK_HOLDER[style]})": _low_rank_dense(hidden, rank)}
    return {"head (classifier)": _low_rank_dense(hidden, rank) + _out_layer(hidden, labels)}


def _lowrank_trains(style: str) -> tuple[str, ...]:
    return (_LOWRANK_HOLDER[style],) if style in _LOWRANK_HOLDER else ()


_OWN_HEADS = tuple(key for key, fam in FAMILIES.items() if fam.head_style is not None)
_CUSTOM_CODE = (head_settings, output_layer, MaskSlot, TokenPooling, watch_mask)

HEADS: dict[str, Head] = {
    "default": Head(
        "the model class's own head, counted on the built model (roberta, MPNet, ELECTRA: dense 768x768 + "
        "output, 593,668; BERT: the output layer behind a frozen pooler; DistilBERT: pre_classifier + classifier; "
        "DeBERTa: pooler + classifier; ModernBERT: its prediction head + classifier)", None, None),
    "pooler": Head(
        "BERT-style models only: BERT's own head, with its pooler trained too", ("bert",), _pooler_params,
        trains=lambda style: ("pooler",),
        unavailable_hint=" (roberta's 'default' head already holds the dense layer that plays its part)"),
    "linear": Head(
        "one output layer on the pooled tokens (`head.pooling`)", _OWN_HEADS, _linear_params,
        install=install_linear, exported=(*_CUSTOM_CODE, FirstTokenLinear, install_linear), uses_pooling=True,
        unavailable_hint="; set head.type=default for the model class's own head"),
    "lowrank": Head(
        "pooled tokens (`head.pooling`) -> dense factored through rank `head.rank` (hidden -> k -> hidden) -> "
        "tanh -> output layer (for BERT it replaces the pooler); roberta-base, k=32, 4 classes: 52,996",
        _OWN_HEADS, _lowrank_params, trains=_lowrank_trains,
        install=install_lowrank,
        exported=(*_CUSTOM_CODE, LowRankDense, FirstTokenLowRank, LowRankPooler, LowRankTanh,
                  install_lowrank), uses_rank=True,
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
    """The FAMILIES key of a model's configuration (its model_type when no entry knows it)."""
    return family_key(config.model_type)


def head_style(config) -> str | None:
    family = FAMILIES.get(model_family(config))
    return family.head_style if family is not None else None


def own_head_modules(model) -> tuple[str, ...]:
    """The modules of the model class's own head: those beside the encoder that hold parameters ('classifier';
    DistilBERT's 'pre_classifier' too, DeBERTa's 'pooler', ModernBERT's 'head')."""
    encoder = model.base_model
    names = tuple(n for n, child in model.named_children()
                  if child is not encoder and any(True for _ in child.parameters()))
    if not names:
        raise ModelError(f"{type(model).__name__} has no classification head beside its encoder to train")
    return names


def _classifier_name(model) -> tuple[str, ...]:
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
        offered = ", ".join(FAMILIES[f].name if f in FAMILIES else f for f in head.families)
        why = f" ({FAMILIES[family].no_own_heads_why})" if family in FAMILIES and FAMILIES[family].no_own_heads_why \
            else ""
        raise ModelError(f"head.type={head_type} is available for {offered}; not for {model_type!r}{why}"
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
    if head.params is None:  # the model class's own head, whatever it consists of
        return HeadSpec(head_type, own_head_modules(model), head.stock_loadable)
    style = head_style(model.config) or ""
    classifier = _classifier_name(model)
    if head.install is not None:
        head.install(model, style, rank, pooling)
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in head.trains(style) if m not in present]
    if missing:
        raise ModelError(f"head.type={head_type} trains the {missing[0]!r} module, which this "
                         f"{model.config.model_type!r} model does not have")
    return HeadSpec(head_type, classifier + head.trains(style), head.stock_loadable)
