"""`lorabudget evaluate`: score a finished run on its own validation split or on any data source."""

from __future__ import annotations

from pathlib import Path

from ..config import DataConfig, load_config, override_section
from ..data import evaluation_examples, load_source, split_train_validation, validation_hash
from ..errors import DataError
from ..metrics import classification_scores, format_report
from ..plots import plot_confusion_matrix
from ..rundir import atomic_write_json, open_finished, read_json
from .api import Classifier, still_running_note


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
             adapter_scale: float | None = None) -> tuple[dict, Path]:
    run = open_finished(run_dir, allow_running=True)
    # checked before the model loads: a mistyped --set fails at once
    data_cfg = override_section(load_config(run.config).data, data_overrides or {}, "data", "--set")
    clf = Classifier(run, adapter_scale=adapter_scale)
    examples, name = evaluation_rows(clf, source, data_cfg)
    data = clf.tokenize(examples.texts, examples.labels, progress=progress)
    preds = clf.logits(data, batch_size=clf.config.eval.batch_size, progress=progress, desc="evaluate").argmax(axis=1)
    scores = classification_scores(examples.labels, preds, clf.class_names)
    scores["data"] = name
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
    return {**scores, "note": still_running_note(clf)}, out


__all__ = ["evaluate", "format_report"]
