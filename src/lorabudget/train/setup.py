"""Pieces of a recipe's setup: its data tokenized, the adapted model made ready to train on its device, and each
epoch's batches."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ..config import Config
from ..data import LabelSpace, TrainingData, load_training_data
from ..data.normalize import normalize_texts
from ..errors import ConfigError
from ..model.backbone import load_tokenizer
from ..model.build import AdaptedModel, build_adapted_model
from ..runtime.attention import use_cpu_dropout_attention
from ..runtime.batching import train_batches
from ..runtime.fastdropout import use_fast_dropout
from ..runtime.precision import hold_frozen_in, keep_adapter_inputs_in
from ..runtime.prefix import cache_states, encoder_model, frozen_prefix_length
from ..runtime.tokens import Tokenized, cache_dir, tokenize
from .launch import splits_batch


@dataclass
class PreparedData:
    data: TrainingData
    tokenizer: object
    pad_id: int
    train: Tokenized
    validation: Tokenized
    extra: dict[str, Tokenized]  # further evaluation sets (data.validation_source), by name


def prepare_data(cfg: Config, progress: bool, say=print) -> PreparedData:
    """The run's training data, split, and both splits tokenized (once: the token ids are cached on disk)."""
    data = load_training_data(cfg)
    tokenizer = load_tokenizer(cfg.model.name, trust_remote_code=cfg.model.trust_remote_code)
    check_max_length(cfg, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    parts = {"train": data.split.train, "validation": data.split.validation, **data.split.extra}
    started = time.perf_counter()
    tokens = {name: tokenize(normalize_texts(part.texts, cfg.data.normalize), part.labels, tokenizer,
                             cfg.model.max_length, progress=progress, desc=f"tokenize {name}")
              for name, part in parts.items()}
    texts, seconds = sum(len(t) for t in tokens.values()), time.perf_counter() - started
    say(f"tokens    {texts:,} texts: " + ("token ids read from the cache" if all(t.from_cache for t in tokens.values())
                                          else f"tokenized and cached under {cache_dir() / 'tokens'}")
        + f" ({seconds:.1f} s)")
    train, validation = tokens.pop("train"), tokens.pop("validation")
    return PreparedData(data, tokenizer, pad_id, train, validation, tokens)


# Tokenizers without a limit of their own report a huge sentinel (transformers' VERY_LARGE_INTEGER, 1e30).
_NO_LIMIT = 1_000_000


def check_max_length(cfg: Config, tokenizer) -> None:
    """model.max_length past the model's positions would fail deep inside its embeddings on the first long text
    (an index error from torch, possibly hours into a run): refuse it here. The tokenizer's model_max_length is
    the model's own statement of what it reads (roberta-base: 512 of its 514 positions, the first two taken by
    the padding offset), where the config's max_position_embeddings would need per-family arithmetic."""
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < _NO_LIMIT and cfg.model.max_length > limit:
        raise ConfigError(f"model.max_length={cfg.model.max_length}, but {cfg.model.name} reads at most {limit} "
                          f"tokens (its tokenizer's model_max_length); set model.max_length to {limit} or less "
                          "(for a run to resume: in its config.yaml)")


@dataclass
class PreparedModel:
    adapted: AdaptedModel
    inner: torch.nn.Module | None  # the encoder inside the peft model
    prefix: int  # encoder layers computed once and cached (0: none)
    compiled: bool  # whether the training forward runs under torch.compile
    fast_dropouts: int  # dropout modules swapped for runtime.fastdropout's
    fast_attention_dropout: bool  # attention probabilities dropped by runtime.attention's cheap mask
    input_casts_skipped: int  # adapter layers whose input peft no longer casts to fp32 (runtime.precision)


def prepare_model(cfg: Config, labels: LabelSpace, precision: str, device: torch.device, say) -> PreparedModel:
    """The adapted model on `device`: frozen weights held in bf16 when it trains in bf16, and the speed settings
    that apply to it decided (which prefix to cache, compile or fast dropout)."""
    adapted = build_adapted_model(cfg, labels)
    model = adapted.model
    if precision == "bf16":
        hold_frozen_in(model, torch.bfloat16)
    # under autocast the adapters' matmuls run in the compute precision whatever peft casts their input to
    casts_skipped = keep_adapter_inputs_in(model) if precision != "fp32" else 0
    model.to(device)
    # token noise (data.token_drop / token_swap) garbles each batch anew: the layers below cannot be computed once
    noisy = cfg.data.token_drop > 0 or cfg.data.token_swap > 0
    prefix = frozen_prefix_length(model) if cfg.speed.cache_frozen_prefix and not noisy else 0
    # Compiled for the training forward only: the module (names, checkpoints, evaluation) stays the same.
    # Not with a cached prefix: its forward swaps modules in and out, which would recompile every step.
    compiled = cfg.speed.compile and not prefix
    if cfg.speed.compile and prefix:
        say("speed.compile is not applied: the frozen prefix is cached, and its forward swaps modules")
    # Not under torch.compile: it generates a fast dropout itself, and numpy calls would break its graph.
    cheap_masks = cfg.speed.fast_dropout and device.type == "cpu" and not compiled
    fast = use_fast_dropout(model) if cheap_masks else 0
    attention = cheap_masks and use_cpu_dropout_attention(model)
    return PreparedModel(adapted, encoder_model(model), prefix, compiled, fast, attention, casts_skipped)


def epoch_batches(cfg: Config, lengths: np.ndarray, epoch: int, rank: int, world: int) -> list[np.ndarray]:
    """This process's micro-batches of an epoch: a pure function of (seed, epoch), equal count per process. With
    speed.processes N > 1 every batch of optim.batch_size rows is shared out, each process taking every N-th row
    (rows of similar length, so that none waits for the others); a batch too short to share evenly loses its
    last rows. Under an outside launcher with speed.processes 1, each process takes every world-th batch."""
    s = cfg.speed
    batches = train_batches(lengths, cfg.optim.batch_size, cfg.seed, epoch, bucket=s.length_buckets,
                            window_batches=s.bucket_size_batches)
    if splits_batch(cfg, world):
        return [b[rank::world][:len(b) // world] for b in batches if len(b) >= world]
    per_rank = len(batches) // world
    return batches[rank::world][:per_rank]


def cache_prefix(recipe) -> None:
    """Compute the frozen prefix's states of every text once (train, validation, further evaluation sets) and
    serve the batches from them from now on."""
    sources, recipe.cache_storage = cache_states(
        recipe.accelerator.unwrap_model(recipe.model), [recipe.train_data, recipe.val_data,
                                                        *recipe.extra_data.values()],
        recipe.prefix, setting=recipe.cfg.speed.prefix_cache_storage, pad_id=recipe.pad_id, device=recipe.device,
        dtype=recipe.dtype, progress=recipe.progress, say=recipe.say)
    recipe.train_source, recipe.val_source, *extra = sources
    recipe.extra_sources = dict(zip(recipe.extra_data, extra))


def cache_train_prefix(recipe) -> None:
    """The frozen prefix's states of a new training set (a self-training round's rows)."""
    (recipe.train_source,), _ = cache_states(
        recipe.accelerator.unwrap_model(recipe.model), [recipe.train_data], recipe.prefix,
        setting=recipe.cfg.speed.prefix_cache_storage, pad_id=recipe.pad_id, device=recipe.device,
        dtype=recipe.dtype, progress=recipe.progress, say=recipe.say)
