"""The validation split: stratified, seeded by `data.split_seed` (not the training seed), so runs with different
seeds are scored on the same rows; and the training data of a run, split."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from ..config import Config, DataConfig
from ..errors import DataError
from .examples import Dataset, Examples, LabelSpace
from .sources import load_source


def _stratified_take(labels: np.ndarray, n_take: int, rng: np.random.Generator,
                     leave_per_class: int = 0, take_per_class: int = 0) -> np.ndarray:
    """Indices of a stratified sample of n_take rows: per-class shares by largest remainder, rows at random.

    At most `count - leave_per_class` rows are taken from a class: the validation split leaves every class at
    least one training row, which plain largest remainder does not (a 1-row class can win a remainder). At least
    `take_per_class` rows are taken from each class (the caller checks that n_take allows it): a training subset
    keeps every class, where plain largest remainder would drop a rare one."""
    classes, counts = np.unique(labels, return_counts=True)
    room = counts - leave_per_class
    exact = n_take * counts / counts.sum()
    floor = np.minimum(take_per_class, room)
    take = np.maximum(np.minimum(np.floor(exact).astype(int), room), floor)
    while take.sum() > n_take:  # the floor overshot: one row back from the smallest remainder above the floor
        take[np.argmin(np.where(take > floor, exact - take, np.inf))] -= 1
    while take.sum() < n_take:  # one more row to the largest remainder among classes with room left
        take[np.argmax(np.where(take < room, exact - take, -np.inf))] += 1
    chosen = []
    for cls, k in zip(classes, take):
        members = np.flatnonzero(labels == cls)
        chosen.append(rng.permutation(members)[:k])
    return np.sort(np.concatenate(chosen))


@dataclass
class Split:
    train: Examples
    validation: Examples
    validation_hash: str


def validation_hash(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


def split_train_validation(examples: Examples, cfg: DataConfig, source: str = "the training data") -> Split:
    """`source` names the data in messages."""
    if examples.labels is None:
        raise DataError(f"{source}: training data needs labels (column {cfg.label_column!r})")
    labels = np.asarray(examples.labels)
    present = np.unique(labels)
    if len(present) < 2:
        held = f"a single class (id {int(present[0])})" if len(present) else "no rows"
        raise DataError(f"{source}: the training data holds {held}; a classifier needs at least 2 classes")
    n = len(labels)
    size = cfg.validation_size
    n_val = int(round(size * n)) if isinstance(size, float) else int(size)
    if n_val >= n - len(present) + 1 or n_val < 1:
        raise DataError(f"{source}: data.validation_size={size} asks for {n_val} validation rows out of {n}: it "
                        f"must leave at least one training row per class ({len(present)} classes)")
    rng = np.random.default_rng(cfg.split_seed)
    val_idx = _stratified_take(labels, n_val, rng, leave_per_class=1)
    train_mask = np.ones(n, dtype=bool)
    train_mask[val_idx] = False
    train_idx = np.flatnonzero(train_mask)
    if cfg.max_train_samples is not None and cfg.max_train_samples < len(train_idx):
        if cfg.max_train_samples < len(present):
            raise DataError(f"{source}: data.max_train_samples={cfg.max_train_samples} keeps fewer training rows "
                            f"than there are classes ({len(present)}): every class needs at least one")
        keep = _stratified_take(labels[train_idx], cfg.max_train_samples, rng, take_per_class=1)
        train_idx = train_idx[keep]
    validation = examples.subset(val_idx.tolist())
    return Split(examples.subset(train_idx.tolist()), validation, validation_hash(validation.ids))


@dataclass
class TrainingData:
    dataset: Dataset
    split: Split

    @property
    def labels(self) -> LabelSpace:
        return self.dataset.labels


def load_training_data(cfg: Config) -> TrainingData:
    dataset = load_source(cfg.data)
    if "train" not in dataset.splits:
        raise DataError(f"{dataset.source} has no training split (a data folder needs train.csv)")
    return TrainingData(dataset, split_train_validation(dataset.splits["train"], cfg.data, dataset.source))
