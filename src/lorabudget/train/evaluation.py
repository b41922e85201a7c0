"""Validation during training: the scores on the validation split (gathered over processes), which evaluation is
the best so far, and when to stop early."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..metrics import classification_scores
from ..runtime.inference import ordered, predict_logits


@dataclass
class LoopState:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    step_in_epoch: int = 0
    best_metric: float | None = None
    best_step: int = 0
    best_scores: dict | None = None
    evals_without_improvement: int = 0
    samples: int = 0  # training examples seen, all processes
    train_seconds: float = 0.0
    stopped_early: bool = False
    stopped_by: str | None = None  # None, or "callback" when on_evaluate asked to stop
    window_loss: float = 0.0  # training loss summed since the last logged step: a resume logs the same mean
    window_n: int = 0
    window_kl: float = 0.0  # R-Drop's KL term summed over the same window (optim.rdrop_alpha > 0)
    round: int = 0  # self-training round (0: the supervised phase)
    round_start: int = 0  # the step the round began at

    def to_json(self) -> dict:
        return dict(self.__dict__)


def is_better(value: float, best: float | None, metric: str, min_delta: float) -> bool:
    if best is None:
        return True
    return value < best - min_delta if metric == "loss" else value > best + min_delta


def record(state: LoopState, scores: dict, eval_cfg) -> bool:
    """Note an evaluation in the loop state: the best so far, and early stopping. True when it improved."""
    value = scores[eval_cfg.metric]
    improved = is_better(value, state.best_metric, eval_cfg.metric, eval_cfg.min_delta)
    if improved:
        state.best_metric, state.best_step, state.evals_without_improvement = value, state.step, 0
        state.best_scores = {k: scores[k] for k in ("accuracy", "macro_f1", "loss", "sets") if k in scores}
    else:
        state.evals_without_improvement += 1
    patience = eval_cfg.early_stopping_patience
    if patience is not None and state.evals_without_improvement >= patience:
        state.stopped_early = True
    return improved


def validation_scores(accelerator, model, source, labels: np.ndarray, class_names: list[str], *, batch_size: int,
                      dtype, forward) -> dict:
    """Accuracy, macro-F1, per-class scores and loss on the validation split; each process scores its share of
    the batches and the main process gathers them."""
    world = accelerator.num_processes
    rows, logits = predict_logits(model, source, batch_size=batch_size, device=accelerator.device, dtype=dtype,
                                  shard=(accelerator.process_index, world), forward=forward)
    if world > 1:
        from accelerate.utils import gather_object

        parts = gather_object([(rows, logits)])
        rows = np.concatenate([r for r, _ in parts])
        logits = np.concatenate([lg for _, lg in parts if lg.size])
    logits = ordered(rows, logits, len(labels))
    loss = float(F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)))
    scores = classification_scores(labels, logits.argmax(1), class_names)
    scores["loss"] = loss
    return scores


SET_SCORES = ("accuracy", "macro_f1", "loss")


def scores_of_every_set(recipe) -> dict:
    """The validation scores (the set that decides), with each further evaluation set's under `sets`."""
    def score(source, labels) -> dict:
        return validation_scores(recipe.accelerator, recipe.accelerator.unwrap_model(recipe.model), source, labels,
                                 recipe.labels.names, batch_size=recipe.cfg.eval.batch_size, dtype=recipe.dtype,
                                 forward=recipe.forward)

    scores = score(recipe.val_source, recipe.val_data.labels)
    if recipe.extra_data:
        scores["sets"] = {name: {k: score(recipe.extra_sources[name], data.labels)[k] for k in SET_SCORES}
                          for name, data in recipe.extra_data.items()}
    return scores


def evaluation_record(scores: dict) -> dict:
    """An evaluation's line of metrics.jsonl: val_* for the deciding set, val_<name>_* for each further one."""
    record = {f"val_{k}": scores[k] for k in SET_SCORES}
    for name, extra in scores.get("sets", {}).items():
        record.update({f"val_{name}_{k}": extra[k] for k in SET_SCORES})
    return record
