"""From a raw table to examples: the text (title joined before it), the label coded in the label space, the id.
Every empty text, unknown label or repeated id is reported with its file line."""

from __future__ import annotations

import re
from typing import Any

from ..config import DataConfig
from ..errors import DataError
from .examples import Examples, LabelSpace, Table


def _require_column(table: Table, name: str, role: str, flag: str) -> list[Any]:
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


def table_to_examples(table: Table, cfg: DataConfig, space: LabelSpace | None,
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


# ---- the label space ---------------------------------------------------------------------------------

def config_label_space(cfg: DataConfig, declared: LabelSpace | None) -> LabelSpace | None:
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


def with_declared_codes(space: LabelSpace, declared: LabelSpace | None) -> LabelSpace:
    """A fixed label space (a trained run's) read with the coding a source declares, matched by class name: a run
    trained on the Hub's ag_news (codes 0..3) scores the classic CSV (codes 1..4) correctly, and the reverse."""
    if declared is None or sorted(declared.names) != sorted(space.names):
        return space
    code = dict(zip(declared.names, declared.source_values))
    return LabelSpace(list(space.names), [code[n] for n in space.names])
