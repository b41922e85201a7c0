"""Reading text files strictly: plain or gzip, UTF-8 only, CSV with the line of every record, for messages that
name the file and the line."""

from __future__ import annotations

import csv
import gzip
import io
import zlib
from pathlib import Path

from ..errors import DataError

csv.field_size_limit(16 * 1024 * 1024)


def is_gzip(path: Path) -> bool:
    return path.suffix.lower() == ".gz"


def open_text(path: Path) -> io.TextIOBase:
    """Open plain or gzip text strictly as UTF-8; decoding errors surface at read time as UnicodeDecodeError."""
    if is_gzip(path):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="strict", newline="")
    return open(path, encoding="utf-8", errors="strict", newline="")


def read_all_text(path: Path) -> str:
    """The whole file (gunzipped) as UTF-8 text; a byte that is not UTF-8 is reported with its line."""
    try:
        if is_gzip(path):
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


def csv_rows(path: Path, text: str, delimiter: str) -> list[tuple[int, list[str]]]:
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
