"""Where a training step's time goes (#23): the recommended recipe's step under torch.profiler, by kind of work.

    python benchmarks/profile_step.py [--case minilm-recommended] [--steps 12] [--warmup 4] [--threads 1]
                                      [--json benchmarks/results/profile_step.json] [--set key=value ...]

The case and its settings are benchmarks/speed.py's (the same model, adapter, batch, data and lorabudget speed
defaults), so the profile explains that benchmark's figures. The run trains `--warmup` steps unprofiled, then
`--steps` under the profiler; each aten operator's own (self) CPU time is put into one of a few kinds:

  matmul     the encoder's and LoRA's matrix products (mm, addmm, bmm, linear's kernels)
  attention  the fused attention kernel (scaled_dot_product_attention's own time: its matmuls and softmax)
  dropout    mask drawing and masking (lorabudget's FastDropout, torch's bernoulli / native_dropout)
  norm       layer norms, forward and backward
  activation GELU and its gradient
  softmax    softmaxes outside the fused attention (the loss)
  cast       dtype conversions and copies (to, _to_copy, copy_)
  elementwise adds, muls, divs and the like (residuals, scaling, optimiser arithmetic)
  memory     allocation, zeroing, views that copy (empty, zero_, fill_, cat, contiguous)
  other      everything else (embedding, indexing, reductions, ...)

and the table shows each kind's share of the profiled time, so that work can be aimed at the largest non-matmul
kinds. The profiler adds overhead per operator, so the shares of many small operators are overstated a little;
the total step time printed beside them is that of the profiled steps. Run it on idle cores (other work skews
the shares of memory-bound kinds).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

KINDS = {  # operator name fragments, checked in this order (the first match wins)
    "attention": ("scaled_dot_product", "_flash_attention", "_efficient_attention", "attention"),
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "mkldnn_", "aten::baddbmm"),
    "dropout": ("dropout", "bernoulli", "random_raw", "keep_mask"),
    "norm": ("layer_norm",),
    "activation": ("gelu", "tanh", "relu", "silu"),
    "softmax": ("softmax", "nll_loss", "cross_entropy"),
    "cast": ("aten::to", "aten::_to_copy", "aten::copy_", "aten::type_as"),
    "memory": ("aten::empty", "aten::zero", "aten::fill_", "aten::cat", "aten::contiguous", "aten::clone",
               "aten::zeros", "aten::ones", "aten::full", "aten::resize_", "aten::new_"),
    "elementwise": ("aten::add", "aten::mul", "aten::div", "aten::sub", "aten::addcmul", "aten::addcdiv",
                    "aten::sqrt", "aten::lerp", "aten::pow", "aten::neg", "aten::where", "aten::ge",
                    "aten::_foreach", "aten::masked_fill"),
}


def kind_of(name: str) -> str:
    lowered = name.lower()
    for kind, fragments in KINDS.items():
        if any(fragment.lower() in lowered for fragment in fragments):
            return kind
    return "other"


def profile(case: str, steps: int, warmup: int, overrides: list[str]) -> dict:
    """Train `warmup` + `steps` steps of `case`, the last `steps` under the profiler; self CPU time per kind."""
    import speed
    import torch
    from torch.profiler import ProfilerActivity, schedule
    from torch.profiler import profile as torch_profile

    from lorabudget.config.loading import apply_overrides, build_config
    from lorabudget.rundir import RunDir
    from lorabudget.train.recipe import TrainingRecipe

    s = speed.case_settings(case, quick=True)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        path = speed.settings_model_path(s, workdir)
        texts, labels = speed.load_texts((warmup + steps) * s["batch_size"] + 64, source=speed.data_source(s))
        data = workdir / "rows.csv"
        import csv

        with open(data, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows(zip(texts, labels))
        cfg = speed.lorabudget_config(path, data, s, workdir / "run", validation_rows=64,
                                      optim={"lr": s["lr"], "max_steps": warmup + steps}, eval_every=10**9)
        if overrides:
            cfg = build_config(apply_overrides(cfg.model_dump(mode="json"), overrides))
        run = RunDir(cfg.output_dir)
        run.check_new(overwrite=True)
        recipe = TrainingRecipe(cfg, run)
        recipe.setup()
        sched = schedule(wait=0, warmup=warmup, active=steps, repeat=1)
        with torch_profile(activities=[ProfilerActivity.CPU], schedule=sched) as prof:
            # the profiler's clock ticks once per optimiser step (accelerate wraps the torch optimiser)
            recipe.optimizer.optimizer.register_step_post_hook(lambda *_: prof.step())
            started = time.perf_counter()
            summary = recipe.train()
            wall = time.perf_counter() - started
        by_kind: dict[str, float] = defaultdict(float)
        by_op: dict[str, float] = defaultdict(float)
        for event in prof.key_averages():
            by_kind[kind_of(event.key)] += event.self_cpu_time_total / 1e6
            by_op[event.key] += event.self_cpu_time_total / 1e6
        total = sum(by_kind.values())
        top = sorted(by_op.items(), key=lambda kv: -kv[1])[:15]
        return {"case": case, "steps": steps, "batch_size": s["batch_size"], "precision": summary["precision"],
                "threads": torch.get_num_threads(), "profiled_seconds": total, "run_wall_seconds": wall,
                "kinds": {k: {"seconds": v, "share": v / total} for k, v in
                          sorted(by_kind.items(), key=lambda kv: -kv[1])},
                "top_operators": [{"name": k, "seconds": v, "share": v / total} for k, v in top],
                "bf16_kind": speed.bf16_kind()}


def print_table(result: dict) -> None:
    per_step = result["profiled_seconds"] / result["steps"]
    print(f"\n{result['case']}: {result['steps']} profiled steps of batch {result['batch_size']}, "
          f"{result['precision']}, {result['threads']} thread(s), bf16 {result['bf16_kind']}; "
          f"{per_step * 1000:.0f} ms of operator time per step\n")
    print("| kind | ms per step | share |\n| --- | ---: | ---: |")
    for kind, v in result["kinds"].items():
        print(f"| {kind} | {v['seconds'] / result['steps'] * 1000:.1f} | {100 * v['share']:.1f}% |")
    print("\n| operator (self time) | ms per step | share |\n| --- | ---: | ---: |")
    for op in result["top_operators"]:
        print(f"| {op['name']} | {op['seconds'] / result['steps'] * 1000:.1f} | {100 * op['share']:.1f}% |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", default="minilm-recommended")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "profile_step.json")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    result = profile(args.case, args.steps, args.warmup, args.set)
    print_table(result)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
