"""Device and precision: which device, which compute precision ('auto' must not pick an emulated bf16), the one
autocast helper every forward runs under, and frozen weights held in the compute precision."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from ..errors import ConfigError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def cpu_supports_bf16() -> bool:
    """True where the CPU has native bf16 matmul (AVX512-BF16 or AMX). Without it bf16 is emulated and hundreds
    of times slower than fp32 (measured: 0.3 vs 150 GFLOP/s on an AVX2-only EPYC), so 'auto' must not pick it."""
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(torch.cpu, probe, None)
        try:
            if check is not None and check():
                return True
        except RuntimeError:
            continue
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        if device.type == "cpu":
            return "bf16" if cpu_supports_bf16() else "fp32"
        return "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("model.precision=fp16 needs a CUDA GPU (loss scaling is a GPU feature); use bf16 or fp32")
    return precision


def inference_device(want: str) -> torch.device:
    """model.device for inference: 'auto' is a CUDA GPU when one is visible, else the CPU."""
    if want == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(want)


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Mixed precision for a forward in `dtype` (bf16, fp16); nothing for fp32 or None."""
    if dtype is None or dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def hold_frozen_in(model: torch.nn.Module, dtype: torch.dtype) -> int:
    """Store frozen matmul weights (linear layers, embeddings) in `dtype`; trainable ones stay fp32.

    Under autocast a frozen fp32 weight is cast to bf16 on every forward; holding it in bf16 saves that work and
    half the memory. LayerNorm stays fp32 (autocast runs it in fp32 anyway). Returns the parameters converted.
    """
    converted = 0
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
            for p in module.parameters(recurse=False):
                if not p.requires_grad and p.dtype != dtype:
                    p.data = p.data.to(dtype)
                    converted += p.numel()
    return converted


def keep_adapter_inputs_in(model: torch.nn.Module) -> int:
    """Stop peft's adapter layers from casting their input to the adapter weights' dtype; returns how many.

    peft casts each adapted layer's input to its (fp32, trainable) adapter weights' dtype before the adapter's
    dropout and matmuls. Under bf16 autocast that is a full copy of the activation for every adapted module, its
    dropout then runs in fp32, and autocast casts it back to bf16 for the matmul: three passes over the largest
    tensors of a step (the FFN's 4x-wide activations included) for nothing, since the matmul runs in bf16 either
    way. Profiled on the recommended MiniLM recipe, the casts and fp32 masks were a fifth of a training step. The
    attribute is peft's own switch (what `peft.helpers.disable_input_dtype_casting` sets for the span of a block),
    kept off for the whole run; it saves nothing when training in fp32, where no cast happens. Not on DoRA
    layers: DoRA computes its weight norm in the input's dtype, which must stay fp32."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    switched = 0
    for module in model.modules():
        dora = any(getattr(module, "use_dora", {}).values())
        if isinstance(module, BaseTunerLayer) and getattr(module, "cast_input_dtype_enabled", False) and not dora:
            module.cast_input_dtype_enabled = False
            switched += 1
    return switched
