"""Put the head and the adapters on a model: the head first (it trains in full), then the adapter method from
`METHODS` on the resolved targets. `peft` does the adapter math; `targets` decides where it goes."""

from __future__ import annotations

import contextlib
import warnings

import torch
from torch import nn

from ..config import AdapterConfig, HeadConfig
from ..errors import ModelError
from .families import role_module
from .heads import HeadSpec, apply_head
from .methods import METHODS, REAL_WEIGHT_INITS, Placement
from .targets import EncoderLayout, encoder_layout, exact_rank_pattern, resolve_targets


@contextlib.contextmanager
def quiet_peft_deprecations():
    """peft 0.21 reads `model.is_gradient_checkpointing`, which transformers 5 deprecates with a FutureWarning on
    every build and load; LN tuning, which wraps LayerNorms by design, probes their in/out features and warns of
    an 'unsupported layer type'; and AdaLoRA's saves and loads warn of sharded weights (a module pruned to rank 0)
    and of unmatched rank_pattern keys (AdaLoRA's own pattern). All are peft's, not something a user can act on,
    so they are silenced here only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r"Unsupported layer type .*LayerNorm", category=UserWarning)
        # an AdaLoRA module pruned to rank 0 saves 0-sized lora_A / lora_B, which peft's save takes for unsharded
        # DeepSpeed or FSDP state (peft allows that rank: huggingface/peft#1539)
        warnings.filterwarnings("ignore", message=r"Adapter .* LoRA tensor\(s\) have invalid shape")
        # and AdaLoRA's rank pattern (its kept triplets, keyed '... .lora_E') is not LoRA's, which peft checks too
        warnings.filterwarnings("ignore", message=r"The following rank_pattern keys did not match .*\.lora_E'\]")
        yield


def add_adapters(model: nn.Module, cfg: AdapterConfig, head_cfg: HeadConfig | str, *,
                 meta_ok: bool = False) -> tuple[nn.Module, HeadSpec, list[str]]:
    """Head first, then the adapters on the resolved targets. Returns (peft model, head spec, adapted module
    names). `meta_ok`: a meta-device shape (for counting) may stand in for an init that needs real weights."""
    from peft import get_peft_model

    method = METHODS[cfg.method]
    head = apply_head(model, head_cfg)
    layout = encoder_layout(model)
    targets = resolve_targets(layout, chosen_layers_only(layout, cfg))
    linears = targets
    norms = layer_norms(model, layout, targets) if method.norm_params or cfg.train_layernorms else []
    if method.norm_params is not None:  # LN tuning adapts the LayerNorms of the chosen layers, no linear layer
        targets = norms
    # adapter.train_layernorms: peft trains those LayerNorms in full beside the method, as it trains the head, and
    # saves them with the adapter; a merged export keeps the trained copies
    saved = head.modules_to_save + (tuple(norms) if cfg.train_layernorms else ())
    if cfg.init in REAL_WEIGHT_INITS and any(p.is_meta for p in model.parameters()):
        # These inits decompose real weights; the parameter count does not depend on the init.
        if not meta_ok:
            raise ModelError(f"adapter.init={cfg.init} needs real weights, not a meta-device model")
        cfg = cfg.model_copy(update={"init": "default"})
    place = Placement(targets, saved, exact_rank_pattern(linears, layout, cfg), feedforward_outputs(layout, targets))
    peft_config = method.peft_config(cfg, place)
    with quiet_peft_deprecations():
        peft_model = get_peft_model(model, peft_config)
    for name, p in peft_model.named_parameters():
        if any(f".{constant}." in name for constant in method.constants):
            p.requires_grad_(False)
        if any(f".{kind}." in name for kind in method.kinds) and any(f".{h}." in f".{name}"
                                                                      for h in head.modules_to_save):
            raise ModelError(f"an adapter landed inside the head ({name}); this is a bug in target resolution")
    return peft_model, head, targets


def chosen_layers_only(layout: EncoderLayout, cfg: AdapterConfig) -> AdapterConfig:
    """The adapter section as resolve_targets should read it: for a method that reads no target_modules (LN
    tuning) one linear layer per encoder layer stands in for them, so that the targets only say which layers
    (checked as for any method), and target names another family would not have cannot fail the build."""
    if "target_modules" in METHODS[cfg.method].reads:
        return cfg
    return cfg.model_copy(update={"target_modules": [layout.linear_names[0]]})


def feedforward_outputs(layout: EncoderLayout, targets: list[str]) -> tuple[str, ...]:
    """Of `targets`, the feed-forward output layers: the family's 'ffn_out' role (none on a family without one)."""
    try:
        ffn_out = role_module("ffn_out", layout.model_type)
    except ValueError:
        return ()
    return tuple(t for t in targets if relative(layout, t) == ffn_out)


def relative(layout: EncoderLayout, full: str) -> str:
    """A module's name inside its encoder layer: 'roberta.encoder.layer.3.output.dense' -> 'output.dense'."""
    return full[len(layout.prefix) + 1:].split(".", 1)[1]


def layer_norms(model: nn.Module, layout: EncoderLayout, targets: list[str]) -> list[str]:
    """Full names of the LayerNorms inside the encoder layers that `targets` adapt, in layer order."""
    layers = sorted({int(t[len(layout.prefix) + 1:].split(".", 1)[0]) for t in targets})
    names = [f"{layout.prefix}.{i}.{name}" for i in layers
             for name, module in model.get_submodule(f"{layout.prefix}.{i}").named_modules()
             if isinstance(module, nn.LayerNorm)]
    if not names:
        raise ModelError(f"the encoder layers of {type(model).__name__} hold no LayerNorm to train")
    return names


NOT_LORA = "an adapter scale applies to LoRA-family adapters (LoRA, DoRA, AdaLoRA)"


def lora_layers(model: nn.Module) -> list[nn.Module]:
    """peft's LoRA-family layers in `model` (LoRA, DoRA, AdaLoRA): those whose update an adapter scale scales."""
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def trained_norms(model: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """(pretrained, trained) pairs of the LayerNorms that adapter.train_layernorms trains in full: peft keeps the
    original beside the trained copy (ModulesToSaveWrapper), so an adapter scale can interpolate them too."""
    from peft.utils import ModulesToSaveWrapper

    return [(m.original_module, m.modules_to_save[name]) for m in model.modules()
            if isinstance(m, ModulesToSaveWrapper) and isinstance(m.original_module, nn.LayerNorm)
            for name in m.active_adapters if name in m.modules_to_save]


def _interpolate_norms(pairs: list[tuple[nn.Module, nn.Module]], scale: float) -> None:
    with torch.no_grad():
        for pretrained, trained in pairs:
            for p0, p in zip(pretrained.parameters(), trained.parameters()):
                p.copy_(p0 + scale * (p - p0))


def scale_update(peft_model, scale: float) -> int:
    """Scale every LoRA-family layer's update by `scale` (0 <= scale <= 1): W + scale x (alpha / r) B A, the
    interpolation of WiSE-FT (Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022) between the
    pretrained encoder (0) and the trained one (1). LayerNorms trained in full (adapter.train_layernorms) are
    interpolated alike, so that 0 is the pretrained encoder; the head stays as trained, and so do biases that
    adapter.bias trains (peft keeps no pretrained copy of them). Returns the LoRA layers scaled."""
    check_adapter_scale(scale)
    if scale == 1.0:
        return 0
    layers = lora_layers(peft_model)
    if not layers:
        raise ModelError(f"{NOT_LORA}; this run's adapter has no LoRA layer")
    for layer in layers:
        layer.scale_layer(scale)  # peft's own: multiplies the layer's scaling, which merging then uses
    _interpolate_norms(trained_norms(peft_model), scale)
    return len(layers)


@contextlib.contextmanager
def scaled_update(model: nn.Module, scale: float):
    """The LoRA-family layers of a training model scaled by `scale` inside the block (adapter.inference_scale,
    for evaluations during training), and its fully trained LayerNorms interpolated alike; all restored after."""
    if scale == 1.0:
        yield
        return
    layers, norms = lora_layers(model), trained_norms(model)
    saved = [dict(layer.scaling) for layer in layers]
    saved_norms = [[p.detach().clone() for p in trained.parameters()] for _, trained in norms]
    for layer in layers:
        layer.scale_layer(scale)
    _interpolate_norms(norms, scale)
    try:
        yield
    finally:
        for layer, scaling in zip(layers, saved):
            layer.scaling.update(scaling)
        with torch.no_grad():
            for (_, trained), values in zip(norms, saved_norms):
                for p, v in zip(trained.parameters(), values):
                    p.copy_(v)


def check_adapter_scale(scale: float) -> None:
    if not 0.0 <= scale <= 1.0:
        raise ModelError(f"an adapter scale must lie in [0, 1] (0: the pretrained encoder, 1: the trained "
                         f"adapter), not {scale}")


def merge_into_base(peft_model) -> nn.Module:
    """The plain model, adapters merged into its weights (peft's merge_and_unload), the modules trained in full
    (the head, adapter.train_layernorms' LayerNorms) as trained. Those are unwrapped first: peft 0.21's generic
    unload, which VeRA and (IA)^3 use, copies `.weight` from each wrapper onto the module it unwraps, and fails on
    a module without one, such as roberta's classification head (huggingface/peft#3213)."""
    from peft.utils import ModulesToSaveWrapper

    base = peft_model.get_base_model()
    for name, module in list(base.named_modules()):
        if isinstance(module, ModulesToSaveWrapper):
            parent, _, child = name.rpartition(".")
            trained = module.unload_and_optionally_merge_module(merge=True, safe_merge=False, adapter_names=None)
            setattr(base.get_submodule(parent) if parent else base, child, trained)
    return peft_model.merge_and_unload()
