"""The validation split: stratified, seeded by `data.split_seed` (not the training seed), so runs with different
seeds are scored on the same rows; and the training data of a run, split."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

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


HELD_OUT = "held_out"  # in data.validation_source: the validation_size rows held out of train, by split_seed


@dataclass
class Split:
    train: Examples
    validation: Examples  # decides the best checkpoint and early stopping
    validation_hash: str
    extra: dict[str, Examples] = field(default_factory=dict)  # further evaluation sets (data.validation_source)


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
    train_idx = _limit_train(labels, np.flatnonzero(train_mask), cfg, rng, source)
    validation = examples.subset(val_idx.tolist())
    return Split(examples.subset(train_idx.tolist()), validation, validation_hash(validation.ids))


def _limit_train(labels: np.ndarray, train_idx: np.ndarray, cfg: DataConfig, rng: np.random.Generator,
                 source: str) -> np.ndarray:
    """`data.max_train_samples`: a stratified sample of the training rows that keeps every class."""
    if cfg.max_train_samples is None or cfg.max_train_samples >= len(train_idx):
        return train_idx
    present = np.unique(labels[train_idx])
    if cfg.max_train_samples < len(present):
        raise DataError(f"{source}: data.max_train_samples={cfg.max_train_samples} keeps fewer training rows "
                        f"than there are classes ({len(present)}): every class needs at least one")
    return train_idx[_stratified_take(labels[train_idx], cfg.max_train_samples, rng, take_per_class=1)]


def evaluation_examples(cfg: DataConfig, source: str, labels: LabelSpace) -> Examples:
    """The labelled rows of an evaluation source, coded in the run's label space: its test split when it has
    one (a folder in the ag_news_csv layout), else its validation split, else its only split."""
    dataset = load_source(cfg, source, labels=labels)
    name = next(s for s in ("test", "validation", "train", *dataset.splits) if s in dataset.splits)
    examples = dataset.splits[name]
    if examples.labels is None:
        raise DataError(f"{source}: an evaluation set needs labels (column {cfg.label_column!r})")
    return examples


def evaluation_set_names(sources: list[str]) -> list[str]:
    """A short name per evaluation source, for metric keys (val_<name>_accuracy): the file's stem, made unique."""
    names: list[str] = []
    for source in sources:
        stem = Path(source.rstrip("/")).name.split(".")[0] or "set"
        base = re.sub(r"[^0-9A-Za-z]+", "_", stem).strip("_").lower() or "set"
        name, k = base, 2
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.append(name)
    return names


def split_with_own_validation(examples: Examples, cfg: DataConfig, labels: LabelSpace, source: str) -> Split:
    """The evaluation sets are the user's own sources. All of train trains (up to max_train_samples), unless one
    of them is `held_out` (HELD_OUT): then data.validation_size rows are held out of train as without
    validation_source (the same rows, by split_seed) and scored under that name, in that place of the list."""
    if examples.labels is None:
        raise DataError(f"{source}: training data needs labels (column {cfg.label_column!r})")
    if HELD_OUT in cfg.validation_source:
        held = split_train_validation(examples, cfg, source)
        train, held_out = held.train, held.validation
    else:
        rng = np.random.default_rng(cfg.split_seed)
        train = examples.subset(_limit_train(np.asarray(examples.labels), np.arange(len(examples)), cfg, rng,
                                             source).tolist())
    sets = [held_out if s == HELD_OUT else evaluation_examples(cfg, s, labels) for s in cfg.validation_source]
    names = evaluation_set_names(cfg.validation_source)
    return Split(train, sets[0], validation_hash(sets[0].ids), dict(zip(names[1:], sets[1:])))


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
    train = dataset.splits["train"]
    if cfg.data.validation_source:
        return TrainingData(dataset, split_with_own_validation(train, cfg.data, dataset.labels, dataset.source))
    return TrainingData(dataset, split_train_validation(train, cfg.data, dataset.source))
