"""What dropout costs on this CPU, and what `speed.fast_dropout` saves.

    python benchmarks/dropout.py [--threads 1] [--json PATH]

Two measurements, each alternating the two variants in one process so machine noise hits both alike:
  masks   ns per element of torch's dropout against FastDropout (forward, and forward + backward), on a
          1,600 x 384 tensor (batch 32 x 50 tokens x MiniLM's hidden size), beside a 384 x 384 matmul of it
  steps   seconds per training step (forward + backward, batch 32 x 50 tokens) of the packaged MiniLM with
          its adapters, for LoRA r=4 on all six linear types of every layer (the study's 300-step winner) and
          for LoRA on q,v r=8,
          with torch's dropout modules, with FastDropout swapped in (what training does on CPUs), and with
          every dropout probability set to 0 (the floor: what all dropout costs, attention's included, which
          runs inside SDPA and is not swapped)
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {"all six, r=4, every layer": ROOT / "configs" / "recipes" / "explore-all-r4-lr2e-3.yaml",
           "q,v r=8": ROOT / "configs" / "recipes" / "published-qv-r8.yaml"}


def best_time(fn, repeats: int, inner: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(inner):
            fn()
        best = min(best, (time.perf_counter() - t) / inner)
    return best


def measure_masks(repeats: int) -> dict:
    import torch

    from lorabudget.runtime.fastdropout import FastDropout

    x = torch.randn(1600, 384, requires_grad=True)
    w = torch.randn(384, 384)
    n = x.numel()
    torch_dropout = torch.nn.Dropout(0.1).train()
    fast = FastDropout(0.1).train()

    def fwd_bwd(module):
        return lambda: module(x).sum().backward()

    out = {}
    for name, module in (("torch", torch_dropout), ("fast", fast)):
        with torch.no_grad():
            out[f"{name}_forward_ns"] = best_time(lambda m=module: m(x), repeats, 20) * 1e9 / n
        out[f"{name}_forward_backward_ns"] = best_time(fwd_bwd(module), repeats, 20) * 1e9 / n
    with torch.no_grad():
        out["matmul_384_ns"] = best_time(lambda: x @ w, repeats, 20) * 1e9 / n
    return out


def measure_steps(repeats: int) -> dict:
    import torch

    from lorabudget.config import load_config
    from lorabudget.data import LabelSpace
    from lorabudget.model.build import build_adapted_model
    from lorabudget.runtime.fastdropout import use_fast_dropout

    names = ["World", "Sports", "Business", "Sci/Tech"]
    out = {}
    for label, path in CONFIGS.items():
        torch.manual_seed(0)
        plain = build_adapted_model(load_config(path), LabelSpace(names, names)).model.train()
        fast = copy.deepcopy(plain)
        swapped = use_fast_dropout(fast)
        no_dropout = copy.deepcopy(plain)
        for module in no_dropout.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0  # attention reads its module's p and passes it to SDPA
        ids = torch.randint(1000, 20000, (32, 50))
        labels = torch.randint(0, 4, (32,))

        def step(model, ids=ids, labels=labels):
            def run():
                model.zero_grad(set_to_none=True)  # as a training step does
                logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
                torch.nn.functional.cross_entropy(logits, labels).backward()
            return run

        variants = {"torch": plain, "fast": fast, "none": no_dropout}
        times = dict.fromkeys(variants, float("inf"))
        for _ in range(repeats):  # alternate, so all see the same machine
            for name, model in variants.items():
                times[name] = min(times[name], best_time(step(model), 1, 3))
        out[label] = {"modules_swapped": swapped, "torch_dropout_s": times["torch"], "fast_dropout_s": times["fast"],
                      "no_dropout_s": times["none"], "speedup": times["torch"] / times["fast"],
                      "dropout_cost_removed": (times["torch"] - times["fast"]) / (times["torch"] - times["none"])}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as the recipe study ran)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    masks = measure_masks(args.repeats)
    print(f"dropout p=0.1 on 1,600 x 384 fp32, {args.threads} thread(s), ns per element (best of {args.repeats})")
    print(f"{'':22s} {'forward':>8s} {'fwd+bwd':>8s}")
    for name in ("torch", "fast"):
        print(f"{name + ' dropout':22s} {masks[f'{name}_forward_ns']:8.2f} {masks[f'{name}_forward_backward_ns']:8.2f}")
    print(f"{'384x384 matmul of it':22s} {masks['matmul_384_ns']:8.2f}")
    print(f"fast dropout is {masks['torch_forward_backward_ns'] / masks['fast_forward_backward_ns']:.2f}x cheaper "
          "forward + backward\n")

    steps = measure_steps(args.repeats)
    print("MiniLM training step, batch 32 x 50 tokens, seconds (best of alternating runs)")
    print(f"{'recipe':28s} {'swapped':>7s} {'torch':>7s} {'fast':>7s} {'p=0':>7s} {'speedup':>8s} {'removed':>8s}")
    for label, r in steps.items():
        print(f"{label:28s} {r['modules_swapped']:7d} {r['torch_dropout_s']:7.3f} {r['fast_dropout_s']:7.3f} "
              f"{r['no_dropout_s']:7.3f} {r['speedup']:8.2f} {100 * r['dropout_cost_removed']:7.0f}%")
    print("speedup: torch / fast; removed: the share of dropout's whole cost (torch - p=0) that fast dropout saves")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"threads": args.threads, "masks": masks, "steps": steps}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
