"""Scaling a trained adapter's update back towards the pretrained model (WiSE-FT's interpolation, #19).

    python benchmarks/wise.py RUN --data NAME=FILE [--data NAME=FILE ...] [--scales 0 0.25 0.5 0.75 1]
                              [--json PATH]

WiSE-FT (Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022) averages the fine-tuned weights
with the pretrained ones and reports large gains under distribution shift at little cost in distribution. For a
LoRA adapter that average is the update scaled: W + s x (alpha / r) B A, s in [0, 1] (s scales the product once;
scaling A and B both would give s^2). The head is kept as trained. Nothing trains and nothing is added: each scale
is the run loaded with `lorabudget.load(RUN, adapter_scale=S)` (its LoRA layers scaled, then merged), and scored
on every `--data` set (labelled; the first is the in-distribution yardstick). A table of accuracy per scale and set is
printed and, with --json, written.

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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--data", action="append", required=True, metavar="NAME=FILE", help="a labelled set to score")
    ap.add_argument("--scales", nargs="+", type=float, default=[0.0, 0.25, 0.5, 0.75, 1.0])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    from lorabudget import load
    from lorabudget.config import DataConfig
    from lorabudget.data import evaluation_examples

    sets = dict(item.split("=", 1) for item in args.data)
    results = {"run": args.run, "scales": {}}
    tokenized = None
    for scale in args.scales:
        started = time.perf_counter()
        clf = load(args.run, adapter_scale=scale)  # the update scaled, then merged, as `predict` does
        if tokenized is None:  # the same rows for every scale, coded in the run's label space
            cfg = DataConfig(**{**clf.config.data.model_dump(), "validation_source": []})
            tokenized = {}
            for name, source in sets.items():
                rows = evaluation_examples(cfg, source, clf.labels)
                tokenized[name] = (clf.tokenize(rows.texts, rows.labels), np.asarray(rows.labels))
        scores = {}
        for name, (data, labels) in tokenized.items():
            predicted = clf.logits(data, batch_size=clf.config.eval.batch_size).argmax(axis=1)
            scores[name] = float((predicted == labels).mean()) if len(labels) else None
        results["scales"][str(scale)] = scores
        cells = "  ".join(f"{name} {100 * v:6.2f}" for name, v in scores.items())
        print(f"scale {scale:5.2f}  {cells}  ({time.perf_counter() - started:.0f} s)", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
