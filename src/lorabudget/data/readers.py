"""Readers, one per file format (`READERS`: format -> reader), each from a path to a raw `Table`; and the Hub.

Readers for local files are written here rather than delegated to `datasets` or pandas on purpose: a user who
hands us a broken file must learn the file, the line and what was expected ("line 812: 4 fields, expected 3"),
and those libraries report such problems as generic parser errors, or guess past them. The Hub is read with
`datasets`, which is its own job.
"""

from __future__ import annotations

import csv
import io
import json
import pickle
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import DataConfig
from ..errors import DataError
from ..hub import local_files_only, offline_hint
from .examples import LabelSpace, Table
from .files import csv_rows, open_text, read_all_text

DATA_ENV = "LORABUDGET_DATA"


def read_delimited(path: Path, delimiter: str) -> Table:
    rows = csv_rows(path, read_all_text(path), delimiter)
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
    return Table(str(path), columns, [line for line, _ in body])


def read_classes_txt(folder: Path) -> list[str] | None:
    p = folder / "classes.txt"
    if not p.is_file():
        return None
    names = [line.strip() for line in read_all_text(p).splitlines() if line.strip()]
    if len(names) < 2:
        raise DataError(f"{p}: expected one class name per line, at least 2")
    return names


def read_classic_ag_news(path: Path) -> Table:
    """The headerless `"label","title","description"` layout of the original ag_news_csv release.

    Its columns are named `label`, `title` and `description`, plus `text`: title and description joined, as the
    Hub's ag_news writes its text, and what the default `data.text_column` reads. `data.text_column:
    description` reads the descriptions alone."""
    rows = csv_rows(path, read_all_text(path), ",")
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
    names = read_classes_txt(path.parent)
    space = None
    if names is not None:
        space = LabelSpace(names, [str(i + 1) for i in range(len(names))])
    columns = {"label": labels, "text": texts, "title": titles, "description": descriptions}
    return Table(str(path), columns, lines, space)


def looks_classic(path: Path, cfg: DataConfig) -> bool:
    """A .csv whose first row is data (integer label, 3 fields) rather than a header naming our columns."""
    try:
        with open_text(path) as f:
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


def read_jsonl(path: Path) -> Table:
    columns: dict[str, list[Any]] = {}
    lines: list[int] = []
    # Lines end at '\n' only: str.splitlines() also splits at U+2028, U+0085 and others, which JSON strings may
    # hold unescaped.
    for number, line in enumerate(read_all_text(path).split("\n"), start=1):
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
    return Table(str(path), columns, lines)


def read_parquet(path: Path) -> Table:
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
    return Table(str(path), columns, list(range(2, n + 2)))


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


def read_pickle(path: Path, allowed: bool) -> Table:
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
    return Table(str(path), columns, list(range(2, n + 2)))


def read_hub(name: str, cfg: DataConfig) -> dict[str, Table]:
    try:
        import datasets
    except ImportError:
        raise DataError("reading from the Hugging Face Hub needs the 'datasets' package") from None
    if local_files_only():  # out of reach: the local cache only, at once (datasets reads this flag per call)
        datasets.config.HF_HUB_OFFLINE = True
    try:
        dd = datasets.load_dataset(name)
    except Exception as exc:  # offline, unknown id, gated: datasets raises many types
        raise DataError(
            f"could not load the dataset {name!r} from the Hugging Face Hub ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}).{offline_hint()}\n"
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
        tables[split] = Table(f"{name}[{split}]", ds.to_dict(), list(range(2, len(ds) + 2)), space)
    return tables


@dataclass(frozen=True)
class Reader:
    read: Callable[[Path, DataConfig], Table]
    suffixes: tuple[str, ...] = ()  # file suffixes (before any .gz) that choose it under data.format=auto


# data.format -> its reader; 'auto' picks one by suffix (and tells the classic AG News CSV by its first row),
# 'hub' reads a Hub dataset. A new format is one entry here and its name in config.DataConfig.format.
READERS: dict[str, Reader] = {
    "ag_news_csv": Reader(lambda path, cfg: read_classic_ag_news(path)),
    "csv": Reader(lambda path, cfg: read_delimited(path, ","), (".csv",)),
    "tsv": Reader(lambda path, cfg: read_delimited(path, "\t"), (".tsv",)),
    "jsonl": Reader(lambda path, cfg: read_jsonl(path), (".jsonl", ".json")),
    "parquet": Reader(lambda path, cfg: read_parquet(path), (".parquet",)),
    "pickle": Reader(lambda path, cfg: read_pickle(path, cfg.allow_pickle), (".pkl", ".pickle")),
}
