"""Batch prediction into Kaggle-style submission files (`ID,Label`, optionally with class probabilities)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import torch

from ..config import load_config, override_section
from ..data import load_source
from ..errors import DataError, LorabudgetError
from ..rundir import atomic_write_text, open_finished, read_json
from ..runtime.priors import adapt_priors
from .api import Classifier, joined_notes, still_running_note
from .shares import fit_share_match, parse_shares, wants_shares

LABEL_FORMATS = ("id", "name", "source")


def train_priors(run) -> np.ndarray:
    """The class shares the run trained under (split.json), for prior adaptation."""
    facts = read_json(run.path / "split.json", "the run's record of its data is lost")
    if "train_class_counts" not in facts:
        raise LorabudgetError(f"{run.path} was trained by an older lorabudget that did not record its class "
                              "shares (split.json: train_class_counts); train it again to use --adapt-priors")
    return np.asarray(facts["train_class_counts"], dtype=np.float64)


def predict_file(run_dir: str, source: str, out: str, *, label_format: str = "id", proba: bool = False,
                 data_overrides: dict | None = None, progress: bool = True, adapt: bool = False,
                 adapter_scale: float | None = None, match_shares=None, match_rows: str | None = None) -> dict:
    """Write `ID,Label` rows (and class probabilities with `proba`) for every row of `source`. With `adapt`, the
    probabilities are re-weighted by the target's class shares, estimated by EM (serve.priors). With
    `match_shares` (default: the run's data.target_shares; 'none': off), the class shares on the rows being
    predicted (those unlike training, or all: `match_rows`, default data.target_share_rows) are matched to the
    given ones (serve.shares)."""
    if label_format not in LABEL_FORMATS:
        raise LorabudgetError(f"--label-format must be one of {', '.join(LABEL_FORMATS)}, not {label_format!r}")
    run = open_finished(run_dir, allow_running=True)
    # checked before the model loads, as a config file is: a mistyped --set fails at once
    data_cfg = override_section(load_config(run.config).data, data_overrides or {}, "data", "--set")
    wanted = data_cfg.target_shares if match_shares is None else match_shares
    if adapt and wants_shares(wanted):
        raise LorabudgetError("--adapt-priors estimates the target's class shares and --match-shares (or the run's "
                              "data.target_shares) states them: use one (--match-shares none turns the run's off)")
    clf = Classifier(run, adapter_scale=adapter_scale)
    shares = parse_shares(wanted, clf.class_names)
    dataset = load_source(data_cfg, source, labels=clf.labels, require_labels=False)
    split = "test" if "test" in dataset.splits else "train"
    examples = dataset.splits[split]
    logits = clf.logits(clf.tokenize(examples.texts, progress=progress), batch_size=clf.config.eval.batch_size,
                        progress=progress)
    matched = skipped = None
    if shares is not None:
        try:
            match = fit_share_match(clf, examples.texts, shares, match_rows or data_cfg.target_share_rows,
                                    target_logits=logits)
        except DataError as err:
            if match_shares is not None:  # asked for on the command line: say why it cannot be done
                raise
            # the run's own data.target_shares (a preset's default) on rows that do not call for it
            match, skipped = None, f"class shares not matched (the run's data.target_shares): {err}"
        if match is not None:
            logits = match.offset(logits, match.target_flags)  # the rows predicted are the target
            matched = match.summary(clf.class_names)
    probs = torch.softmax(torch.from_numpy(logits).double(), dim=-1).numpy()
    priors = None
    if adapt:
        trained_under = train_priors(run)
        probs, estimate = adapt_priors(probs, trained_under)
        priors = {"classes": clf.class_names, "estimated": estimate.tolist(),
                  "train": (trained_under / trained_under.sum()).tolist()}
    preds = probs.argmax(axis=1)
    names = clf.class_names
    codings = {"id": [str(i) for i in range(len(names))], "name": names, "source": clf.labels.source_values}
    coding = codings[label_format]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    header = ["ID", "Label"] + ([f"p_{n}" for n in names] if proba else [])
    w.writerow(header)
    for i, (row_id, p) in enumerate(zip(examples.ids, preds)):
        row = [row_id, coding[p]]
        if proba:
            row += [f"{x:.6f}" for x in probs[i]]
        w.writerow(row)
    atomic_write_text(Path(out), buf.getvalue())
    note = joined_notes(still_running_note(clf), skipped)
    result = {"rows": len(examples), "split": split, "out": str(out), "note": note,
              "counts": {names[k]: int(v) for k, v in zip(*np.unique(preds, return_counts=True))}}
    if priors is not None:
        result["priors"] = priors
    if matched is not None:
        result["shares"] = matched
    if examples.labels is not None:
        result["accuracy"] = float((preds == np.asarray(examples.labels)).mean())
    return result
