"""Put the head and the adapters on a model: the head first (it trains in full), then the adapter method from
`METHODS` on the resolved targets. `peft` does the adapter math; `targets` decides where it goes."""

from __future__ import annotations

import contextlib
import warnings

from torch import nn

from ..config import AdapterConfig, HeadConfig
from ..errors import ModelError
from .heads import HeadSpec, apply_head
from .methods import METHODS, REAL_WEIGHT_INITS
from .targets import encoder_layout, exact_rank_pattern, resolve_targets


@contextlib.contextmanager
def quiet_peft_deprecations():
    """peft 0.21 reads `model.is_gradient_checkpointing`, which transformers 5 deprecates with a FutureWarning on
    every build and load. It is peft's call, not something a user can act on, so it is silenced here only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def add_adapters(model: nn.Module, cfg: AdapterConfig, head_cfg: HeadConfig | str, *,
                 meta_ok: bool = False) -> tuple[nn.Module, HeadSpec, list[str]]:
    """Head first, then the adapters on the resolved targets. Returns (peft model, head spec, adapted module
    names). `meta_ok`: a meta-device shape (for counting) may stand in for an init that needs real weights."""
    from peft import get_peft_model

    method = METHODS[cfg.method]
    head = apply_head(model, head_cfg)
    layout = encoder_layout(model)
    targets = resolve_targets(layout, cfg)
    if cfg.init in REAL_WEIGHT_INITS and any(p.is_meta for p in model.parameters()):
        # These inits decompose real weights; the parameter count does not depend on the init.
        if not meta_ok:
            raise ModelError(f"adapter.init={cfg.init} needs real weights, not a meta-device model")
        cfg = cfg.model_copy(update={"init": "default"})
    peft_config = method.peft_config(cfg, targets, head.modules_to_save, exact_rank_pattern(targets, layout, cfg))
    with quiet_peft_deprecations():
        peft_model = get_peft_model(model, peft_config)
    for name, _ in peft_model.named_parameters():
        if any(f".{kind}." in name for kind in method.kinds) and any(f".{h}." in f".{name}"
                                                                      for h in head.modules_to_save):
            raise ModelError(f"an adapter landed inside the head ({name}); this is a bug in target resolution")
    return peft_model, head, targets
