"""`lorabudget evaluate`: score a finished run on its own validation split or on any data source."""

from __future__ import annotations

from pathlib import Path

from ..config import DataConfig, load_config, override_section
from ..data import evaluation_examples, load_source, split_train_validation, validation_hash
from ..errors import DataError, LorabudgetError
from ..metrics import classification_scores, format_report
from ..plots import plot_confusion_matrix
from ..rundir import atomic_write_json, open_finished, read_json
from .api import Classifier, joined_notes, still_running_note
from .shares import fit_share_match, parse_shares, wants_shares


def evaluation_rows(clf: Classifier, source: str | None, data_cfg: DataConfig):
    """The examples to score and a name for them. By default, the run's own validation rows: the same split,
    re-derived from the data, checked against the hash the run recorded, so training rows are never scored."""
    facts = read_json(clf.run.path / "split.json", "the run's record of its data is lost: pass --data")
    run_source = facts["source"]
    own = facts.get("validation_source")  # the run's own evaluation set, rather than a split of its data
    if source is None or source in (run_source, own):
        if own:
            rows = evaluation_examples(data_cfg, own, clf.labels)
            where, got = own, validation_hash(rows.ids)
        else:
            dataset = load_source(data_cfg, run_source, labels=clf.labels)
            split = split_train_validation(dataset.splits["train"], data_cfg, run_source)
            rows, where, got = split.validation, run_source, split.validation_hash
        if got != facts["validation_hash"]:
            raise DataError(f"{where} no longer yields the validation rows this run was scored on (hash "
                            f"{got} != {facts['validation_hash']}); the data changed")
        return rows, "validation"
    dataset = load_source(data_cfg, source, labels=clf.labels)
    name = "test" if "test" in dataset.splits else "train"
    examples = dataset.splits[name]
    if examples.labels is None:
        raise DataError(f"{source} has no label column {data_cfg.label_column!r}: evaluation needs labels "
                        "(use `lorabudget predict` for unlabelled data)")
    return examples, f"{Path(source).name or source}-{name}"


def evaluate(run_dir: str, source: str | None = None, out_dir: str | None = None,
             data_overrides: dict | None = None, progress: bool = True,
             adapter_scale: float | None = None, match_shares=None, match_rows: str | None = None,
             match_on: str | None = None) -> tuple[dict, Path]:
    """Score a run on `source` (default its own validation rows). Class shares are matched (serve.shares) when
    `match_shares` says so, or the run's data.target_shares does: fitted on the target's texts (`match_on`,
    default data.target_source), then applied to the scored rows that read unlike training, as `predict` would."""
    run = open_finished(run_dir, allow_running=True)
    # checked before the model loads: a mistyped --set fails at once
    data_cfg = override_section(load_config(run.config).data, data_overrides or {}, "data", "--set")
    target = match_on or data_cfg.target_source
    wanted, skipped = data_cfg.target_shares if match_shares is None else match_shares, None
    if wants_shares(wanted) and not target:
        if match_shares is not None:
            raise LorabudgetError("class shares are matched on the texts you will be graded on: pass --match-on "
                                  "FILE (unlabelled is enough) or set data.target_source")
        wanted, skipped = None, ("the run matches class shares (data.target_shares) on its target, and none is "
                                 "known here: scored without; pass --match-on FILE to score as predict would")
    clf = Classifier(run, adapter_scale=adapter_scale)
    shares = parse_shares(wanted, clf.class_names)
    examples, name = evaluation_rows(clf, source, data_cfg)
    data = clf.tokenize(examples.texts, examples.labels, progress=progress)
    logits = clf.logits(data, batch_size=clf.config.eval.batch_size, progress=progress, desc="evaluate")
    matched = None
    if shares is not None:
        rows = load_source(data_cfg, target, labels=clf.labels, require_labels=False)
        target_texts = rows.splits["test" if "test" in rows.splits else "train"].texts
        match = fit_share_match(clf, target_texts, shares, match_rows or data_cfg.target_share_rows,
                                progress=progress)
        flags = match.applies_to(examples.texts)
        logits = match.offset(logits, flags)
        matched = {**match.summary(clf.class_names), "scored_rows_matched": int(flags.sum())}
    scores = classification_scores(examples.labels, logits.argmax(axis=1), clf.class_names)
    scores["data"] = name
    if matched is not None:  # another decision rule: its scores go to their own folder
        scores["shares"] = matched
        name = f"{name}-shares"
    if clf.adapter_scale != 1.0:  # a scaled update is another model: its scores go to their own folder
        scores["adapter_scale"] = clf.adapter_scale
        name = f"{name}-scale{clf.adapter_scale:g}"
    if clf.checkpoint is not None:
        scores["checkpoint_step"] = clf.checkpoint.get("step")  # a run still being written: its best so far
    out = Path(out_dir) if out_dir else run.path / "eval" / name
    atomic_write_json(out / "metrics.json", scores)
    plot_confusion_matrix(scores["confusion_matrix"], clf.class_names, out / "confusion_matrix.png",
                          title=f"Confusion matrix ({name}, accuracy {scores['accuracy']:.4f})")
    # what `lorabudget evaluate` prints of a run still being written (the file keeps checkpoint_step)
    note = joined_notes(still_running_note(clf), skipped)
    return {**scores, "note": note}, out


__all__ = ["evaluate", "format_report"]
