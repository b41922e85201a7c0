"""Batch prediction into Kaggle-style submission files, and export of a run as a portable model."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import numpy as np
import torch

from .api import Classifier
from .data import load_source
from .errors import LorabudgetError, RunDirError
from .rundir import atomic_write_text, open_finished, replace_dir

LABEL_FORMATS = ("id", "name", "source")


def predict_file(run_dir: str, source: str, out: str, *, label_format: str = "id", proba: bool = False,
                 data_overrides: dict | None = None, progress: bool = True) -> dict:
    """Write `ID,Label` rows (and class probabilities with `proba`) for every row of `source`."""
    if label_format not in LABEL_FORMATS:
        raise LorabudgetError(f"--label-format must be one of {', '.join(LABEL_FORMATS)}, not {label_format!r}")
    clf = Classifier(open_finished(run_dir))
    data_cfg = clf.config.data.model_copy(update=data_overrides or {})
    dataset = load_source(data_cfg, source, labels=clf.labels, require_labels=False)
    split = "test" if "test" in dataset.splits else "train"
    examples = dataset.splits[split]
    logits = clf.logits(clf.tokenize(examples.texts, progress=progress), batch_size=clf.config.eval.batch_size,
                        progress=progress)
    preds = logits.argmax(axis=1)
    names = clf.class_names
    codings = {"id": [str(i) for i in range(len(names))], "name": names, "source": clf.labels.source_values}
    coding = codings[label_format]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    header = ["ID", "Label"] + ([f"p_{n}" for n in names] if proba else [])
    w.writerow(header)
    probs = torch.softmax(torch.from_numpy(logits), dim=-1).numpy() if proba else None
    for i, (row_id, p) in enumerate(zip(examples.ids, preds)):
        row = [row_id, coding[p]]
        if probs is not None:
            row += [f"{x:.6f}" for x in probs[i]]
        w.writerow(row)
    atomic_write_text(Path(out), buf.getvalue())
    result = {"rows": len(examples), "split": split, "out": str(out),
              "counts": {names[k]: int(v) for k, v in zip(*np.unique(preds, return_counts=True))}}
    if examples.labels is not None:
        result["accuracy"] = float((preds == np.asarray(examples.labels)).mean())
    return result


def export_adapter(run_dir: str, out: str) -> Path:
    """The PEFT adapter alone (head weights included), as the run saved it."""
    run = open_finished(run_dir)
    target = Path(out)
    tmp = target.with_name(target.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(run.adapter, tmp)
    replace_dir(tmp, target)
    return target


_MODELING_HEADER = '''"""A {family} classifier with lorabudget's {head!r} head, which the stock transformers
classes cannot express. Written by `lorabudget export --merged --custom-code`. Loading this model runs this file:

    AutoModelForSequenceClassification.from_pretrained(DIR, trust_remote_code=True)
"""

import torch
from torch import nn
from transformers import {base}


'''

_MODELING_CLASS = '''


class {name}({base}):
    def __init__(self, config):
        super().__init__(config)
        head = config.lorabudget_head
        install_custom_head(self, head["family"], head["type"], head["rank"])
'''


def _modeling_source(family: str, head: str, base: str, name: str) -> str:
    """The head classes and their installer, copied from lorabudget.heads: one definition, not a second copy."""
    import inspect

    from . import heads

    parts = [inspect.getsource(obj) for obj in (heads.FirstTokenLinear, heads.LowRankDense,
                                                heads.FirstTokenLowRank, heads.LowRankPooler, heads.FirstToken,
                                                heads.install_custom_head)]
    return (_MODELING_HEADER.format(family=family, head=head, base=base) + "\n\n".join(parts)
            + _MODELING_CLASS.format(name=name, base=base))


def export_merged(run_dir: str, out: str, *, custom_code: bool = False) -> Path:
    """A plain transformers model: adapters merged into the weights, head and tokenizer included. A head the
    stock classes cannot express needs `custom_code`: the model then carries its own modeling file."""
    from .heads import CUSTOM_HEADS, model_family

    run = open_finished(run_dir)
    clf = Classifier(run, device="cpu", precision="fp32")
    head = clf.config.head
    if head.type in CUSTOM_HEADS and not custom_code:
        raise RunDirError(
            f"head.type={head.type!r} has no counterpart in {type(clf.model).__name__}, so the run cannot become "
            "a plain transformers model. Either export the adapter (--adapter DIR) and load it with "
            "lorabudget.load(RUN), or add --custom-code for a model that carries its own modeling code (it then "
            "loads only with trust_remote_code=True, which runs that code)")
    target = Path(out)
    tmp = target.with_name(target.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model = clf.model.to(torch.float32)
    model.config.id2label = dict(enumerate(clf.class_names))
    model.config.label2id = {n: i for i, n in enumerate(clf.class_names)}
    custom = head.type in CUSTOM_HEADS
    if custom:
        base = type(model).__name__
        name = f"Lorabudget{base}"
        model.config.lorabudget_head = {"family": model_family(model.config), "type": head.type, "rank": head.rank}
        model.config.auto_map = {"AutoModelForSequenceClassification": f"modeling_lorabudget.{name}"}
        model.config.architectures = [name]
    model.save_pretrained(str(tmp), safe_serialization=True)
    if custom:
        source = _modeling_source(model.config.lorabudget_head["family"], head.type, base, name)
        (tmp / "modeling_lorabudget.py").write_text(source)
    clf.tokenizer.save_pretrained(str(tmp))
    replace_dir(tmp, target)
    return target
