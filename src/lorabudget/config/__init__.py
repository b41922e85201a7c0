"""The config stage: one typed object per run (`schema`), read from YAML with dotted overrides (`loading`), the
adapted-layer specs (`layers`) and when two runs are one recipe (`recipe`)."""

from .layers import RELATIVE_LAYERS, canonical_layers, layer_indices
from .loading import (
    apply_overrides,
    build_config,
    describe_fields,
    dump_config,
    get_dotted,
    load_config,
    override_section,
    parse_override,
    read_yaml,
    set_dotted,
)
from .recipe import NOT_RECIPE, effective_settings, recipe_settings, without_non_recipe
from .schema import (
    ALL_LINEAR,
    DEFAULT_HUB_DATASET,
    DEFAULT_MODEL,
    AdapterConfig,
    Config,
    DataConfig,
    EvalConfig,
    HeadConfig,
    LoggingConfig,
    ModelConfig,
    OptimConfig,
    SpeedConfig,
)

__all__ = [
    "ALL_LINEAR", "DEFAULT_HUB_DATASET", "DEFAULT_MODEL", "NOT_RECIPE", "RELATIVE_LAYERS", "AdapterConfig", "Config",
    "DataConfig", "EvalConfig", "HeadConfig", "LoggingConfig", "ModelConfig", "OptimConfig", "SpeedConfig",
    "apply_overrides", "build_config", "canonical_layers", "describe_fields", "dump_config", "effective_settings",
    "get_dotted", "layer_indices", "load_config", "override_section", "parse_override", "read_yaml", "recipe_settings",
    "set_dotted", "without_non_recipe",
]
