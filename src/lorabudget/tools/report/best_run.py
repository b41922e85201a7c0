"""The report's best run: its one validation accuracy (the leaderboard's, as training measured it), and the
per-class scores and confusion matrix from re-scoring its saved adapter on the same validation rows.

Training keeps only accuracy, macro-F1 and loss of each evaluation, so the per-class table needs a re-score. That
re-score runs as `lorabudget evaluate` and `predict` do (the adapter merged into the weights, the config's
precision on this machine's device), while training scored the unmerged adapter under its own autocast, maybe on
another device and on cached frozen-layer states: rounding can move a prediction that sits on a class boundary.
Where the two count a different number of rows right, the page says so beside the figures, and which is which."""

from __future__ import annotations

from pathlib import Path

from ...errors import LorabudgetError
from .collect import Run
from .document import Figure, Heading, Table, Text


def _differences(best: Run) -> str:
    """How the re-score ran unlike training's evaluation, in words for the page: the merge always, then the
    precision and device where they differ, the cached frozen layers, several processes."""
    from ...config import load_config
    from ...runtime.precision import inference_device, resolve_precision

    s = best.summary
    why = ["the re-score merged the adapter into the weights, where training scored it unmerged"]
    try:
        cfg = load_config(best.path / "config.yaml")
        device = inference_device(cfg.model.device)
        precision, trained_on = resolve_precision(cfg.model.precision, device), str(s.get("device", "?"))
        if (precision, device.type) != (s.get("precision"), trained_on.split(":")[0]):  # cuda:0 is cuda
            why.append(f"it ran {precision} on {device}, training {s.get('precision', '?')} on {trained_on}")
    except (LorabudgetError, ValueError, OSError):
        why.append(f"training ran {s.get('precision', '?')} on {s.get('device', '?')}")
    if s.get("frozen_prefix_cached_layers"):
        why.append(f"training read its lowest {s['frozen_prefix_cached_layers']} layers' outputs from a cache")
    if (s.get("num_processes") or 1) > 1:
        why.append(f"training split the rows across {s['num_processes']} processes")
    return "; ".join(why)


def best_run_section(best: Run, out: Path) -> list:
    """The best run: the leaderboard's figure, and the re-score's per-class table and confusion matrix."""
    from ...plots import plot_confusion_matrix
    from ...serve.evaluate import evaluate

    measured, step = best.accuracy, best.summary.get("best", {}).get("step")
    at = f" at step {step}" if step is not None else ""
    headline = (f"{best.path}: validation accuracy {measured:.4f}, the leaderboard's figure (training's evaluation"
                f"{at}, the one whose adapter the run saved).")
    blocks: list = [Heading(f"Best run: {best.name}")]
    try:
        scores, folder = evaluate(str(best.path), None, str(out / "best-run"), progress=False)
    except LorabudgetError as exc:  # its data is not on this machine, say
        return blocks + [Text(headline), Text(f"Could not re-score {best.path} on its validation split for the "
                                              f"per-class scores: {exc}")]
    rows, rescored = scores["rows"], scores["accuracy"]
    gained = round(rescored * rows) - round(measured * rows)  # rows right in the re-score, less in training's
    if gained == 0:
        blocks.append(Text(f"{headline} Re-scoring the saved adapter on the same {rows:,} rows gives the same "
                           f"accuracy (macro-F1 {scores['macro_f1']:.4f}); the table and the confusion matrix "
                           "below are of that re-score."))
        title = f"Confusion matrix of {best.name} (validation, accuracy {rescored:.4f})"
        caption = f"Confusion matrix of {best.name} (validation split)"
    else:
        blocks.append(Text(
            f"{headline} The table and the confusion matrix below come from re-scoring the saved adapter on the same "
            f"{rows:,} rows, as `lorabudget evaluate` and `predict` run it, which gives {rescored:.4f} "
            f"({abs(gained):,} row{'s' if abs(gained) > 1 else ''} {'more' if gained > 0 else 'fewer'} right, "
            f"macro-F1 {scores['macro_f1']:.4f}). The two differ because {_differences(best)}: rounding moves "
            "predictions that sit on a class boundary. The leaderboard keeps training's figure, so that every run "
            "is ranked by the same measurement."))
        title = (f"Confusion matrix of {best.name}, re-scored (accuracy {rescored:.4f}; training measured "
                 f"{measured:.4f})")
        caption = (f"Confusion matrix of {best.name} (validation split), re-scored: {rescored:.4f}, against "
                   f"training's {measured:.4f} in the leaderboard (why: the text above)")
    rows_ = [[name, f"{s['precision']:.4f}", f"{s['recall']:.4f}", f"{s['f1']:.4f}", f"{s['support']:,}"]
             for name, s in scores["per_class"].items()]
    blocks.append(Table(["class", "precision", "recall", "F1", "support"], rows_, numeric=(1, 2, 3, 4)))
    path = plot_confusion_matrix(scores["confusion_matrix"], list(scores["per_class"]),
                                 folder / "confusion_matrix.png", title=title)
    return blocks + [Figure(path, caption)]
