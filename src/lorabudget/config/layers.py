"""`adapter.layers` as written in a config ('all', 'top-half', 'top-K', or indices) and as layer indices."""

from __future__ import annotations

import re

from ..errors import ModelError

# adapter.layers by name rather than by index: 'all', or relative to the model's depth, 'top-half' or 'top-K'
RELATIVE_LAYERS = re.compile(r"all|top-(half|[1-9][0-9]*)")


def layer_indices(spec: list[int] | str | None, n_layers: int) -> list[int]:
    """adapter.layers as indices: None is every layer; 'top-half' the upper half by depth (n // 2 .. n - 1, so
    6-11 of 12 and 3-5 of 6); 'top-K' the K top layers. Lists pass through, to be checked by the caller."""
    if spec is None or spec == "all":
        return list(range(n_layers))
    if isinstance(spec, str):
        count = n_layers - n_layers // 2 if spec == "top-half" else int(spec.removeprefix("top-"))
        if count > n_layers:
            raise ModelError(f"adapter.layers: {spec!r} asks for {count} layers; the model has {n_layers}")
        return list(range(n_layers - count, n_layers))
    return list(spec)


def canonical_layers(spec, n_layers: int):
    """adapter.layers written one way: None for every layer, else the sorted index list."""
    try:
        layers = sorted(layer_indices(spec, n_layers))
    except ModelError:  # more layers than the model has: such a run never trained; compare it as written
        return spec
    return None if layers == list(range(n_layers)) else layers
