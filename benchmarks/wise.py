"""Scaling a trained adapter's update back towards the pretrained model (WiSE-FT's interpolation, #19).

    python benchmarks/wise.py RUN --data NAME=FILE [--data NAME=FILE ...] [--scales 0 0.25 0.5 0.75 1]
                              [--json PATH]

WiSE-FT (Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022) averages the fine-tuned weights
with the pretrained ones and reports large gains under distribution shift at little cost in distribution. For a
LoRA adapter that average is the update scaled: W + s x (alpha / r) B A, s in [0, 1] (s scales the product once;
scaling A and B both would give s^2). The head is kept as trained. Nothing trains and nothing is added: each scale
is the run's adapter loaded again, its LoRA layers scaled (peft's `scale_layer`), merged, and scored on every
`--data` set (labelled; the first is the in-distribution yardstick). A table of accuracy per scale and set is
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


def scaled_classifier(run_dir: str, scale: float):
    """The run's classifier with its LoRA update scaled by `scale`, merged as inference merges it."""
    from peft.tuners.lora import LoraLayer

    from lorabudget.model.adapters import merge_into_base
    from lorabudget.rundir import open_finished
    from lorabudget.serve.api import Classifier, load_peft_model

    clf = Classifier(open_finished(run_dir))
    peft_model = load_peft_model(clf.config, clf.labels, clf.run.adapter)
    layers = [m for m in peft_model.modules() if isinstance(m, LoraLayer)]
    if not layers:
        raise SystemExit(f"{run_dir}: its adapter has no LoRA layers to scale")
    for layer in layers:
        layer.scale_layer(scale)
    clf.model = merge_into_base(peft_model).eval().to(clf.device)
    return clf


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--data", action="append", required=True, metavar="NAME=FILE", help="a labelled set to score")
    ap.add_argument("--scales", nargs="+", type=float, default=[0.0, 0.25, 0.5, 0.75, 1.0])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    from lorabudget.config import DataConfig
    from lorabudget.data import evaluation_examples

    sets = dict(item.split("=", 1) for item in args.data)
    results = {"run": args.run, "scales": {}}
    tokenized = None
    for scale in args.scales:
        started = time.perf_counter()
        clf = scaled_classifier(args.run, scale)
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
