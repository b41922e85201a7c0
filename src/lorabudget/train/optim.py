"""The optimizer and its schedule: AdamW with decay on matrices only, warmup then linear or cosine decay, and how
many steps a run takes."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..config import OptimConfig
from ..errors import ConfigError
from ..model.budget import trained_parameters
from ..model.methods import LORAPLUS_KINDS, UNDECAYED_KINDS, parameter_group, parameter_kind


def lr_lambda(kind: str, warmup: int, total: int):
    def f(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        progress = min(max(progress, 0.0), 1.0)
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress

    return f


def is_head_parameter(name: str) -> bool:
    """A parameter of the head: trained in full (peft's modules_to_save) and not one of adapter.train_layernorms'
    LayerNorms."""
    return ".modules_to_save." in name and parameter_group(name) is None


def param_groups(model: torch.nn.Module, weight_decay: float, lr: float,
                 loraplus_lr_ratio: float | None = None, head_apart: bool = False) -> list[dict]:
    """Decay matrices (adapter and head weights); leave biases, norms, DoRA magnitudes and the scales a method
    holds as matrices ((IA)^3's) undecayed. With LoRA+ (`loraplus_lr_ratio`), LoRA's B matrices form a third
    group, decayed, at lr x the ratio: the schedule scales every group's own peak alike. With `head_apart`
    (optim.probe_epochs) the head's parameters form groups of their own, marked "head", which the schedule
    trains alone first."""
    decay, no_decay, fast, head_decay, head_no_decay = [], [], [], [], []
    for name, p in trained_parameters(model):
        kind = parameter_kind(name)
        matrix = p.ndim >= 2 and kind not in UNDECAYED_KINDS
        if head_apart and is_head_parameter(name):
            (head_decay if matrix else head_no_decay).append(p)
        elif loraplus_lr_ratio is not None and kind in LORAPLUS_KINDS:
            fast.append(p)
        else:
            (decay if matrix else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "lr": lr},
              {"params": no_decay, "weight_decay": 0.0, "lr": lr}]
    if loraplus_lr_ratio is not None:  # only then: a run without it keeps the two groups its checkpoints hold
        groups.append({"params": fast, "weight_decay": weight_decay, "lr": lr * loraplus_lr_ratio})
    if head_apart:  # likewise
        groups += [{"params": head_decay, "weight_decay": weight_decay, "lr": lr, "head": True},
                   {"params": head_no_decay, "weight_decay": 0.0, "lr": lr, "head": True}]
    return groups


def probe_then_tune(kind: str, warmup: int, total: int, probe: int, head: bool):
    """LP-FT (Kumar et al. 2022, "Fine-Tuning can Distort Pretrained Features and Underperform
    Out-of-Distribution"): the head trains alone for the first `probe` steps, on a schedule of its own, so that
    the adapters then start from a head that fits the frozen features rather than a random one, which would drag
    the features towards itself. The adapters' schedule (warmup included) starts after the probe."""
    probing, tuning = lr_lambda(kind, warmup, probe), lr_lambda(kind, warmup, total - probe)

    def f(step: int) -> float:
        if step < probe:
            return probing(step) if head else 0.0
        return tuning(step - probe)

    return f


def class_weight_tensor(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    weights = np.where(counts > 0, counts.sum() / (n_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


@dataclass(frozen=True)
class Schedule:
    micro_per_epoch: int  # micro-batches per epoch on each process
    steps_per_epoch: int  # optimizer steps
    total_steps: int
    warmup: int
    probe: int = 0  # first steps in which the head trains alone (optim.probe_epochs)


def plan_schedule(o: OptimConfig, micro_per_epoch: int, rows: int, world: int) -> Schedule:
    if micro_per_epoch == 0:
        raise ConfigError(f"optim.batch_size={o.batch_size} x {world} processes leaves no full batch for "
                          f"{rows} training rows; lower the batch size")
    steps_per_epoch = math.ceil(micro_per_epoch / o.grad_accum)
    total = o.max_steps or max(1, math.ceil(o.epochs * steps_per_epoch))
    warmup = o.warmup_steps if o.warmup_steps is not None else int(round(o.warmup_ratio * total))
    if warmup >= total and total > 1:
        raise ConfigError(f"warmup of {warmup} steps is not shorter than the whole run ({total} steps); lower "
                          "optim.warmup_steps or optim.warmup_ratio")
    probe = int(round(o.probe_epochs * steps_per_epoch))
    if o.probe_epochs and not warmup < probe < total - warmup:
        raise ConfigError(f"optim.probe_epochs={o.probe_epochs} is {probe} steps of a {total}-step run with "
                          f"{warmup} warmup steps: the probe must outlast its warmup and leave the adapters more "
                          "than theirs")
    return Schedule(micro_per_epoch, steps_per_epoch, total, warmup, probe)


def make_optimizer(model: torch.nn.Module, o: OptimConfig, schedule: Schedule):
    """AdamW over what trains, and its learning-rate schedule (stepped by hand once per optimizer step)."""
    groups = param_groups(model, o.weight_decay, o.lr, o.loraplus_lr_ratio, head_apart=schedule.probe > 0)
    optimizer = torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, eps=o.eps)
    if schedule.probe:
        lambdas = [probe_then_tune(o.scheduler, schedule.warmup, schedule.total_steps, schedule.probe,
                                   g.get("head", False)) for g in groups]
    else:
        lambdas = lr_lambda(o.scheduler, schedule.warmup, schedule.total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
    return optimizer, scheduler
