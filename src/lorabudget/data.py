"""Data sources -> (text, label, id) examples -> a stratified, seeded train / validation split.

Readers for local files are written here rather than delegated to `datasets` or pandas on purpose: a user who
hands us a broken file must learn the file, the line and what was expected ("line 812: 4 fields, expected 3"),
and those libraries report such problems as generic parser errors, or guess past them. The Hub is read with
`datasets`, which is its own job.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import pickle
import re
import warnings
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import DEFAULT_HUB_DATASET, DataConfig
from .errors import DataError

DATA_ENV = "LORABUDGET_DATA"
_TABLE_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet",
                   ".pkl": "pickle", ".pickle": "pickle"}
csv.field_size_limit(16 * 1024 * 1024)


# ---- what the rest of the pipeline sees ---------------------------------------------------------------------

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


# ---- raw tables: column name -> values, with the file line of each row for messages -----------------------

@dataclass
class _Table:
    origin: str
    columns: dict[str, list[Any]]
    lines: list[int]  # file line of each row (1-based); row number + 1 where lines mean nothing (parquet)
    label_space: LabelSpace | None = None  # a label space the source itself declares (classes.txt, ClassLabel)

    @property
    def n_rows(self) -> int:
        return len(self.lines)

    def where(self, row: int) -> str:
        return f"{self.origin}, line {self.lines[row]}"


def _is_gzip(path: Path) -> bool:
    return path.suffix.lower() == ".gz"


def _open_text(path: Path) -> io.TextIOBase:
    """Open plain or gzip text strictly as UTF-8; decoding errors surface at read time as UnicodeDecodeError."""
    if _is_gzip(path):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="strict", newline="")
    return open(path, encoding="utf-8", errors="strict", newline="")


def _read_all_text(path: Path) -> str:
    """The whole file (gunzipped) as UTF-8 text; a byte that is not UTF-8 is reported with its line."""
    try:
        if _is_gzip(path):
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: not a readable gzip file ({exc})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path}, line {line}: not UTF-8 text (byte {exc.start}: {exc.reason}); save the file "
                        "as UTF-8") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text.strip():
        raise DataError(f"{path}: the file is empty")
    return text


def _csv_rows(path: Path, text: str, delimiter: str) -> list[tuple[int, list[str]]]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    rows: list[tuple[int, list[str]]] = []
    start = 1
    try:
        for row in reader:
            if row:  # blank lines carry no row
                rows.append((start, row))
            start = reader.line_num + 1
    except csv.Error as exc:
        # `start` is the line the broken row begins on: where an unterminated quote opens, not the end of file
        hint = ("a quote opened in this row is never closed" if "end of data" in str(exc)
                else 'check the quotes in this row (a quote inside a quoted field is written twice: "")')
        raise DataError(f"{path}, line {start}: malformed {'TSV' if delimiter == chr(9) else 'CSV'} "
                        f"({exc}); {hint}") from None
    return rows


def _read_delimited(path: Path, delimiter: str) -> _Table:
    rows = _csv_rows(path, _read_all_text(path), delimiter)
    (_, header), body = rows[0], rows[1:]
    header = [h.strip() for h in header]
    if len(set(header)) != len(header):
        raise DataError(f"{path}, line 1: the header repeats a column name: {header}")
    if not body:
        raise DataError(f"{path}: a header but no rows")
    columns: dict[str, list[Any]] = {h: [] for h in header}
    for line, row in body:
        if len(row) != len(header):
            raise DataError(f"{path}, line {line}: {len(row)} fields, expected {len(header)} as in the header")
        for h, value in zip(header, row):
            columns[h].append(value)
    return _Table(str(path), columns, [line for line, _ in body])


def _read_classes_txt(folder: Path) -> list[str] | None:
    p = folder / "classes.txt"
    if not p.is_file():
        return None
    names = [line.strip() for line in _read_all_text(p).splitlines() if line.strip()]
    if len(names) < 2:
        raise DataError(f"{p}: expected one class name per line, at least 2")
    return names


def _read_classic_ag_news(path: Path) -> _Table:
    """The headerless `"label","title","description"` layout of the original ag_news_csv release.

    Its columns are named `label`, `title` and `description`, plus `text`: title and description joined, as the
    Hub's ag_news writes its text, and what the default `data.text_column` reads. `data.text_column:
    description` reads the descriptions alone."""
    rows = _csv_rows(path, _read_all_text(path), ",")
    labels, texts, titles, descriptions, lines = [], [], [], [], []
    for line, row in rows:
        if len(row) != 3:
            raise DataError(f"{path}, line {line}: {len(row)} fields, expected 3 (label, title, description)")
        label, title, description = (part.replace("\\n", " ").strip() for part in row)
        # Later rows of the shared subset carry an empty title and the joined text in the description.
        texts.append(" ".join(part for part in (title, description) if part))
        titles.append(title)
        descriptions.append(description)
        labels.append(label)
        lines.append(line)
    names = _read_classes_txt(path.parent)
    space = None
    if names is not None:
        space = LabelSpace(names, [str(i + 1) for i in range(len(names))])
    columns = {"label": labels, "text": texts, "title": titles, "description": descriptions}
    return _Table(str(path), columns, lines, space)


def _looks_classic(path: Path, cfg: DataConfig) -> bool:
    """A .csv whose first row is data (integer label, 3 fields) rather than a header naming our columns."""
    try:
        with _open_text(path) as f:
            head = f.read(1 << 20).lstrip("\ufeff")
    except (UnicodeDecodeError, OSError, EOFError, zlib.error):
        return False  # let the chosen reader produce the precise error
    try:
        # the first record, not the first line: a quoted title may hold a line break
        row = next((r for r in csv.reader(io.StringIO(head, newline="")) if r), [])
    except csv.Error:
        return False
    if cfg.text_column in row or cfg.label_column in row:
        return False
    return len(row) == 3 and row[0].strip().lstrip("-").isdigit()


def _read_jsonl(path: Path) -> _Table:
    columns: dict[str, list[Any]] = {}
    lines: list[int] = []
    # Lines end at '\n' only: str.splitlines() also splits at U+2028, U+0085 and others, which JSON strings may
    # hold unescaped.
    for number, line in enumerate(_read_all_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}, line {number}: not valid JSON ({exc.msg})") from None
        except (ValueError, RecursionError) as exc:  # an integer too long to convert, nesting too deep
            raise DataError(f"{path}, line {number}: not usable JSON ({type(exc).__name__}: {exc})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}, line {number}: expected a JSON object per line, got {type(obj).__name__}")
        for key in obj:
            if key not in columns:
                columns[key] = [None] * len(lines)
        for key in columns:
            columns[key].append(obj.get(key))
        lines.append(number)
    return _Table(str(path), columns, lines)


def _read_parquet(path: Path) -> _Table:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError("reading parquet needs pyarrow: pip install 'lorabudget[parquet]'") from None
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        raise DataError(f"{path}: not a readable parquet file ({exc})") from None
    columns = table.to_pydict()
    n = table.num_rows
    if n == 0:
        raise DataError(f"{path}: the file has no rows")
    return _Table(str(path), columns, list(range(2, n + 2)))


def _columns_from_object(obj: Any, origin: str) -> dict[str, list[Any]]:
    if hasattr(obj, "to_dict") and hasattr(obj, "column_names"):  # a datasets.Dataset
        return obj.to_dict()
    if hasattr(obj, "to_dict") and hasattr(obj, "columns"):  # a pandas DataFrame
        return {str(k): list(v) for k, v in obj.to_dict(orient="list").items()}
    if isinstance(obj, dict) and all(isinstance(v, (list, tuple)) for v in obj.values()):
        lengths = {str(k): len(v) for k, v in obj.items()}
        if len(set(lengths.values())) > 1:
            raise DataError(f"{origin}: the pickled columns differ in length ({lengths}); every column needs one "
                            "value per row")
        return {str(k): list(v) for k, v in obj.items()}
    raise DataError(f"{origin}: the pickle holds a {type(obj).__name__}, expected a datasets.Dataset, a pandas "
                    "DataFrame or a dict of columns")


def _read_pickle(path: Path, allowed: bool) -> _Table:
    if not allowed:
        raise DataError(f"{path} is a pickle file. Unpickling runs code from the file; if you trust it, pass "
                        "--allow-pickle (or set data.allow_pickle=true)")
    warnings.warn(f"unpickling {path}: this runs code from the file; only do this for files you trust", stacklevel=2)
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f)  # noqa: S301 - explicit opt-in above
    except Exception as exc:  # unpickling can fail in arbitrary ways
        raise DataError(f"{path}: cannot unpickle ({type(exc).__name__}: {exc})") from None
    columns = _columns_from_object(obj, str(path))
    n = len(next(iter(columns.values()), []))
    return _Table(str(path), columns, list(range(2, n + 2)))


def _read_hub(name: str, cfg: DataConfig) -> dict[str, _Table]:
    try:
        import datasets
    except ImportError:
        raise DataError("reading from the Hugging Face Hub needs the 'datasets' package") from None
    try:
        dd = datasets.load_dataset(name)
    except Exception as exc:  # offline, unknown id, gated: datasets raises many types
        raise DataError(
            f"could not load the dataset {name!r} from the Hugging Face Hub ({type(exc).__name__}: {exc}).\n"
            f"Give a local copy instead: --data PATH (a folder in the ag_news_csv layout, or a csv / tsv / jsonl / "
            f"parquet file), or set {DATA_ENV}=PATH to replace the default dataset."
        ) from None
    tables = {}
    for split in dd:
        ds = dd[split]
        space = None
        feature = ds.features.get(cfg.label_column)
        if feature is not None and hasattr(feature, "names"):
            space = LabelSpace(list(feature.names), [str(i) for i in range(len(feature.names))])
        tables[split] = _Table(f"{name}[{split}]", ds.to_dict(), list(range(2, len(ds) + 2)), space)
    return tables


# ---- from raw tables to examples -------------------------------------------------------------------------

def _require_column(table: _Table, name: str, role: str, flag: str) -> list[Any]:
    if name not in table.columns:
        present = ", ".join(repr(c) for c in table.columns) or "none"
        raise DataError(f"{table.origin}: no {role} column {name!r} (columns present: {present}); "
                        f"set data.{flag} to the right column")
    return table.columns[name]


def _clean_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value != value:  # NaN from a parquet or pickle null
        return ""
    return str(value).strip()


def _as_label_key(value: Any) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _infer_label_space(values: list[str]) -> LabelSpace:
    distinct = sorted(set(values))
    # ASCII digits, and short enough for int(): Python refuses to convert strings of more than 4300 digits
    if all(re.fullmatch(r"-?[0-9]{1,18}", v) for v in distinct):
        distinct = sorted(distinct, key=int)
        # Plain ids 0..K-1 keep their meaning; any other coding is mapped in sorted order.
    return LabelSpace(distinct, list(distinct))


def _table_to_examples(table: _Table, cfg: DataConfig, space: LabelSpace | None,
                       require_labels: bool) -> tuple[Examples, LabelSpace | None]:
    if table.n_rows == 0:
        raise DataError(f"{table.origin}: no rows")
    texts_col = _require_column(table, cfg.text_column, "text", "text_column")
    titles_col = None
    if cfg.title_column:
        titles_col = _require_column(table, cfg.title_column, "title", "title_column")
    texts = []
    for row in range(table.n_rows):
        parts = [_clean_text(titles_col[row])] if titles_col is not None else []
        parts.append(_clean_text(texts_col[row]))
        text = " ".join(p for p in parts if p)
        if not text:
            raise DataError(f"{table.where(row)}: empty text (column {cfg.text_column!r})")
        texts.append(text)

    if cfg.id_column and cfg.id_column in table.columns:
        ids = [_as_label_key(v) for v in table.columns[cfg.id_column]]
        _check_ids(table, ids, cfg.id_column)
    else:
        ids = [str(i) for i in range(table.n_rows)]

    labels = None
    if cfg.label_column in table.columns:
        raw = [_as_label_key(v) for v in table.columns[cfg.label_column]]
        for row, v in enumerate(raw):
            if _is_missing(v):
                raise DataError(f"{table.where(row)}: empty label (column {cfg.label_column!r})")
        if space is None:
            space = _infer_label_space(raw)
        lookup = space.lookup()
        labels = []
        for row, v in enumerate(raw):
            if v not in lookup:
                shown = ", ".join(space.source_values if space.source_values != space.names
                                  else space.names)
                raise DataError(f"{table.where(row)}: label {v!r} is not in the label set "
                                f"({shown}; names: {', '.join(space.names)})")
            labels.append(lookup[v])
    elif require_labels:
        _require_column(table, cfg.label_column, "label", "label_column")
    return Examples(texts, labels, ids), space


def _is_missing(value: str) -> bool:
    """An empty cell, or what pandas and JSON writers leave for one."""
    return value == "" or value.lower() in ("none", "nan")


def _check_ids(table, ids: list[str], column: str) -> None:
    """A submission keys its rows by ID: an empty or repeated one would make it ambiguous, so say where."""
    first_row: dict[str, int] = {}
    for row, value in enumerate(ids):
        if _is_missing(value):
            raise DataError(f"{table.where(row)}: empty id (column {column!r})")
        if value in first_row:
            raise DataError(f"{table.where(row)}: id {value!r} (column {column!r}) repeats the one at line "
                            f"{table.lines[first_row[value]]}; ids must be unique")
        first_row[value] = row


# ---- resolving a source ----------------------------------------------------------------------------------

def _base_suffix(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def _looks_like_hub_id(source: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", source)) and _base_suffix(Path(source)) == ""


def resolve_source(source: str) -> str:
    """The source to read: LORABUDGET_DATA replaces the default Hub dataset (for machines without the Hub)."""
    if source == DEFAULT_HUB_DATASET and os.environ.get(DATA_ENV):
        return os.environ[DATA_ENV]
    return source


def _folder_tables(folder: Path) -> dict[str, _Table]:
    tables = {}
    for split in ("train", "test"):
        for name in (f"{split}.csv", f"{split}.csv.gz"):
            if (folder / name).is_file():
                tables[split] = _read_classic_ag_news(folder / name)
                break
    if not tables:
        raise DataError(f"{folder}: a data folder must hold train.csv or test.csv (plain or .gz) in the "
                        "ag_news_csv layout, with classes.txt")
    return tables


def _read_tables(source: str, cfg: DataConfig) -> dict[str, _Table]:
    path = Path(source).expanduser()
    fmt = cfg.format
    if fmt == "hub" or (fmt == "auto" and not path.exists() and _looks_like_hub_id(source)):
        return _read_hub(source, cfg)
    if not path.exists():
        raise DataError(f"data source not found: {source} (a file or folder path, or a Hub dataset id)")
    if path.is_dir():
        return _folder_tables(path)
    if fmt == "auto":
        fmt = _TABLE_SUFFIXES.get(_base_suffix(path), "")
        if fmt == "csv" and _looks_classic(path, cfg):
            fmt = "ag_news_csv"
        if not fmt:
            raise DataError(f"{path}: unknown file type; use .csv, .tsv, .jsonl, .parquet or a folder, "
                            "or set data.format")
    readers = {
        "ag_news_csv": lambda: _read_classic_ag_news(path),
        "csv": lambda: _read_delimited(path, ","),
        "tsv": lambda: _read_delimited(path, "\t"),
        "jsonl": lambda: _read_jsonl(path),
        "parquet": lambda: _read_parquet(path),
        "pickle": lambda: _read_pickle(path, cfg.allow_pickle),
    }
    return {"train": readers[fmt]()}


def _config_label_space(cfg: DataConfig, declared: LabelSpace | None) -> LabelSpace | None:
    """data.label_names, read with the source's own coding where it declares one (classic AG News writes its
    classes as '1'..'4'): the config names the classes, it does not recode the file."""
    if cfg.label_names is None:
        return None
    if len(set(cfg.label_names)) != len(cfg.label_names) or len(cfg.label_names) < 2:
        raise DataError(f"data.label_names must list at least 2 distinct class names, got {cfg.label_names}")
    if declared is None:
        return LabelSpace(list(cfg.label_names), [str(i) for i in range(len(cfg.label_names))])
    if len(declared.names) != len(cfg.label_names):
        raise DataError(f"data.label_names lists {len(cfg.label_names)} classes but the data declares "
                        f"{len(declared.names)} ({', '.join(declared.names)})")
    return LabelSpace(list(cfg.label_names), list(declared.source_values))


def _with_declared_codes(space: LabelSpace, declared: LabelSpace | None) -> LabelSpace:
    """A fixed label space (a trained run's) read with the coding a source declares, matched by class name: a run
    trained on the Hub's ag_news (codes 0..3) scores the classic CSV (codes 1..4) correctly, and the reverse."""
    if declared is None or sorted(declared.names) != sorted(space.names):
        return space
    code = dict(zip(declared.names, declared.source_values))
    return LabelSpace(list(space.names), [code[n] for n in space.names])


def load_source(cfg: DataConfig, source: str | None = None, *, labels: LabelSpace | None = None,
                require_labels: bool = True) -> Dataset:
    """Read a source into examples. `labels` fixes the label space (a trained run's), else it is discovered."""
    source = resolve_source(source or cfg.source)
    tables = _read_tables(source, cfg)
    declared = next((t.label_space for t in tables.values() if t.label_space is not None), None)
    if labels is not None:
        space = _with_declared_codes(labels, declared)
    else:
        space = _config_label_space(cfg, declared) or declared
    splits = {}
    # Read 'train' first so that a label space inferred from it also codes the other splits.
    for split in sorted(tables, key=lambda s: s != "train"):
        splits[split], space = _table_to_examples(tables[split], cfg, space, require_labels)
    if space is None:
        space = LabelSpace(["0", "1"], ["0", "1"])  # unlabelled data with nothing to say about classes
    return Dataset(source, splits, space)


# ---- the validation split --------------------------------------------------------------------------------

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


def split_train_validation(examples: Examples, cfg: DataConfig, n_classes: int,
                           source: str = "the training data") -> Split:
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
