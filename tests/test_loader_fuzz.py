"""Property-based tests of the data loaders: whatever the file holds, `load_source` either loads it correctly or
raises a LorabudgetError (DataError) that names the problem. Any other exception is a bug.

Where the test writes the file itself (csv.writer, json.dumps), it also knows the right answer: rows that are
well formed must load with exactly their (stripped) text, label and id, and a file with a flaw must be refused.
Where the bytes are random, only the invariants of a loaded dataset are checked.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lorabudget.config import DataConfig
from lorabudget.data import Dataset, load_source, split_train_validation
from lorabudget.errors import DataError, LorabudgetError

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# Characters that break naive parsers: separators, quotes, every kind of line break (U+2028 and U+0085 are line
# breaks to str.splitlines but legal inside JSON strings), BOM, NUL, escapes, whitespace that str.strip removes.
SPECIAL = [",", '"', "\t", "\n", "\r", "\r\n", " ", "\\", "\\n", "\u2028", "\u0085", "\ufeff", "\x00", "\x1c",
           "\u3000", "é", "日本", "🙂", "'", ";"]
TEXT = st.lists(st.one_of(st.sampled_from(SPECIAL), st.characters(codec="utf-8")), max_size=8).map("".join)
WORDY = st.one_of(st.sampled_from(["stocks rally", "  padded  ", "x", "a,b", 'say "hi"']), TEXT)
LABEL = st.one_of(st.sampled_from(["World", "Sports", "0", "1", "2", " 3 ", "-1", "", "nan", "None", "07", "7"]),
                  TEXT)
VALIDATION_SIZE = st.sampled_from([0.1, 0.25, 0.5, 0.9, 1, 2, 3])


@dataclass
class Expected:
    """What a written file must load as; `ok=False`: it must be refused."""

    ok: bool
    texts: list[str] | None = None
    labels: list[str] | None = None  # each row's label as the label space names it
    ids: list[str] | None = None


def _bad_label(key: str) -> bool:
    return key == "" or key.lower() in ("none", "nan")


def _bad_ids(ids: list[str]) -> bool:
    """IDs key a submission's rows: an empty or repeated one is refused."""
    return any(_bad_label(i) for i in ids) or len(set(ids)) != len(ids)


def _write(folder: Path, name: str, data: bytes, gz: bool) -> Path:
    path = folder / (name + ".gz" if gz else name)
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


def _load(source: Path, validation_size=0.1, label_names=None) -> tuple[Dataset | None, DataConfig]:
    """The loaded dataset, or None when it was refused with a LorabudgetError; anything else propagates."""
    cfg = DataConfig(source=str(source), validation_size=validation_size, label_names=label_names)
    try:
        return load_source(cfg), cfg
    except LorabudgetError as exc:
        assert isinstance(exc, DataError), f"{type(exc).__name__}: {exc}"
        assert str(source.name) in str(exc) or str(source) in str(exc), f"message names no file: {exc}"
        return None, cfg


def _check_dataset(ds: Dataset, cfg: DataConfig) -> None:
    """Invariants of any loaded dataset, then of its train / validation split."""
    assert list(ds.splits) == ["train"]
    ex = ds.splits["train"]
    n = len(ex)
    k = len(ds.labels.names)
    assert n > 0 and ex.labels is not None and len(ex.labels) == n and len(ex.ids) == n
    assert all(isinstance(t, str) and t and t == t.strip() for t in ex.texts)
    assert all(isinstance(i, str) for i in ex.ids)
    assert len(set(ds.labels.names)) == k == len(ds.labels.source_values)
    assert all(isinstance(y, int) and 0 <= y < k for y in ex.labels)
    assert set(ex.labels) <= set(range(k))

    classes = set(ex.labels)
    size = cfg.validation_size
    n_val = round(size * n) if isinstance(size, float) else size
    feasible = len(classes) >= 2 and 1 <= n_val <= n - len(classes)
    try:
        split = split_train_validation(ex, cfg)
    except LorabudgetError as exc:
        assert isinstance(exc, DataError)
        assert not feasible, f"a feasible split was refused: {exc}"
        return
    assert feasible, f"an infeasible split went through: {n} rows, {len(classes)} classes, {n_val} validation"
    train, val = split.train, split.validation
    assert len(val) == n_val and len(train) == n - n_val
    assert set(train.labels) == classes, "a class lost all its training rows to the validation split"
    rows = sorted(zip(ex.texts, ex.labels, ex.ids))
    assert sorted(zip(train.texts + val.texts, train.labels + val.labels, train.ids + val.ids)) == rows
    assert split_train_validation(ex, cfg).validation_hash == split.validation_hash  # seeded, repeatable


def _check(source: Path, expected: Expected | None, validation_size=0.1, label_names=None) -> None:
    ds, cfg = _load(source, validation_size, label_names)
    if expected is not None:
        assert (ds is not None) == expected.ok, f"expected {'a load' if expected.ok else 'a DataError'}"
    if ds is None:
        return
    ex = ds.splits["train"]
    if expected is not None:
        assert ex.texts == expected.texts
        assert [ds.labels.names[y] for y in ex.labels] == expected.labels
        # without an id column, a row's id is its index
        assert ex.ids == (expected.ids if expected.ids is not None else [str(i) for i in range(len(ex))])
    _check_dataset(ds, cfg)


# ---- csv / tsv with a header -------------------------------------------------------------------------------

HEADER_NAMES = ["text", "label", "ID", "title", "note", " text ", "Label"]


@st.composite
def header_tables(draw):
    header = draw(st.lists(st.sampled_from(HEADER_NAMES), min_size=1, max_size=5, unique=True))
    if draw(st.booleans()):  # mostly the columns a config needs
        header = [h for h in header if h.strip() not in ("text", "label")] + ["text", "label"]
        header = draw(st.permutations(header))
    field = {"text": WORDY, "label": LABEL, "ID": TEXT}
    rows = []
    for _ in range(draw(st.integers(0, 10))):
        row = [draw(field.get(h.strip(), TEXT)) for h in header]
        delta = draw(st.sampled_from([0] * 8 + [-1, 1]))  # now and then a field too few or too many
        rows.append(row[:delta] if delta < 0 else row + ["extra"] * delta)
    return header, rows


def _expect_header_table(header: list[str], rows: list[list[str]]) -> Expected:
    names = [h.strip() for h in header]
    body = [r for r in rows if r]  # csv.writer writes an empty row as a blank line, which carries no row
    if len(set(names)) != len(names) or not body or "text" not in names or "label" not in names:
        return Expected(False)
    if any(len(r) != len(names) for r in body):
        return Expected(False)
    col = {name: i for i, name in enumerate(names)}
    texts = [r[col["text"]].strip() for r in body]
    labels = [r[col["label"]].strip() for r in body]
    if not all(texts) or any(_bad_label(y) for y in labels):
        return Expected(False)
    ids = [r[col["ID"]].strip() for r in body] if "ID" in col else None
    if ids is not None and _bad_ids(ids):
        return Expected(False)
    return Expected(True, texts, labels, ids)


@FUZZ
# regressions: a label of 5000 digits (int() refuses it); a 1-row class that won the validation split's remainder
@example(table=(["text", "label"], [["a", "1" * 5000], ["b", "2"]]), tsv=False, quote_all=False,
         unix_newlines=False, bom=False, gz=False, validation_size=0.1)
@example(table=(["text", "label"], [["a", "x"], ["b", "y"], ["c", "y"], ["d", "y"]]), tsv=False, quote_all=False,
         unix_newlines=False, bom=False, gz=False, validation_size=2)
@given(table=header_tables(), tsv=st.booleans(), quote_all=st.booleans(), unix_newlines=st.booleans(),
       bom=st.booleans(), gz=st.booleans(), validation_size=VALIDATION_SIZE)
def test_written_csv_loads_exactly_or_is_refused(table, tsv, quote_all, unix_newlines, bom, gz, validation_size):
    header, rows = table
    buf = io.StringIO()
    # '\n' line ends only with every field quoted: csv.writer leaves a lone '\r' unquoted otherwise
    writer = csv.writer(buf, delimiter="\t" if tsv else ",",
                        quoting=csv.QUOTE_ALL if quote_all or unix_newlines else csv.QUOTE_MINIMAL,
                        lineterminator="\n" if unix_newlines else "\r\n")
    writer.writerow(header)
    writer.writerows(rows)
    data = (("\ufeff" if bom else "") + buf.getvalue()).encode("utf-8")
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp), "data.tsv" if tsv else "data.csv", data, gz)
        _check(path, _expect_header_table(header, rows), validation_size)


@FUZZ
@given(lines=st.lists(st.lists(st.one_of(WORDY, LABEL, st.sampled_from(['"', '""', '"a"b', "a\"b"])),
                               min_size=0, max_size=4), min_size=0, max_size=8),
       header=st.sampled_from(["text,label", "label,text", "text", "", "ID,text,label"]),
       newline=st.sampled_from(["\n", "\r\n", "\r"]), gz=st.booleans())
def test_hand_joined_csv_never_crashes(lines, header, newline, gz):
    """Fields joined without quoting: stray quotes, embedded separators and line breaks of every kind."""
    text = newline.join([header] + [",".join(fields) for fields in lines])
    with tempfile.TemporaryDirectory() as tmp:
        _check(_write(Path(tmp), "data.csv", text.encode("utf-8"), gz), None)


# ---- the classic headerless AG News layout -----------------------------------------------------------------

CLASSES = ["World", "Sports", "Business", "Sci/Tech"]


@st.composite
def classic_rows(draw):
    rows = []
    for _ in range(draw(st.integers(1, 10))):
        label = draw(st.one_of(st.sampled_from(["1", "2", "3", "4"]), st.sampled_from(["0", "5", " 2", "x", ""])))
        row = [label, draw(WORDY), draw(WORDY)]
        delta = draw(st.sampled_from([0] * 8 + [-1, 1]))
        rows.append(row[:delta] if delta < 0 else row + ["extra"] * delta)
    return rows


def _classic_text(title: str, description: str) -> str:
    parts = (p.replace("\\n", " ").strip() for p in (title, description))
    return " ".join(p for p in parts if p)


def _looks_classic(first: list[str]) -> bool:
    return (len(first) == 3 and first[0].strip().lstrip("-").isdigit()
            and "text" not in first and "label" not in first)


def _expect_classic(rows: list[list[str]], classes_txt: bool, as_folder: bool, config_names: bool) -> Expected:
    if not as_folder and not _looks_classic(rows[0]):
        return Expected(False)  # read as a csv with a header, which names neither 'text' nor 'label'
    if any(len(r) != 3 for r in rows):
        return Expected(False)
    texts = [_classic_text(r[1], r[2]) for r in rows]
    keys = [r[0].strip() for r in rows]
    if not all(texts) or any(_bad_label(k) for k in keys):
        return Expected(False)
    if classes_txt:  # classes.txt codes the classes 1..4, whether or not data.label_names names them too
        if any(k not in ("1", "2", "3", "4") for k in keys):
            return Expected(False)
        keys = [CLASSES[int(k) - 1] for k in keys]
    elif config_names:  # data.label_names alone: the labels are 0-based ids
        if any(k not in ("0", "1", "2", "3") for k in keys):
            return Expected(False)
        keys = [CLASSES[int(k)] for k in keys]
    return Expected(True, texts, keys, None)


@FUZZ
# regressions: a line break inside the first row's quoted title; a BOM before the first row
@example(rows=[["1", "\n", "stocks rally"], ["2", "a", "b"]], classes_txt=False, as_folder=False, gz=False,
         quote_all=False, validation_size=0.1, bom=False, config_names=False)
@example(rows=[["1", "t", "d"], ["2", "a", "b"]], classes_txt=True, as_folder=False, gz=True,
         quote_all=True, validation_size=0.1, bom=True, config_names=False)
# regression: data.label_names beside classes.txt shifted every label by one ('1' read as id 1, 'Sports')
@example(rows=[["1", "t", "d"], ["4", "a", "b"]], classes_txt=True, as_folder=True, gz=False,
         quote_all=True, validation_size=0.1, bom=False, config_names=True)
@given(rows=classic_rows(), classes_txt=st.booleans(), as_folder=st.booleans(), gz=st.booleans(),
       quote_all=st.booleans(), validation_size=VALIDATION_SIZE, bom=st.booleans(), config_names=st.booleans())
def test_classic_ag_news_loads_exactly_or_is_refused(rows, classes_txt, as_folder, gz, quote_all, validation_size,
                                                     bom, config_names):
    buf = io.StringIO()
    csv.writer(buf, quoting=csv.QUOTE_ALL if quote_all else csv.QUOTE_MINIMAL).writerows(rows)
    data = (("\ufeff" if bom else "") + buf.getvalue()).encode("utf-8")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = _write(folder, "train.csv", data, gz)
        if classes_txt:
            (folder / "classes.txt").write_text("\n".join(CLASSES) + "\n", encoding="utf-8")
        _check(folder if as_folder else path, _expect_classic(rows, classes_txt, as_folder, config_names),
               validation_size, CLASSES if config_names else None)


# ---- jsonl -------------------------------------------------------------------------------------------------

JSON_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), TEXT)
JSON_VALUE = st.recursive(JSON_SCALAR, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                              st.dictionaries(TEXT, inner, max_size=3)), max_leaves=6)


@st.composite
def json_records(draw):
    """A JSON object per line, mostly well formed, now and then missing or odd in a field."""
    obj = {}
    if draw(st.integers(0, 9)):
        obj["text"] = draw(st.one_of(WORDY, WORDY, JSON_VALUE))
    if draw(st.integers(0, 9)):
        obj["label"] = draw(st.one_of(LABEL, st.integers(-3, 9), JSON_VALUE))
    if draw(st.integers(0, 3)) == 0:
        obj["ID"] = draw(st.one_of(TEXT, st.integers()))
    if draw(st.booleans()):
        obj[draw(TEXT)] = draw(JSON_VALUE)
    return obj


LINE = st.one_of(
    json_records(), json_records(), json_records(),
    JSON_VALUE,  # valid JSON but not an object
    st.sampled_from(["", "   ", "{", '{"text": "a", "label": 1', "not json", "[" * 5000 + "]" * 5000,
                     '{"text": "t", "label": ' + "7" * 5000 + "}", '{"text": "t", "label": NaN}']),
    TEXT,
)


def _expect_jsonl(lines: list) -> Expected | None:
    """The answer where every line is blank or an object with a string text and a string or integer label."""
    records = [x for x in lines if not (isinstance(x, str) and not x.strip())]
    if not all(isinstance(x, dict) for x in records):
        return None
    if not records:
        return Expected(False)
    texts, labels, ids = [], [], []
    for rec in records:
        text, label = rec.get("text"), rec.get("label")
        if not isinstance(text, str) or not (isinstance(label, str) or type(label) is int):
            return None if "text" in rec and "label" in rec else Expected(False)
        texts.append(text.strip())
        labels.append(label.strip() if isinstance(label, str) else str(label))
        ids.append(rec.get("ID"))
    if not all(texts) or any(_bad_label(y) for y in labels):
        return Expected(False)
    if all(i is None for i in ids):
        return Expected(True, texts, labels, None)
    if all(isinstance(i, str) for i in ids):
        ids = [i.strip() for i in ids]
        return Expected(False) if _bad_ids(ids) else Expected(True, texts, labels, ids)
    return None


@FUZZ
# regression: U+2028 and U+0085 are line breaks to str.splitlines(), but json.dumps leaves them raw in strings
@example(lines=[{"text": "a\u2028b\x85c", "label": "x"}, {"text": "d", "label": "y"}], ascii_only=False, crlf=False,
         bom=False, gz=False, validation_size=0.5)
# regressions: an integer too long for int(), nesting too deep for the parser (ValueError, RecursionError)
@example(lines=['{"text": "t", "label": ' + "7" * 5000 + "}"], ascii_only=True, crlf=False, bom=False, gz=False,
         validation_size=0.1)
@example(lines=["[" * 5000 + "]" * 5000], ascii_only=True, crlf=False, bom=False, gz=False, validation_size=0.1)
@given(lines=st.lists(LINE, max_size=8), ascii_only=st.booleans(), crlf=st.booleans(), bom=st.booleans(),
       gz=st.booleans(), validation_size=VALIDATION_SIZE)
def test_jsonl_loads_exactly_or_is_refused(lines, ascii_only, crlf, bom, gz, validation_size):
    encoded = [x if isinstance(x, str) else json.dumps(x, ensure_ascii=ascii_only) for x in lines]
    text = ("\ufeff" if bom else "") + ("\r\n" if crlf else "\n").join(encoded)
    # A raw string line might itself be a JSON object ('{}'); the oracle only judges the lines it wrote as JSON.
    raw_strings = [x for x in lines if isinstance(x, str) and x.strip()]
    expected = _expect_jsonl(lines) if not raw_strings else None
    with tempfile.TemporaryDirectory() as tmp:
        _check(_write(Path(tmp), "data.jsonl", text.encode("utf-8"), gz), expected, validation_size)


# ---- random bytes ------------------------------------------------------------------------------------------

@FUZZ
@given(data=st.binary(max_size=400), prefix=st.sampled_from([b"", b"text,label\n", b'{"text": "a", "label": 1}\n',
                                                             b'"1","t","d"\n', b"\xef\xbb\xbf", b"\x1f\x8b"]),
       name=st.sampled_from(["d.csv", "d.tsv", "d.jsonl", "d.json", "d.parquet", "d.txt", "d.pkl", "d.CSV"]),
       gz=st.booleans())
def test_random_bytes_never_crash(data, prefix, name, gz):
    with tempfile.TemporaryDirectory() as tmp:
        _check(_write(Path(tmp), name, prefix + data, gz), None)


def test_classic_layout_names_its_columns(tmp_path):
    """title and description are columns of their own, so data.text_column can choose; 'text' joins them."""
    (tmp_path / "classes.txt").write_text("World\nSports\n", encoding="utf-8")
    path = _write(tmp_path, "train.csv", b'"1","Stocks rally","Markets rose."\n"2","","Team wins."\n', gz=False)
    joined = load_source(DataConfig(source=str(path))).splits["train"]
    assert joined.texts == ["Stocks rally Markets rose.", "Team wins."]
    alone = load_source(DataConfig(source=str(path), text_column="description")).splits["train"]
    assert alone.texts == ["Markets rose.", "Team wins."] and alone.labels == joined.labels == [0, 1]
    rebuilt = DataConfig(source=str(path), text_column="description", title_column="title")
    assert load_source(rebuilt).splits["train"].texts == joined.texts
    try:
        load_source(DataConfig(source=str(path), text_column="body"))
    except DataError as exc:
        assert "'body'" in str(exc) and "'description'" in str(exc)
    else:
        raise AssertionError("an unknown text column loaded")


# ---- data.max_train_samples ----------------------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(counts=st.lists(st.integers(2, 40), min_size=2, max_size=6), cap=st.integers(1, 60),
       split_seed=st.integers(0, 3))
@example(counts=[2, 2, 2, 2, 12], cap=5, split_seed=0)  # four classes at the floor take two rows from the fifth
def test_max_train_samples_keeps_every_class_or_is_refused(counts, cap, split_seed):
    """A stratified training subset keeps exactly `cap` rows and every class, however rare; fewer rows than
    classes is a DataError, not a silently smaller label space."""
    from lorabudget.data import Examples

    labels = [cls for cls, count in enumerate(counts) for _ in range(count)]
    ex = Examples([f"text {i}" for i in range(len(labels))], labels, [str(i) for i in range(len(labels))])
    cfg = DataConfig(validation_size=len(counts), split_seed=split_seed, max_train_samples=cap)
    n_train = len(labels) - len(counts)
    try:
        split = split_train_validation(ex, cfg)
    except DataError as exc:
        assert cap < len(counts) and cap < n_train, f"refused a feasible cap: {exc}"
        assert "max_train_samples" in str(exc)
        return
    assert len(split.train) == min(cap, n_train)
    assert set(split.train.labels) == set(range(len(counts))), "a class lost all its training rows"
    assert set(split.train.ids).isdisjoint(split.validation.ids)
    uncapped = split_train_validation(ex, cfg.model_copy(update={"max_train_samples": None}))
    assert split.validation.ids == uncapped.validation.ids, "the cap moved the validation split"
    whole = uncapped.train
    assert set(split.train.ids) <= set(whole.ids)
    # still stratified: each class within 2 rows of its exact share, except that the rows a rare class gets
    # above its share to keep one row (`excess`) come out of the other classes
    shares = [len(split.train) * whole.labels.count(cls) / len(whole) for cls in range(len(counts))]
    excess = sum(max(0.0, 1 - share) for share in shares)
    for cls, share in enumerate(shares):
        kept = split.train.labels.count(cls)
        assert share - 2 - excess < kept < share + 2, (cls, counts, cap)
