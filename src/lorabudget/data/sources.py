"""A data source, named in the config or on the command line, read into a `Dataset`: which reader (by
`data.format`, or by suffix), which splits, which label space."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..config import DEFAULT_HUB_DATASET, DataConfig
from ..errors import DataError
from .examples import Dataset, LabelSpace, Table
from .readers import DATA_ENV, READERS, looks_classic, read_classic_ag_news, read_hub
from .rows import config_label_space, table_to_examples, with_declared_codes


def _base_suffix(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def looks_like_hub_id(source: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", source)) and _base_suffix(Path(source)) == ""


def resolve_source(source: str) -> str:
    """The source to read: LORABUDGET_DATA replaces the default Hub dataset (for machines without the Hub)."""
    if source == DEFAULT_HUB_DATASET and os.environ.get(DATA_ENV):
        return os.environ[DATA_ENV]
    return source


def _folder_tables(folder: Path) -> dict[str, Table]:
    tables = {}
    for split in ("train", "test"):
        for name in (f"{split}.csv", f"{split}.csv.gz"):
            if (folder / name).is_file():
                tables[split] = read_classic_ag_news(folder / name)
                break
    if not tables:
        raise DataError(f"{folder}: a data folder must hold train.csv or test.csv (plain or .gz) in the "
                        "ag_news_csv layout, with classes.txt")
    return tables


def _read_tables(source: str, cfg: DataConfig) -> dict[str, Table]:
    path = Path(source).expanduser()
    fmt = cfg.format
    if fmt == "hub" or (fmt == "auto" and not path.exists() and looks_like_hub_id(source)):
        return read_hub(source, cfg)
    if not path.exists():
        raise DataError(f"data source not found: {source} (a file or folder path, or a Hub dataset id)")
    if path.is_dir():
        return _folder_tables(path)
    if fmt == "auto":
        suffix = _base_suffix(path)
        fmt = next((name for name, reader in READERS.items() if suffix in reader.suffixes), "")
        if fmt == "csv" and looks_classic(path, cfg):
            fmt = "ag_news_csv"
        if not fmt:
            raise DataError(f"{path}: unknown file type; use .csv, .tsv, .jsonl, .parquet or a folder, "
                            "or set data.format")
    return {"train": READERS[fmt].read(path, cfg)}


def load_source(cfg: DataConfig, source: str | None = None, *, labels: LabelSpace | None = None,
                require_labels: bool = True) -> Dataset:
    """Read a source into examples. `labels` fixes the label space (a trained run's), else it is discovered."""
    source = resolve_source(source or cfg.source)
    tables = _read_tables(source, cfg)
    declared = next((t.label_space for t in tables.values() if t.label_space is not None), None)
    if labels is not None:
        space = with_declared_codes(labels, declared)
    else:
        space = config_label_space(cfg, declared) or declared
    splits = {}
    # Read 'train' first so that a label space inferred from it also codes the other splits.
    for split in sorted(tables, key=lambda s: s != "train"):
        splits[split], space = table_to_examples(tables[split], cfg, space, require_labels)
    if space is None:
        space = LabelSpace(["0", "1"], ["0", "1"])  # unlabelled data with nothing to say about classes
    return Dataset(source, splits, space)
