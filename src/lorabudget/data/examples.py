"""What a data source becomes: raw tables as read, then examples (text, label, id) with their label space."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class LabelSpace:
    """Class names in id order, and how the source writes each class (classic AG News: '1'..'4')."""

    names: list[str]
    source_values: list[str]

    def to_json(self) -> dict:
        return {"names": self.names, "source_values": self.source_values}

    @classmethod
    def from_json(cls, obj: dict) -> LabelSpace:
        return cls(list(obj["names"]), [str(v) for v in obj["source_values"]])

    def lookup(self) -> dict[str, int]:
        # Names win over source codes; a numeric label also matches its 0-based id when the source codes are
        # names, so '2' means class 2 for a dataset whose labels are written as names elsewhere.
        table = {v: i for i, v in enumerate(self.source_values)}
        table.update({n: i for i, n in enumerate(self.names)})
        return table


@dataclass
class Examples:
    texts: list[str]
    labels: list[int] | None  # None: the source has no label column (prediction input)
    ids: list[str]

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, idx: Iterable[int]) -> Examples:
        idx = list(idx)
        return Examples(
            [self.texts[i] for i in idx],
            None if self.labels is None else [self.labels[i] for i in idx],
            [self.ids[i] for i in idx],
        )


@dataclass
class Dataset:
    """A loaded source: its splits ('train', maybe 'test') and its label space."""

    source: str
    splits: dict[str, Examples]
    labels: LabelSpace
    notes: list[str] = field(default_factory=list)


@dataclass
class Table:
    """A source as read: column name -> values, with the file line of each row for messages."""

    origin: str
    columns: dict[str, list[Any]]
    lines: list[int]  # file line of each row (1-based); row number + 1 where lines mean nothing (parquet)
    label_space: LabelSpace | None = None  # a label space the source itself declares (classes.txt, ClassLabel)

    @property
    def n_rows(self) -> int:
        return len(self.lines)

    def where(self, row: int) -> str:
        return f"{self.origin}, line {self.lines[row]}"
