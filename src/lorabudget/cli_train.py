"""What `lorabudget train` tells the user (the run it starts, how it ended) and what it does after training when
asked (--predict FILE: the submission from the best checkpoint, without a second command)."""

from __future__ import annotations

from pathlib import Path

from .errors import LorabudgetError


def run_training(args, cfg, run, resume: bool) -> int:
    """Train (or resume) into `run`, telling the user what runs and how it ended; with --predict, write the
    submission from the best checkpoint."""
    from .train.recipe import train

    def announce(recipe) -> None:
        if recipe.main:
            d = recipe.data
            print(f"run dir   {run.path}")
            print(f"data      {d.dataset.source}: {len(d.split.train):,} train / {len(d.split.validation):,} "
                  f"validation rows, {len(d.labels.names)} classes")
            print(f"model     {cfg.model.name}, head {cfg.head.type}, precision {recipe.precision}, "
                  f"{recipe.world} process(es) on {recipe.device}" + processes_note(recipe))
            print(recipe.describe())
            if recipe.prefix:
                print(f"speed     layers 0-{recipe.prefix - 1} train nothing: computed once and cached")
            print(f"schedule  {recipe.total_steps} steps ({recipe.steps_per_epoch}/epoch), evaluate every "
                  f"{recipe.eval_every}" + (f"; resuming at step {recipe.state.step}" if resume else ""))
            o, levers = cfg.optim, []
            if o.ema_decay is not None:
                levers.append(f"EMA of the weights (decay {o.ema_decay}) evaluated and shipped")
            if o.rdrop_alpha:
                levers.append(f"R-Drop, alpha {o.rdrop_alpha} (two dropout passes per batch)")
            if levers:
                print("levers    " + "; ".join(levers) + " (no parameter added)")

    summary = train(cfg, run, resume=resume, on_ready=announce)
    if summary:
        b, f = summary["best"], summary["final"]
        print(f"\nfinished  {summary['steps']} steps in {summary['train_seconds']:.0f} s "
              f"({summary['train_samples_per_s']:.1f} samples/s)" + (", stopped early" if summary["stopped_early"]
                                                                      else ""))
        print(f"best      step {b['step']}: accuracy {b.get('accuracy', float('nan')):.4f}, macro-F1 "
              f"{b.get('macro_f1', float('nan')):.4f}, loss {b.get('loss', float('nan')):.4f}")
        print(f"final     step {f['step']}: accuracy {f['accuracy']:.4f}")
        print(f"trainable {summary['trainable_params']:,} of budget {summary['budget']:,}")
        for name, scores in f.get("sets", {}).items():
            print(f"          {name}: accuracy {scores['accuracy']:.4f} at the final step")
        print(f"wrote     {run.path}/ (adapter/, plots/, metrics.jsonl, summary.json)")
        if getattr(args, "predict", None):
            predict_after_training(args, run, cfg.logging.progress)
    return 0


def processes_note(recipe) -> str:
    """How several processes share the work: threads each, and the batch each takes of every optimizer step's."""
    if recipe.world == 1:
        return ""
    import torch

    from .train.launch import batch_per_process

    per, o = batch_per_process(recipe.cfg, recipe.world), recipe.cfg.optim
    return (f" ({torch.get_num_threads()} thread(s) each); batch {per} per process, "
            f"{per * recipe.world * o.grad_accum} per optimizer step")


def check_predict_args(args) -> None:
    """Before training: a --predict source that is not there fails now, not after the training it follows."""
    from .data import resolve_source
    from .data.sources import looks_like_hub_id

    if not getattr(args, "predict", None):
        if getattr(args, "out", None):
            raise LorabudgetError("--out names the submission of --predict FILE; add --predict")
        return
    source = resolve_source(args.predict)
    if not Path(source).exists() and not looks_like_hub_id(source):
        raise LorabudgetError(f"--predict {args.predict}: no such file or folder")


def predict_after_training(args, run, progress: bool) -> None:
    from .cli_read import class_counts
    from .serve.predict import predict_file

    out = args.out or str(run.path / "predictions.csv")
    result = predict_file(str(run.path), args.predict, out, progress=progress,
                          data_overrides={"allow_pickle": True} if args.allow_pickle else {})
    print(f"predicted {result['rows']:,} rows of {args.predict} with the best checkpoint: {class_counts(result)}")
    print(f"wrote     {result['out']}")


def run_launched(args, cfg, run, resume: bool) -> int:
    """speed.processes N > 1: start N processes that train the run together (their rank 0 tells the user what
    runs, as `run_training` does), wait for them, and with --predict write the submission here, on all cores."""
    from .train.launch import launch

    launch(cfg, run, resume=bool(args.resume), overwrite=args.overwrite)
    if getattr(args, "predict", None):
        predict_after_training(args, run, cfg.logging.progress)
    return 0
