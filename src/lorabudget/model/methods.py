"""Adapter methods: the `METHODS` table, one entry per method. `peft` does the math; an entry says how to ask
peft for it, which of the built model's parameters are its own (for the budget breakdown), how many parameters it
adds to one adapted linear layer or LayerNorm (the planner's arithmetic, checked against the built model by the
tests), and which adapter options it reads. The config's allowed `adapter.method` values, the planner, the budget
and the optimizer all read this table, so a new method is one entry here plus its tests (docs/extending.md walks
through one).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .adalora import DEFAULTS as ADALORA_DEFAULTS
from .adalora import AdaLoraTraining, config_problem
from .adalora import linear_params as adalora_params
from .adalora import peft_config as adalora_config

# adapter.init -> peft's init_lora_weights
LORA_INITS = {"default": True, "gaussian": "gaussian", "pissa": "pissa", "olora": "olora"}
REAL_WEIGHT_INITS = ("pissa", "olora")  # decompose the pretrained weights: not on a meta-device shape
# Adapter options some methods do not have, each at the value that means 'off'. A method that does not read one
# refuses any other value: a DoRA or PiSSA setting that silently did nothing would mislead a comparison.
LORA_SWITCHES = {"rank_pattern": {}, "use_dora": False, "use_rslora": False, "init": "default",
                 "inference_scale": 1.0}
SWITCHES = {**LORA_SWITCHES, **ADALORA_DEFAULTS}  # and AdaLoRA's target rank and schedule
# What every method reads unless its entry says otherwise: a rank per module, a scaling, a dropout, the targets
DEFAULT_READS = frozenset({"r", "alpha", "dropout", "target_modules", "rank_pattern"})


@dataclass(frozen=True)
class Placement:
    """Where a method goes on one model, as model/adapters.py resolved it: what a peft config needs to know."""

    targets: list[str]  # full names of the adapted linear layers; for a method with norm_params, of LayerNorms
    modules_to_save: tuple[str, ...]  # trained in full: the head's modules, adapter.train_layernorms' LayerNorms
    rank_pattern: dict[str, int]  # exact per-module ranks, keyed by escaped full names
    # of the targets, the feed-forward output layers (the family's 'ffn_out' role): their input is the FFN's
    # intermediate activation, which (IA)^3 rescales (the paper's l_ff) rather than their output
    feedforward: tuple[str, ...] = ()


class MethodTraining:
    """What a method does in the training loop beside the optimizer: nothing, unless its entry's `training`
    gives a subclass (AdaLoRA's rank allocation, model/adalora.py). The recipe calls each hook at its place."""

    file: str | None = None  # checkpoint file of its state (safetensors), None when it keeps none
    regulariser: Callable[[], Any] | None = None  # () -> a term added to each micro-batch's training loss

    def after_step(self, step: int) -> None:
        """After optimizer step `step` (1-based), before the gradients are zeroed."""

    def state(self) -> dict:
        return {}

    def load_state(self, state, path, way_out: str) -> None:
        """Restore what `state` gave (a checkpoint's `file`; None when the checkpoint lacks it)."""

    def before_save(self) -> None:
        """The best weights are in the model and about to be shipped as the adapter."""

    def summary(self, trainable: int) -> dict:
        """Entries for summary.json."""
        return {}


NO_TRAINING = MethodTraining()


@dataclass(frozen=True)
class Method:
    description: str
    peft_config: Callable[[Any, Placement], Any]  # (adapter section, placement) -> a peft config
    # one of the method's parameter names -> (kind, adapted module): 'lora' or 'dora magnitude', say
    parameter: re.Pattern
    kinds: dict[str, str]  # the pattern's `kind` group -> the budget group's first words
    # (in features, out features, rank, options) -> {budget group's first words: count} for one adapted linear;
    # options: 'use_dora', and 'feedforward' (whether it is the feed-forward output layer, Placement.feedforward)
    linear_params: Callable[[int, int, int, dict], dict[str, int]]
    # the planner's variants: name -> the adapter options it sets (lora: plain, dora: with magnitudes)
    variants: dict[str, dict] = field(default_factory=dict)
    # (the LayerNorm's own parameters) -> {budget group's first words: count} for one LayerNorm of an adapted
    # encoder layer, for a method that trains LayerNorms instead of adapting linear layers (LN tuning); None else
    norm_params: Callable[[int], dict[str, int]] | None = None
    # adapter fields it reads, of r, alpha, dropout, target_modules and SWITCHES: 'rank_pattern' means a rank per
    # module, 'r' without it one rank shared by every adapted layer, neither no rank at all
    reads: frozenset[str] = DEFAULT_READS
    biases: tuple[str, ...] = ("none", "all", "lora_only")  # adapter.bias values it offers
    loraplus: tuple[str, ...] = ()  # kinds that optim.loraplus_lr_ratio trains faster: LoRA's B matrices
    undecayed: tuple[str, ...] = ()  # kinds held as matrices that are scales all the same: never weight-decayed
    # parameters peft adds that are constants (AdaLoRA's ranknum, the initial rank): peft creates them frozen, but
    # on the meta device they come out trainable, so the build freezes them by these names
    constants: tuple[str, ...] = ()
    min_rank: int = 1  # the lowest r it takes (AdaLoRA: 2, to prune to a target_r of at least 1)
    # whether `lorabudget plan` searches it unasked: AdaLoRA only with --methods, since its E vectors would outrank
    # LoRA at the same rank on the heuristic's 'more adapter parameters' while it prunes a third of them
    searched: bool = True
    # (adapter section) -> why its values do not go together for this method, or None (AdaLoRA: target_r < r)
    check: Callable[[Any], str | None] | None = None
    # (peft model, adapter section, the run's optimizer steps) -> its MethodTraining; None: NO_TRAINING
    training: Callable[[Any, Any, int], MethodTraining] | None = None

    def train_hooks(self, model, adapter, total_steps: int) -> MethodTraining:
        return self.training(model, adapter, total_steps) if self.training else NO_TRAINING

    def group(self, name: str) -> str | None:
        """The budget group of a trainable parameter ('lora attention.self.query'), or None if not this
        method's."""
        m = self.parameter.search(name)
        return f"{self.kinds[m['kind']]} {m['module']}" if m else None

    @property
    def ranks(self) -> str:
        """'per module' (adapter.r and adapter.rank_pattern), 'shared' (adapter.r for every layer) or 'none'."""
        return "per module" if "rank_pattern" in self.reads else "shared" if "r" in self.reads else "none"


def _lora_config(adapter, place: Placement):
    from peft import LoraConfig, TaskType

    return LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=adapter.r,
        lora_alpha=adapter.alpha,
        lora_dropout=adapter.dropout,
        target_modules=place.targets,
        modules_to_save=list(place.modules_to_save),
        use_dora=adapter.use_dora,
        use_rslora=adapter.use_rslora,
        init_lora_weights=LORA_INITS[adapter.init],
        bias=adapter.bias,
        rank_pattern=place.rank_pattern,
    )


def _lora_params(fan_in: int, fan_out: int, r: int, options: dict) -> dict[str, int]:
    counts = {"lora": r * (fan_in + fan_out)}  # A is r x in, B is out x r
    if options.get("use_dora"):
        counts["dora magnitude"] = fan_out  # one magnitude per output feature
    return counts


def _vera_config(adapter, place: Placement):
    from peft import TaskType, VeraConfig

    # One pair of frozen random projections serves every adapted layer; peft sizes it to the largest in and out
    # widths and slices it per layer, so layers of different shapes mix. The projections are saved with the
    # adapter (save_projection), so a reload does not depend on regenerating them from projection_prng_key.
    return VeraConfig(task_type=TaskType.SEQ_CLS, r=adapter.r, target_modules=place.targets,
                      vera_dropout=adapter.dropout, modules_to_save=list(place.modules_to_save), save_projection=True,
                      bias="vera_only" if adapter.bias == "lora_only" else adapter.bias)


def _ia3_config(adapter, place: Placement):
    from peft import IA3Config, TaskType

    # Exact module names: peft's own default for BERT and roberta, the suffix 'output.dense', would also make
    # 'attention.output.dense' a feed-forward module.
    return IA3Config(task_type=TaskType.SEQ_CLS, target_modules=place.targets,
                     feedforward_modules=list(place.feedforward), modules_to_save=list(place.modules_to_save))


def _ia3_params(fan_in: int, fan_out: int, r: int, options: dict) -> dict[str, int]:
    # a feed-forward output scales its input (the intermediate activation), every other module its output
    return {"ia3": fan_in if options.get("feedforward") else fan_out}


def _ln_tuning_config(adapter, place: Placement):
    from peft import LNTuningConfig, TaskType

    return LNTuningConfig(task_type=TaskType.SEQ_CLS, target_modules=place.targets,
                          modules_to_save=list(place.modules_to_save))


LAYERNORM = "layernorm"  # the budget group's first words for a LayerNorm trained in full


def layernorm_params(own: int) -> dict[str, int]:
    """One LayerNorm trained in full: its own parameters, weight and bias (2 x width; LN tuning, and
    adapter.train_layernorms)."""
    return {LAYERNORM: own}


# adapter.train_layernorms: peft trains the adapted layers' LayerNorms in full (modules_to_save), counted in the
# groups LN tuning's own LayerNorms use ('layernorm attention.output.LayerNorm')
SAVED_LAYERNORM = re.compile(r"\.layers?\.\d+\.(?P<module>.+?)\.modules_to_save\.")

METHODS: dict[str, Method] = {
    "lora": Method(
        "LoRA (peft): a rank-r update B A beside each adapted linear layer; DoRA (adapter.use_dora) adds a "
        "magnitude vector per layer, rsLoRA (adapter.use_rslora) scales by alpha / sqrt(r)",
        _lora_config,
        re.compile(r"\.layers?\.\d+\.(?P<module>.+?)\.(?P<kind>lora_A|lora_B|lora_magnitude_vector|lora_embedding_A|"
                   r"lora_embedding_B)\."),
        {"lora_A": "lora", "lora_B": "lora", "lora_embedding_A": "lora", "lora_embedding_B": "lora",
         "lora_magnitude_vector": "dora magnitude"},
        _lora_params,
        variants={"lora": {}, "dora": {"use_dora": True}},
        reads=DEFAULT_READS | set(LORA_SWITCHES),
        loraplus=("lora_B", "lora_embedding_B"),
    ),
    "vera": Method(
        "VeRA (peft): frozen random projections of rank r shared by all adapted layers (buffers, never trained), "
        "and per adapted linear layer two trained vectors, one of r scales and one of fan_out scales (r + fan_out "
        "parameters); one r for every layer (no rank_pattern), alpha unused; VeRA wants larger r than LoRA",
        _vera_config,
        re.compile(r"\.layers?\.\d+\.(?P<module>.+?)\.(?P<kind>vera_lambda_b|vera_lambda_d)\."),
        {"vera_lambda_b": "vera", "vera_lambda_d": "vera"},
        lambda fan_in, fan_out, r, options: {"vera": r + fan_out},  # lambda_d has r scales, lambda_b fan_out
        variants={"vera": {}},
        reads=frozenset({"r", "dropout", "target_modules"}),
    ),
    "ia3": Method(
        "(IA)^3 (peft): one trained scaling vector per adapted linear layer, initialised to 1: of its input "
        "(fan_in) for the feed-forward output layer (role ffn_out, 'output.dense' in BERT naming: its input is the "
        "FFN's intermediate activation, which the paper rescales), of its output (fan_out) for every other target "
        "(the paper's keys and values: target_modules [key, value, ffn_out]); no rank, alpha or dropout; bias none",
        _ia3_config,
        re.compile(r"\.layers?\.\d+\.(?P<module>.+?)\.(?P<kind>ia3_l)\."),
        {"ia3_l": "ia3"},
        _ia3_params,
        variants={"ia3": {}},
        reads=frozenset({"target_modules"}),
        biases=("none",),
        undecayed=("ia3_l",),  # held as 1 x n or n x 1 matrices; decay would pull the scales from 1 towards 0
    ),
    "ln_tuning": Method(
        "LayerNorm tuning (peft LN tuning): every LayerNorm inside the adapted layers (adapter.layers; two per "
        "roberta / BERT layer) trains its weight and bias, 2 x hidden each, and nothing else of the encoder; "
        "target_modules, r, alpha and dropout unused; bias none. Beside another method: adapter.train_layernorms",
        _ln_tuning_config,
        re.compile(r"\.layers?\.\d+\.(?P<module>.+?)\.(?P<kind>ln_tuning_layers)\."),
        {"ln_tuning_layers": LAYERNORM},
        lambda fan_in, fan_out, r, options: {},  # adapts no linear layer
        variants={"ln_tuning": {}},
        norm_params=layernorm_params,
        reads=frozenset(),
        biases=("none",),
    ),
    "adalora": Method(
        "AdaLoRA (peft): LoRA in SVD form, P diag(E) Q beside each adapted linear layer, r x (fan_in + fan_out) + r "
        "parameters at the initial rank r, all of which train; during training the least important triplets "
        "are pruned (E masked to 0) until adapter.target_r per module remains on average, shared out by "
        "importance (schedule: adapter.tinit, tfinal, deltaT; scores: beta1, beta2; orth_reg_weight); the "
        "shipped adapter holds the kept ranks. One r for every module; DoRA, rsLoRA, the inits and rank_pattern "
        "are LoRA's",
        adalora_config,
        # its lora_A and lora_B are named as LoRA's, whose entry (first) groups them; E is its own
        re.compile(r"\.layers?\.\d+\.(?P<module>.+?)\.(?P<kind>lora_E)\."),
        {"lora_E": "lora"},
        adalora_params,
        variants={"adalora": {}},
        reads=frozenset({"r", "alpha", "dropout", "target_modules", "inference_scale", *ADALORA_DEFAULTS}),
        constants=("ranknum",),
        min_rank=2,
        searched=False,
        check=config_problem,
        training=AdaLoraTraining,
    ),
}


# what the optimizer treats apart (train/optim.py), whichever method a parameter belongs to
LORAPLUS_KINDS = frozenset(kind for m in METHODS.values() for kind in m.loraplus)
UNDECAYED_KINDS = frozenset(kind for m in METHODS.values() for kind in m.undecayed)


def parameter_kind(name: str) -> str | None:
    """The adapter kind of a parameter ('lora_B', 'ia3_l', ...), or None for the head's and the rest."""
    for method in METHODS.values():
        m = method.parameter.search(name)
        if m:
            return m["kind"]
    return None


def parameter_group(name: str) -> str | None:
    """The budget group of an adapter parameter, whichever method it belongs to (and the LayerNorms of
    adapter.train_layernorms); None for other parameters."""
    group = next((g for m in METHODS.values() if (g := m.group(name)) is not None), None)
    if group is None and (m := SAVED_LAYERNORM.search(name)):
        group = f"{LAYERNORM} {m['module']}"
    return group


def option_problem(adapter) -> str | None:
    """Why the adapter section asks its method for something the method does not have; None when it does not."""
    name, method = adapter.method, METHODS[adapter.method]
    for option, off in SWITCHES.items():
        value = getattr(adapter, option)
        if option not in method.reads and value != off:
            why = " (one rank r serves every adapted layer)" if option == "rank_pattern" and "r" in method.reads else ""
            users = " or ".join(f"adapter.method={n}" for n, m in METHODS.items() if option in m.reads)
            return (f"adapter.{option}={value!r} is not an option of adapter.method={name}{why}; leave it at "
                    f"{off!r} or use {users}")
    if adapter.bias not in method.biases:
        return (f"adapter.bias={adapter.bias!r} is not offered by adapter.method={name} (peft has no bias option "
                f"for it); choose from {', '.join(method.biases)}")
    if adapter.train_layernorms and method.norm_params is not None:
        return f"adapter.train_layernorms is what adapter.method={name} does already; leave it false"
    return method.check(adapter) if method.check else None
