"""Self-training on the unlabelled target (data.target_source, selftrain.*): after the supervised phase, each round
pseudo-labels the target with the best checkpoint so far, keeps the confident rows, and trains on labelled +
pseudo-labelled rows with a fresh optimizer and schedule. The validation set (the first evaluation set) still
decides the best checkpoint across all rounds, so a round that hurts is never shipped.

A round is part of the one run: its global steps follow the previous round's, its evaluations and checkpoints go
where the supervised phase's go, and the rows it chose are written to RUN/selftrain/round-K.json before it trains,
so a resumed run rebuilds exactly the round it was killed in.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..data import load_source
from ..data.normalize import normalize_texts
from ..model.adapters import scaled_update
from ..model.weights import load_weights
from ..rundir import atomic_write_json, read_json
from ..runtime.augment import token_noise
from ..runtime.batching import TokenBatches
from ..runtime.inference import ordered, predict_logits
from ..runtime.priors import adapt_priors
from ..runtime.tokens import Tokenized, tokenize
from .checkpoint import newest_state
from .optim import make_optimizer, plan_schedule


def prepare_target(recipe) -> Tokenized | None:
    """The target's texts, normalised and tokenized as training's, when self-training is on."""
    cfg = recipe.cfg
    if not cfg.selftrain.rounds:
        return None
    dataset = load_source(cfg.data, cfg.data.target_source, labels=recipe.labels, require_labels=False)
    examples = dataset.splits["test" if "test" in dataset.splits else "train"]
    return tokenize(normalize_texts(examples.texts, cfg.data.normalize), None, recipe.tokenizer, cfg.model.max_length,
                    progress=recipe.progress, desc="tokenize target")


def select_pseudo_labels(probs: np.ndarray, threshold: float, top_share: float | None) -> np.ndarray:
    """Indices of the target rows to pseudo-label: top probability >= threshold, then per predicted class the
    `top_share` most confident of them (class-balanced), in index order."""
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    keep = np.flatnonzero(conf >= threshold)
    if top_share is not None:
        chosen = []
        for c in np.unique(pred[keep]):
            rows = keep[pred[keep] == c]
            rows = rows[np.argsort(-conf[rows], kind="stable")]
            chosen.append(rows[: max(1, int(round(top_share * len(rows))))])
        keep = np.sort(np.concatenate(chosen)) if chosen else keep[:0]
    return keep


def _round_file(recipe, k: int):
    return recipe.run.path / "selftrain" / f"round-{k}.json"


def pseudo_label(recipe, k: int) -> dict:
    """Round k's rows: the best checkpoint's predictions on the target, selected; written before the round
    trains (every process computes the same, deterministically). The predictions are the model as shipped: with
    adapter.inference_scale < 1 its update scaled back (WiSE-FT), which reads a shifted target better than the
    full update (docs/shift.md), so the pseudo-labels are the better ones."""
    s, model = recipe.cfg.selftrain, recipe.accelerator.unwrap_model(recipe.model)
    load_weights(model, recipe.run.best, "the run's best weights are lost: start it again with --overwrite")
    with scaled_update(model, recipe.cfg.adapter.inference_scale):
        rows, logits = predict_logits(model, TokenBatches(recipe.target_data, recipe.pad_id),
                                      batch_size=recipe.cfg.eval.batch_size, device=recipe.device,
                                      dtype=recipe.dtype, forward=recipe.forward, progress=recipe.progress,
                                      desc=f"pseudo-label round {k}")
    probs = torch.softmax(torch.from_numpy(ordered(rows, logits, len(recipe.target_data))).double(), -1).numpy()
    estimate = None
    if s.adapt_priors:
        counts = np.bincount(recipe.train_labels, minlength=len(recipe.labels.names))
        probs, estimate = adapt_priors(probs, counts)
    keep = select_pseudo_labels(probs, s.threshold, s.top_share)
    labels = probs.argmax(axis=1)[keep]
    record = {"round": k, "from_best_step": recipe.state.best_step, "threshold": s.threshold,
              "top_share": s.top_share, "target_rows": len(recipe.target_data), "rows": int(len(keep)),
              "label_counts": {n: int((labels == i).sum()) for i, n in enumerate(recipe.labels.names)},
              "estimated_priors": None if estimate is None else estimate.tolist(),
              "indices": keep.tolist(), "labels": labels.tolist()}
    if recipe.main:
        atomic_write_json(_round_file(recipe, k), record)
    return record


def apply_round(recipe, k: int, record: dict, start: int) -> None:
    """Train on labelled + round k's pseudo-labelled rows from here on: the data, its batches, a schedule of
    selftrain.epochs passes and a fresh optimizer (warmup as optim's), starting at the recipe's current step."""
    cfg, s = recipe.cfg, recipe.cfg.selftrain
    target = recipe.target_data
    pseudo = [target.ids[i] for i in record["indices"]]
    labels = np.concatenate([recipe.train_labels, np.asarray(record["labels"], dtype=np.int64)])
    recipe.train_data = Tokenized(list(recipe.labelled_train.ids) + pseudo, labels)
    recipe.train_source = TokenBatches(recipe.train_data, recipe.pad_id, token_noise(cfg.data, cfg.seed + k))
    optim = cfg.optim.model_copy(update={"epochs": s.epochs, "max_steps": None, "lr": s.lr or cfg.optim.lr,
                                         "probe_epochs": 0.0})  # the head has been fitted: no second probe
    micro = len(recipe._epoch_batches(0))
    per_round = plan_schedule(optim, micro, len(recipe.train_data), recipe.world)
    recipe.schedule = dataclasses.replace(per_round, total_steps=start + per_round.total_steps)
    recipe.eval_every = cfg.eval.every_steps or per_round.steps_per_epoch
    optimizer, recipe.scheduler = make_optimizer(recipe.accelerator.unwrap_model(recipe.model), optim, per_round)
    recipe.optimizer = recipe.accelerator.prepare(optimizer)
    if recipe.ema is not None:  # a fresh optimizer from the best weights: a fresh average of them too (optim.ema_*)
        recipe.ema.reset()


def begin_next_round(recipe) -> bool:
    """After a phase's last step: start the next round, or False when there is none (or the run was stopped)."""
    st = recipe.state
    if st.round >= recipe.cfg.selftrain.rounds or st.stopped_early:
        return False
    k = st.round + 1
    record = pseudo_label(recipe, k)
    recipe.say(f"selftrain round {k}: {record['rows']:,} of {record['target_rows']:,} target rows pseudo-labelled "
               f"by the best checkpoint (step {record['from_best_step']}): "
               + ", ".join(f"{n} {c:,}" for n, c in record["label_counts"].items()))
    st.round, st.round_start, st.epoch, st.step_in_epoch = k, st.step, 0, 0
    apply_round(recipe, k, record, st.step)
    if recipe.prefix:  # the frozen layers' states of the new training rows
        from .setup import cache_train_prefix

        cache_train_prefix(recipe)
    return True


def rebuild_round(recipe) -> None:
    """A run killed in round k > 0: rebuild that round (its rows as recorded, its schedule, a fresh optimizer)
    before the checkpoint's optimizer and schedule states load into it."""
    state = newest_state(recipe.run.last) or {}
    k, start = int(state.get("round", 0)), int(state.get("round_start", 0))
    if k:
        record = read_json(_round_file(recipe, k), "the round's pseudo-labels are lost: start the run again with "
                                                   "--overwrite")
        apply_round(recipe, k, record, start)


def rounds_summary(run) -> list[dict]:
    """What each round used (for summary.json): its size and pseudo-label distribution, without the row lists."""
    out = []
    for path in sorted((run.path / "selftrain").glob("round-*.json")):
        record = read_json(path, "the round's record is damaged")
        out.append({k: v for k, v in record.items() if k not in ("indices", "labels")})
    return out
