"""Bad input through the CLI: exit status 2, a specific message, no traceback, and no run that looks finished.

One table, one test. Each case builds its input in a fresh folder and returns the command line; the table says
what the message must contain. Most cases fail before any model loads; the few that train use `--max-steps 2`
on the tiny model.
"""

from __future__ import annotations

import json
import pickle
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import CLASSES, make_texts, tiny_config, write_config, write_csv

from lorabudget.cli import main

GOOD_ROWS = make_texts(40, seed=3)


@pytest.fixture(scope="module")
def finished_run(tiny_roberta, tmp_path_factory) -> Path:
    """A finished run to copy from: the subject of the overwrite and evaluate cases."""
    base = tmp_path_factory.mktemp("finished")
    data = write_csv(base / "good.csv", GOOD_ROWS)
    cfg = write_config(base / "cfg.yaml", tiny_config(tiny_roberta, data, base / "run"))
    assert main(["train", "-c", str(cfg), "--max-steps", "2"]) == 0
    return base / "run"


@dataclass
class Ctx:
    tmp: Path
    model: Path
    finished: Path

    @property
    def out(self) -> Path:
        """The output folder every case writes to (or evaluates)."""
        return self.tmp / "run"

    def file(self, name: str, content: str | bytes) -> Path:
        path = self.tmp / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    def csv(self, name: str, lines: list[str]) -> Path:
        return self.file(name, "".join(line + "\n" for line in lines))

    def good_csv(self) -> Path:
        return write_csv(self.tmp / "good.csv", GOOD_ROWS)

    def config(self, data: Path | None = None, **sections) -> Path:
        cfg = tiny_config(self.model, data or self.good_csv(), self.out, **sections)
        return write_config(self.tmp / "cfg.yaml", cfg)

    def train(self, *extra: str, data: Path | None = None, **sections) -> list[str]:
        return ["train", "-c", str(self.config(data, **sections)), "--max-steps", "2", *extra]

    def copy_finished(self) -> Path:
        shutil.copytree(self.finished, self.out)
        return self.out


def _label_rows(label: str, n: int = 12) -> list[str]:
    return ["text,label"] + [f"{text},{label}" for text, _ in make_texts(n, seed=4)]


def _pickled_columns(c: Ctx) -> Path:
    rows = make_texts(40, seed=5)
    columns = {"text": [t for t, _ in rows], "label": [CLASSES[y] for _, y in rows]}
    return c.file("data.pkl", pickle.dumps(columns))


def _pickled_ragged(c: Ctx) -> Path:
    return c.file("ragged.pkl", pickle.dumps({"text": ["a", "b", "c"], "label": ["World", "Sports"]}))


def _unfinished(c: Ctx) -> Path:
    c.out.mkdir()
    shutil.copy(c.finished / "config.yaml", c.out / "config.yaml")
    (c.out / "status.json").write_text(json.dumps({"state": "running"}))
    return c.out


def _corrupt_status(c: Ctx) -> Path:
    run = c.copy_finished()
    (run / "summary.json").unlink()
    (run / "status.json").write_bytes(b"\xff\xfe{not json")
    return run


@dataclass
class Case:
    build: Callable[[Ctx], list[str]]
    expect: tuple[str, ...]  # substrings of stderr (rc 2) or of a warning (rc 0)
    rc: int = 2
    # 'absent': the output folder must not look finished; 'kept': it held a finished run before and must still
    # hold that same run; 'finished': the command succeeds and leaves a finished run
    out: str = "absent"


CASES = {
    # ---- data files --------------------------------------------------------------------------------------
    "missing-data-file": Case(
        lambda c: c.train(data=c.tmp / "nowhere.csv"),
        ("nowhere.csv", "data source not found")),
    "non-utf8-csv": Case(
        lambda c: c.train(data=c.file("latin1.csv", b"text,label\nfine,World\ncaf\xe9 au lait,Sports\n")),
        ("latin1.csv", "line 3", "not UTF-8")),
    "empty-file": Case(
        lambda c: c.train(data=c.file("empty.csv", "")),
        ("empty.csv", "the file is empty")),
    "whitespace-only-file": Case(
        lambda c: c.train(data=c.file("blank.jsonl", "\n  \n\n")),
        ("blank.jsonl", "the file is empty")),
    "unterminated-quote": Case(
        lambda c: c.train(data=c.csv("quote.csv", ["text,label", "fine,World", '"never closed,Sports',
                                                   "more,Business"])),
        ("quote.csv", "line 3", "malformed CSV", "never closed")),
    "wrong-field-count": Case(
        lambda c: c.train(data=c.csv("fields.csv", ["text,label", "one,World", "two,Sports,extra"])),
        ("fields.csv", "line 3", "3 fields, expected 2")),
    "classic-wrong-field-count": Case(
        lambda c: c.train(data=c.csv("classic.csv", ['"1","title","body"', '"2","only two"'])),
        ("classic.csv", "line 2", "2 fields, expected 3 (label, title, description)")),
    "max-length-past-the-model": Case(  # the tiny tokenizer reads 64 tokens; texts that long would crash late
        lambda c: c.train(model={"max_length": 65}),
        ("model.max_length=65", "reads at most 64 tokens", "set model.max_length to 64 or less")),
    "misnamed-text-column": Case(
        lambda c: c.train(data=c.csv("cols.csv", ["sentence,label", "one,World", "two,Sports"])),
        ("cols.csv", "no text column 'text'", "'sentence'", "data.text_column")),
    "missing-label-column": Case(
        lambda c: c.train(data=c.csv("nolabel.csv", ["text,category", "one,World", "two,Sports"])),
        ("nolabel.csv", "no label column 'label'", "data.label_column")),
    "empty-text": Case(
        lambda c: c.train(data=c.csv("emptytext.csv", ["text,label", "one,World", '"   ",Sports'])),
        ("emptytext.csv", "line 3", "empty text")),
    "bad-json-line": Case(
        lambda c: c.train(data=c.file("bad.jsonl", '{"text": "a", "label": "World"}\n{"text": "b", \n')),
        ("bad.jsonl", "line 2", "not valid JSON")),
    "label-outside-label-names": Case(
        lambda c: c.train("--set", "data.label_names=[World,Sports,Business]"),
        ("good.csv", "label 'Tech' is not in the label set", "World, Sports, Business")),
    "single-class": Case(
        lambda c: c.train(data=c.csv("oneclass.csv", _label_rows("World"))),
        ("oneclass.csv", "a single class", "at least 2 classes")),
    "validation-larger-than-data": Case(
        lambda c: c.train("--set", "data.validation_size=10000"),
        ("good.csv", "data.validation_size=10000", "out of 40")),
    "pickle-refused": Case(
        lambda c: c.train(data=_pickled_columns(c)),
        ("data.pkl", "--allow-pickle")),
    "pickle-ragged-columns": Case(
        lambda c: c.train("--allow-pickle", data=_pickled_ragged(c)),
        ("ragged.pkl", "columns differ in length", "'text': 3", "'label': 2")),
    "pickle-allowed": Case(
        lambda c: c.train("--allow-pickle", data=_pickled_columns(c)),
        ("unpickling", "data.pkl"), rc=0, out="finished"),
    # ---- adapters and budget -----------------------------------------------------------------------------
    "unknown-target-module": Case(
        lambda c: c.train("--set", "adapter.target_modules=[query,qkv_proj]"),
        ("adapter.target_modules", "'qkv_proj'", "roles: query", "attention.self.query", "intermediate.dense")),
    "role-the-family-lacks": Case(
        lambda c: c.train("--set", "adapter.target_modules=[qkv]"),
        ("adapter.target_modules", "no fused query/key/value projection", "roles it offers: query, key, value")),
    "layers-out-of-range": Case(
        lambda c: c.train("--set", "adapter.layers=[0,7]"),
        ("adapter.layers", "[7] out of range", "2 encoder layers")),
    "layers-unknown-spec": Case(
        lambda c: c.train("--set", "adapter.layers=bottom-half"),
        ("adapter.layers", "'bottom-half'", "'top-half'")),
    "layers-top-more-than-the-model": Case(
        lambda c: c.train("--set", "adapter.layers=top-3"),
        ("adapter.layers", "'top-3'", "3 layers", "has 2")),
    "rank-zero": Case(
        lambda c: c.train("--set", "adapter.r=0"),
        ("adapter.r", "greater than 0", "got 0")),
    "budget-exceeded": Case(
        lambda c: c.train("--set", "budget=10"),
        ("over the budget of 10", "lower adapter.r")),
    # ---- config ------------------------------------------------------------------------------------------
    "unknown-override-field": Case(
        lambda c: c.train("--set", "adapter.rank=4"),
        ("adapter.rank", "unknown field")),
    "unknown-config-file-field": Case(
        lambda c: c.train(optim={"learning_rate": 1e-3}),
        ("cfg.yaml", "optim.learning_rate", "unknown field")),
    "non-yaml-override": Case(
        lambda c: c.train("--set", "adapter.target_modules=[query"),
        ("adapter.target_modules=[query", "not valid YAML")),
    "config-not-yaml": Case(
        lambda c: ["train", "-c", str(c.file("cfg.yaml", "model:\n  name: [unclosed\ndata: {\n")),
                   "--output-dir", str(c.out)],
        ("cfg.yaml", "not valid YAML")),
    "config-not-a-mapping": Case(
        lambda c: ["train", "-c", str(c.file("cfg.yaml", "- just\n- a list\n")), "--output-dir", str(c.out)],
        ("cfg.yaml", "must hold a mapping")),
    "missing-config-file": Case(
        lambda c: ["train", "-c", str(c.tmp / "absent.yaml"), "--output-dir", str(c.out)],
        ("absent.yaml", "config file not found")),
    # ---- run directories ---------------------------------------------------------------------------------
    "output-dir-holds-finished-run": Case(
        lambda c: (c.copy_finished(), c.train())[1],
        ("holds a finished run", "--overwrite"), out="kept"),
    "output-dir-finished-run-overwrite": Case(
        lambda c: (c.copy_finished(), c.train("--overwrite"))[1],
        (), rc=0, out="finished"),
    "output-dir-is-a-file": Case(
        lambda c: (c.file("run", "not a folder"), c.train())[1],
        ("run", "exists and is not a folder")),
    "output-dir-foreign-files-overwrite": Case(
        lambda c: (c.out.mkdir(), (c.out / "thesis.tex").write_text("precious"), c.train("--overwrite"))[2],
        ("thesis.tex", "not a run's")),
    "evaluate-not-a-run-dir": Case(
        lambda c: (c.out.mkdir(), (c.out / "notes.txt").write_text("x"), ["evaluate", str(c.out)])[2],
        ("is not a run directory", "no config.yaml")),
    "evaluate-missing-run-dir": Case(
        lambda c: ["evaluate", str(c.tmp / "nothing-here")],
        ("run directory not found", "nothing-here")),
    "evaluate-unfinished-run": Case(
        lambda c: ["evaluate", str(_unfinished(c))],
        ("is not a finished run", "state: running", "--resume")),
    "evaluate-corrupt-status": Case(
        lambda c: ["evaluate", str(_corrupt_status(c))],
        ("is not a finished run", "status.json")),
    "evaluate-unknown-data-override": Case(
        lambda c: ["evaluate", str(c.copy_finished()), "--set", "data.text_colum=body"],
        ("data.text_colum", "unknown field"), out="kept"),
    "evaluate-bad-data-override-value": Case(
        lambda c: ["evaluate", str(c.copy_finished()), "--set", "data.validation_size=lots"],
        ("data.validation_size", "lots"), out="kept"),
    # ---- predict -----------------------------------------------------------------------------------------
    "predict-repeated-id": Case(
        lambda c: ["predict", str(c.copy_finished()), "--out", str(c.tmp / "sub.csv"),
                   "--data", str(c.csv("test.csv", ["ID,text", "7,one text", "8,two", "7,three"]))],
        ("test.csv", "line 4", "id '7'", "repeats the one at line 2"), out="kept"),
    "predict-empty-id": Case(
        lambda c: ["predict", str(c.copy_finished()), "--out", str(c.tmp / "sub.csv"),
                   "--data", str(c.csv("test.csv", ["ID,text", "7,one text", ",two"]))],
        ("test.csv", "line 3", "empty id"), out="kept"),
    "predict-unknown-data-override": Case(
        lambda c: ["predict", str(c.copy_finished()), "--out", str(c.tmp / "sub.csv"),
                   "--data", str(c.csv("test.csv", ["ID,text", "7,one text"])), "--set", "data.text_colum=body"],
        ("data.text_colum", "unknown field"), out="kept"),
    "predict-bad-data-override-value": Case(
        lambda c: ["predict", str(c.copy_finished()), "--out", str(c.tmp / "sub.csv"),
                   "--data", str(c.csv("test.csv", ["ID,text", "7,one text"])), "--set", "data.validation_size=abc"],
        ("data.validation_size", "abc"), out="kept"),
}


def _looks_finished(folder: Path) -> bool:
    if not folder.is_dir():
        return False
    if any(folder.rglob("summary.json")):
        return True
    status = folder / "status.json"
    return status.is_file() and '"finished"' in status.read_text(errors="replace")


def _snapshot(folder: Path) -> dict[str, bytes]:
    if not folder.is_dir():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, tmp_path, tiny_roberta, finished_run, capsys):
    case = CASES[name]
    c = Ctx(tmp_path, tiny_roberta, finished_run)
    argv = case.build(c)
    before = _snapshot(c.out)
    capsys.readouterr()  # drop what setting up printed
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc = main(argv)
    out, err = capsys.readouterr()
    shown = out + err + "".join(str(w.message) for w in caught)

    assert "Traceback" not in shown
    assert rc == case.rc, f"{argv}\nstdout: {out}\nstderr: {err}"
    if case.rc == 2:
        assert err.startswith("error: "), err
        for part in case.expect:
            assert part in err, f"{part!r} not in the message:\n{err}"
    else:
        assert "error:" not in err
        for part in case.expect:
            assert any(part in str(w.message) for w in caught), f"no warning mentions {part!r}"

    if case.out == "absent":
        assert not _looks_finished(c.out), sorted(p.name for p in c.out.iterdir())
    elif case.out == "kept":
        assert _snapshot(c.out) == before, "the finished run was modified"
    else:
        status = json.loads((c.out / "status.json").read_text())
        assert status["state"] == "finished" and (c.out / "summary.json").is_file()
        assert _snapshot(c.out) != before
