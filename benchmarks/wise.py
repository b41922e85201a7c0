"""Scaling a trained adapter's update back towards the pretrained model (WiSE-FT's interpolation, #19).

    python benchmarks/wise.py RUN [RUN ...] --data NAME=FILE [--data NAME=FILE ...] [--scales 0 0.25 0.5 0.75 1]
                              [--json PATH]

WiSE-FT (Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022) averages the fine-tuned weights
with the pretrained ones and reports large gains under distribution shift at little cost in distribution. For a
LoRA adapter that average is the update scaled: W + s x (alpha / r) B A, s in [0, 1] (s scales the product once;
scaling A and B both would give s^2), LayerNorms trained in full interpolated alike. The head is kept as
trained. Nothing trains and nothing is added: each scale is the run loaded with `lorabudget.load(RUN,
adapter_scale=S)` (its LoRA layers scaled, then merged), and scored on every `--data` set (labelled; the first is
the in-distribution yardstick; `NAME=held_out` is each run's own validation split, so runs with different splits
can be scored in one call). A table of accuracy per scale and set is printed for each run and, with --json, kept.

On the course's target the labelled generated rows peak after one epoch while in-distribution accuracy keeps
rising (docs/shift.md): if a smaller update keeps what the early model had, s < 1 shows it here in minutes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HELD_OUT = "held_out"  # as in data.validation_source: the run's own validation split


def score_run(run: str, sets: dict[str, str], scales: list[float]) -> dict[str, dict]:
    """Accuracy on each labelled set (`held_out`: the run's own validation rows, re-derived and checked against
    the hash it recorded) at each scale: {scale: {set: accuracy}}."""
    from lorabudget import load
    from lorabudget.config import DataConfig
    from lorabudget.data import evaluation_examples
    from lorabudget.serve.evaluate import evaluation_rows

    results, tokenized = {}, None
    for scale in scales:
        started = time.perf_counter()
        clf = load(run, adapter_scale=scale)  # the update scaled, then merged, as `predict` does
        if tokenized is None:  # the same rows for every scale, coded in the run's label space
            cfg = DataConfig(**{**clf.config.data.model_dump(), "validation_source": []})
            tokenized = {}
            for name, source in sets.items():
                rows = (evaluation_rows(clf, None, clf.config.data)[0] if source == HELD_OUT
                        else evaluation_examples(cfg, source, clf.labels))
                tokenized[name] = (clf.tokenize(rows.texts, rows.labels), np.asarray(rows.labels))
        scores = {}
        for name, (data, labels) in tokenized.items():
            predicted = clf.logits(data, batch_size=clf.config.eval.batch_size).argmax(axis=1)
            scores[name] = float((predicted == labels).mean()) if len(labels) else None
        results[str(scale)] = scores
        cells = "  ".join(f"{name} {100 * v:6.2f}" for name, v in scores.items())
        print(f"scale {scale:5.2f}  {cells}  ({time.perf_counter() - started:.0f} s)", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", metavar="RUN")
    ap.add_argument("--data", action="append", required=True, metavar="NAME=FILE",
                    help=f"a labelled set to score; FILE {HELD_OUT!r}: each run's own validation split")
    ap.add_argument("--scales", nargs="+", type=float, default=[0.0, 0.25, 0.5, 0.75, 1.0])
    ap.add_argument("--json", type=Path, help="keep the figures here, under 'runs' by run folder; an existing "
                    "file keeps its other runs (a run scored again replaces its entry)")
    args = ap.parse_args(argv)
    sets = dict(item.split("=", 1) for item in args.data)
    kept = json.loads(args.json.read_text()) if args.json and args.json.is_file() else {}
    kept.setdefault("runs", {})
    for run in args.runs:
        if len(args.runs) > 1:
            print(f"== {run}", flush=True)
        kept["runs"][run] = score_run(run, sets, args.scales)
        if args.json:  # after each run: a stopped call keeps what it scored
            args.json.parent.mkdir(parents=True, exist_ok=True)
            tmp = args.json.with_name(args.json.name + ".tmp")
            tmp.write_text(json.dumps(kept, indent=2) + "\n")
            tmp.replace(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
