"""The report's view of shifted targets: each run's accuracy on its own evaluation sets beside its validation
accuracy (data.validation_source), and what `lorabudget shift` found (RUN/shift/<target>/shift.json)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .collect import Run
from .document import Figure, Heading, Table, Text
from .figures import slug


def evaluation_sets_section(runs: list[Run]) -> list:
    """In-distribution and shifted accuracy side by side, at each run's shipped (best) evaluation."""
    names = sorted({name for r in runs for name in r.summary.get("best", {}).get("sets", {})})
    if not names:
        return []
    rows = []
    for r in sorted(runs, key=lambda r: -r.accuracy):
        sets = r.summary["best"].get("sets", {})
        rows.append([r.name, f"{r.accuracy:.4f}",
                     *[f"{sets[n]['accuracy']:.4f}" if n in sets else "" for n in names]])
    return [Heading("Accuracy on each evaluation set"),
            Text("At the evaluation whose adapter each run shipped (chosen on the first set, validation). The other "
                 "columns are the run's further evaluation sets (data.validation_source): a target-like sample "
                 "scored beside the in-distribution one."),
            Table(["run", "validation", *names], rows, numeric=tuple(range(1, len(names) + 2)))]


def shift_section(runs: list[Run], figures: Path) -> list:
    """What `lorabudget shift` found for the runs that were diagnosed: a table, then each picture."""
    found = [(r, p) for r in runs for p in sorted((r.path / "shift").glob("*/shift.json"))]
    if not found:
        return []
    rows, pictures = [], []
    for run, path in found:
        try:
            s = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # a damaged diagnosis is left out; the run itself is reported
        d, m, v = s["domain"], s["model"], s["vocabulary"]["target"]
        words = s.get("domain_words")  # diagnoses before the word classifier have none
        rows.append([run.name, Path(s["target"]).name, f"{d['auc']:.2f}", f"{d['unlike_share']:.0%}",
                     f"{words['auc']:.2f}, {words['unlike_share']:.0%}" if words else "-",
                     f"{v['unseen']:.1%}", f"{m['validation']['mean_confidence']:.2f}",
                     f"{m['target']['mean_confidence']:.2f}", s["verdict"].split(";")[0]])
        if (path.parent / "shift.png").is_file():  # copied beside the report's own figures: the page is portable
            copy = figures / f"shift-{slug(run.name)}-{slug(path.parent.name)}.png"
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path.parent / "shift.png", copy)
            pictures.append(Figure(copy, f"{run.name} against {Path(s['target']).name}: {s['verdict']}"))
    if not rows:
        return []
    return [Heading("Shift of the target"),
            Text("From `lorabudget shift RUN --target FILE`: a domain classifier on the frozen encoder's features "
                 "(AUC, and the share of target rows scoring above 99% of training rows), the same for one on "
                 "words, the share of target words never seen in train, and the model's mean confidence on "
                 "validation and on the target."),
            Table(["run", "target", "AUC", "unlike train", "words: AUC, unlike", "unseen words",
                   "confidence (val)", "confidence (target)", "verdict"], rows, numeric=(2, 3, 4, 5, 6, 7)),
            *pictures]
