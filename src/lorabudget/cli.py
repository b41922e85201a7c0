"""The `lorabudget` command. Thin: parse, call one function, print. Errors the user can fix exit with status 2
and a message; they never show a traceback."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from contextlib import nullcontext
from pathlib import Path

from .cli_read import add_match_args
from .errors import LorabudgetError

PLAN_DESCRIPTION = " ".join("""
Without --model: build the config's shape on the meta device and print its exact trainable breakdown (per module
type, per layer, head, biases, DoRA magnitudes) and whether it fits the budget; exit 2 when it does not. With
--model: enumerate allocations (ranks per module type, module types, layers: all / top k / --layers, bias mode,
head, LoRA or DoRA) that fit --budget, counted with closed-form arithmetic and checked against the built model on
the meta device.""".split())
SWEEP_DESCRIPTION = " ".join("""
Run or continue an Optuna study over a search space (YAML, see configs/space-*.yaml) on top of a base config. Each
candidate is counted exactly before it may train: one over the budget is skipped (a FAIL trial marked 'skipped'
that never trains and does not count). Each trial trains into OUT/trials/trial-NNNN/; poor trials are pruned on
their validation score. Run the same command again to continue a killed or interrupted sweep; run it on several
machines with one --storage to share a study.""".split())


# The common flags: each a shortcut for one config key, spelled the same on every verb that reads a config
# (train, sweep, plan, config). `--set KEY=VALUE` reaches every other field; a flag wins over a --set of its key.
COMMON_FLAGS = [
    ("--data", "data.source", str, "data source: a Hub dataset id, a folder, or a csv/tsv/jsonl/parquet/pickle file"),
    ("--model", "model.name", str, "pretrained encoder: a Hub id, a local folder, or minilm (the packaged MiniLM)"),
    ("--budget", "budget", int, "most trainable parameters allowed, head included"),
    ("--epochs", "optim.epochs", float, "passes over the training split"),
    ("--max-steps", "optim.max_steps", int, "optimizer steps (overrides --epochs)"),
    ("--lr", "optim.lr", float, "peak learning rate"),
    ("--seed", "seed", int, "training seed (head and adapter init, dropout, batch order)"),
]


def _config_args(p: argparse.ArgumentParser, *, model_help: str | None = None) -> None:
    p.add_argument("-c", "--config", help="YAML config file (see configs/); defaults apply without one")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field by its dotted name, e.g. --set adapter.r=4 (repeatable)")
    for flag, key, kind, text in COMMON_FLAGS:
        text = model_help if flag == "--model" and model_help else text
        metavar = {"--data": "SOURCE", "--model": "NAME", "--lr": "LR"}.get(flag, "N")
        p.add_argument(flag, type=kind, dest=key.replace(".", "__"), metavar=metavar, help=f"{text} (--set {key}=...)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow a pickled data file (unpickling runs code from the file: only files you trust)")


def _read_args(p: argparse.ArgumentParser) -> None:
    """How verbs that read a new source with a finished run's config (evaluate, predict, shift) read it."""
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow a pickled dataset (unpickling runs code from the file: only files you trust)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="data.KEY=VALUE",
                   help="how to read the source, e.g. --set data.text_column=sentence")


def _scales(text: str) -> list[float]:
    """'0.5,0.75,1' -> [0.5, 0.75, 1.0], repeats dropped (a comma list, not nargs='+', so that
    `evaluate --adapter-scale 0.5 RUN` still reads RUN as the run)."""
    try:
        scales = list(dict.fromkeys(float(part) for part in text.split(",") if part.strip()))
    except ValueError:
        scales = []
    if not scales:
        raise argparse.ArgumentTypeError(f"expected a number or comma-separated numbers, not {text!r}")
    return scales


def _scale_arg(p: argparse.ArgumentParser, several: bool = False) -> None:
    p.add_argument("--adapter-scale", type=_scales if several else float, default=None,
                   metavar="S[,S...]" if several else "S",
                   help="scale the LoRA update by S in [0, 1] before merging (WiSE-FT: 0 is the pretrained encoder, "
                   "1 the trained adapter; below 1 can hold up better on texts unlike the training data, see "
                   "docs/shift.md); LayerNorms trained in full move with it, the head and trained biases stay "
                   "as trained. Default: the run's adapter.inference_scale"
                   + ("; several scales (1,0.75,0.5) score each and print a table of them, to choose one on "
                      "labelled rows of the kind you will be graded on" if several else ""))


def _collect_overrides(args) -> list[str]:
    overrides = list(args.overrides)
    for _, key, _, _ in COMMON_FLAGS:
        value = getattr(args, key.replace(".", "__"), None)
        if value is not None:
            overrides.append(f"{key}={value}")
    if getattr(args, "output_dir", None):
        overrides.append(f"output_dir={args.output_dir}")
    if getattr(args, "allow_pickle", False):
        overrides.append("data.allow_pickle=true")
    return overrides


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _default_output_dir(cfg) -> str:
    import time

    model = Path(cfg.model.name.rstrip("/")).name or "model"
    return str(Path("runs") / f"{model}-{time.strftime('%Y%m%d-%H%M%S')}")


def cmd_train(args) -> int:
    from .cli_train import check_predict_args
    from .config import load_config

    check_predict_args(args)
    from .rundir import RunDir
    from .runlock import command_line
    from .train.stopping import is_main_process

    if args.resume:
        run = RunDir(args.resume)
        if not run.config.is_file():
            raise LorabudgetError(f"{run.path} is not a run directory (no config.yaml); nothing to resume")
        if args.config or _collect_overrides(args):
            raise LorabudgetError("--resume continues a run with its own config; drop -c, --set and the flags that "
                                  "set config fields (--data, --model, --lr, ...)")
        cfg = None
    else:
        cfg = load_config(args.config, _collect_overrides(args))
        if cfg.output_dir is None:
            cfg = cfg.model_copy(update={"output_dir": _default_output_dir(cfg)})
        run = RunDir(cfg.output_dir)
        run.check_new(args.overwrite, main=is_main_process())  # a foreign folder: refused before the lock file
    # One writer per run dir, from the checks to the end (a second command refuses at once, naming this one).
    # Only the main process of a launch writes, so only it locks.
    with run.lock(command_line()) if is_main_process() else nullcontext():
        if args.resume:
            if run.is_finished():
                print(f"{run.path} already finished; nothing to resume")
                return 0
            cfg = load_config(run.config)
            if cfg.speed.processes == "auto":  # recorded before runs recorded their number: they trained in one
                from .train.launch import with_processes

                cfg = with_processes(cfg, 1)
            resume = run.has_checkpoint()
        else:
            run.check_new(args.overwrite, main=is_main_process())  # again under the lock: a writer may have begun
            resume = False
        from .cli_train import run_launched, run_training
        from .train.launch import launcher_world, resolve_processes

        cfg = resolve_processes(cfg, say=print if is_main_process() else lambda text: None)
        if cfg.speed.processes > 1 and launcher_world() is None:  # start the processes, which train the run
            return run_launched(args, cfg, run, resume)
        return run_training(args, cfg, run, resume)


def cmd_config(args) -> int:
    from .config import describe_fields, dump_config, load_config

    if args.fields:
        for name, default, help_text in describe_fields():
            print(f"{name} = {default}\n    {help_text}")
        return 0
    print(dump_config(load_config(args.config, _collect_overrides(args))), end="")
    return 0


def cmd_plan(args) -> int:
    from .config import load_config
    from .tools import planner

    cfg = load_config(args.config, _collect_overrides(args))
    model = args.model__name
    if model is None:
        search_only = [f"--{n.replace('_', '-')}" for n in ("methods", "modules", "ranks", "heads", "bias", "layers",
                                                           "write", "plot") if getattr(args, n) is not None]
        if search_only:
            raise LorabudgetError(f"{', '.join(search_only)} search allocations: add --model NAME")
        print(planner.check_config(cfg, args.num_labels))
        return 0
    space = planner.SearchSpace.parse(args.methods, args.modules, args.ranks, args.heads, args.bias, args.layers)
    print(planner.plan(cfg, model, space, num_labels=args.num_labels, top=args.top, sample=args.sample,
                       seed=args.sample_seed, write=args.write, pick=args.pick, plot=args.plot))
    return 0


def cmd_sweep(args) -> int:
    from .config import load_config
    from .errors import Interrupted
    from .tools.sweep import Space, run_sweep

    base = load_config(args.config, _collect_overrides(args))
    space = Space.load(args.space)
    out = args.out or str(Path("runs") / f"sweep-{args.study or Path(args.space).stem}")
    try:
        result = run_sweep(base, space, out, args.trials, storage=args.storage, study_name=args.study,
                           sampler=args.sampler, pruner=args.pruner, sampler_seed=args.sampler_seed,
                           heartbeat=args.heartbeat, enqueue=tuple(args.enqueue), space_path=args.space)
    except (KeyboardInterrupt, Interrupted) as exc:
        print("\ninterrupted; the trial in progress is retried when the same command runs again",
              file=sys.stderr)
        return getattr(exc, "exit_code", 130)
    print(f"\ndone      {_count(result.done, 'trial')} complete or pruned; {_count(result.skipped, 'candidate')} "
          f"skipped (over budget or invalid), {result.failed} failed")
    if result.best:
        b = result.best
        print(f"best      trial {b['number']}: {base.eval.metric} {b['value']:.4f}, "
              f"{b['trainable_params']:,} trainable, {b['run_dir']}")
    print(f"report    lorabudget report {result.out} --out {Path(result.out) / 'report'}")
    return 0


def cmd_report(args) -> int:
    from .tools.report import write_report

    try:
        md, html = write_report(args.inputs, args.out, study_name=args.study)
    except KeyboardInterrupt:
        print("\ninterrupted; no report file was half-written", file=sys.stderr)
        return 130
    print(f"wrote     {md}\nwrote     {html}  (self-contained, opens offline)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .cli_read import cmd_evaluate, cmd_export, cmd_predict, cmd_shift
    from .version import __version__

    parser = argparse.ArgumentParser(prog="lorabudget", description="Fine-tune a frozen encoder with LoRA-family "
                                     "adapters under an exact trainable-parameter budget.")
    parser.add_argument("--version", action="version", version=f"lorabudget {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a run from a config into a run directory")
    _config_args(p)
    p.add_argument("--output-dir", help="run directory (default runs/<model>-<time>)")
    p.add_argument("--overwrite", action="store_true", help="replace a run directory that holds a run")
    p.add_argument("--resume", metavar="RUN", help="continue a killed run from its last checkpoint")
    p.add_argument("--predict", metavar="FILE", help="after training, predict FILE with the best checkpoint")
    p.add_argument("--out", metavar="CSV", help="where --predict writes its ID,Label submission (default "
                   "RUN/predictions.csv)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="score a finished run: accuracy, macro-F1, per-class table, confusion matrix")
    p.add_argument("run", help="run directory")
    p.add_argument("--data", help="data source to score (default: the run's own validation split)")
    p.add_argument("--out", help="output folder (default RUN/eval/<data>, -scale<S> appended for a scale; with "
                   "several scales, a folder scale<S> inside it for each)")
    _scale_arg(p, several=True)
    add_match_args(p, evaluate=True)
    _read_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="write a Kaggle-style ID,Label submission for any data source")
    p.add_argument("run", help="finished run directory")
    p.add_argument("--data", required=True, help="data source to predict (labels optional)")
    p.add_argument("--out", required=True, help="CSV file to write")
    p.add_argument("--label-format", choices=["id", "name", "source"], default="id",
                   help="Label column: 0-based class id (default), class name, or the source's own coding")
    p.add_argument("--proba", action="store_true", help="add one probability column per class")
    p.add_argument("--adapt-priors", action="store_true", help="re-weight the probabilities by the target's class "
                   "shares, estimated from its texts by EM (Saerens et al. 2002): for a target whose classes are not "
                   "balanced as in training")
    _scale_arg(p)
    add_match_args(p)
    _read_args(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("shift", help="how a target differs from what a run trained on: lengths, words, artefacts, "
                       "a domain classifier, the model's confidence (a picture and shift.json)")
    p.add_argument("run", help="finished run directory")
    p.add_argument("--target", required=True, help="the texts you will be graded on (any supported source; labels "
                   "not needed)")
    p.add_argument("--out", help="output folder (default RUN/shift/<target>)")
    p.add_argument("--sample", type=int, default=2000, help="rows sampled from each side (default 2000)")
    p.add_argument("--sample-seed", type=int, default=0, help="seed of the samples and the classifier's folds")
    _read_args(p)
    p.set_defaults(func=cmd_shift)

    p = sub.add_parser("export", help="export a run: the PEFT adapter, or a merged plain transformers model")
    p.add_argument("run", help="finished run directory")
    p.add_argument("--merged", metavar="DIR", help="write a merged model (adapters folded in, head, tokenizer)")
    p.add_argument("--adapter", metavar="DIR", help="write the PEFT adapter (head included)")
    p.add_argument("--custom-code", action="store_true",
                   help="for heads the stock model classes cannot express (linear, lowrank): write the model with "
                        "its own modeling file, loaded with trust_remote_code=True")
    _scale_arg(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("config", help="print the resolved config, or every field with its help (--fields)")
    _config_args(p)
    p.add_argument("--fields", action="store_true", help="list every config field with its default and help")
    p.set_defaults(func=cmd_config)

    from .tools.planner.ranking import HEURISTIC
    from .tools.planner.search import VARIANTS

    p = sub.add_parser(
        "plan", help="exact trainable count of a config, or search the allocations that fit a budget (no weights)",
        description=PLAN_DESCRIPTION + " " + HEURISTIC)
    _config_args(p, model_help="search allocations for this model (name of a shipped config, local folder, or Hub "
                 "id); without it, count the config's own model")
    p.add_argument("--num-labels", type=int, help="classes of the head (default: data.label_names, else 4)")
    p.add_argument("--methods", help=f"comma list of {', '.join(VARIANTS)} (adapter methods and LoRA's DoRA "
                   "variant; default all but adalora, which is searched only when named)")
    p.add_argument("--modules", help="roles to combine: query, key, value, qkv, attention_output, ffn_in, ffn_out "
                   "(default all the model's family has)")
    p.add_argument("--ranks", help="rank grid, per module type (default 4,8,16,32,64)")
    p.add_argument("--heads", help="comma list of default, pooler (BERT), linear, lowrank (its rank: --set "
                   "head.rank=K, default 32); default: all the model offers")
    p.add_argument("--bias", help="comma list of none, all, lora_only (default all three)")
    p.add_argument("--layers", action="append", metavar="I,J,..",
                   help="a custom layer set besides all and top k, e.g. 0,1,5,10,11 (repeatable)")
    p.add_argument("--top", type=int, default=10, help="rows to show, each built and checked (default 10)")
    p.add_argument("--sample", type=int, default=5, help="random other fitting allocations to build and check")
    p.add_argument("--sample-seed", type=int, default=0, help="seed of that sample")
    p.add_argument("--write", metavar="PATH.yaml", help="write row --pick as a config for `lorabudget train`")
    p.add_argument("--pick", type=int, default=1, help="the row --write writes (default 1)")
    p.add_argument("--plot", metavar="PATH.png", help="stacked bars of the rows' budget split")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser(
        "sweep", help="search hyperparameters with Optuna: every candidate within the budget, resumable",
        description=SWEEP_DESCRIPTION)
    _config_args(p)
    p.add_argument("--space", required=True, help="search space YAML (see configs/space-*.yaml)")
    p.add_argument("--trials", type=int, required=True,
                   help="the study's total of complete + pruned trials, all workers and reruns together")
    p.add_argument("--out", help="the study's folder (default runs/sweep-<study>)")
    p.add_argument("--study", help="study name (default: the --out folder's name)")
    p.add_argument("--storage", help="SQLAlchemy URL of the study database (default sqlite:///OUT/study.db); "
                   "e.g. postgresql+psycopg://user@host/db for workers on several machines (pip install "
                   "lorabudget[postgres])")
    p.add_argument("--sampler", choices=["tpe", "grid", "random"], default="tpe",
                   help="TPE (default), the full grid of the space's choices, or random")
    p.add_argument("--pruner", choices=["median", "none"], default="median",
                   help="stop a trial whose validation score is below the median of earlier trials at the "
                   "same step (default), or never")
    p.add_argument("--sampler-seed", type=int, help="seed of the sampler (leave unset with several workers)")
    p.add_argument("--heartbeat", type=int, default=60, metavar="SECONDS",
                   help="a trial whose worker is silent for twice this long is marked FAIL and retried once")
    p.add_argument("--enqueue", action="append", default=[], metavar="CONFIG.yaml",
                   help="try this config first (e.g. one written by `lorabudget plan --write`); repeatable")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser(
        "report", help="Markdown + self-contained HTML report of runs or a study",
        description="Leaderboard, accuracy curves grouped by the hyperparameter that varies, accuracy "
        "against trainable parameters, the best run's confusion matrix and per-class scores, and for a study "
        "the parameter importances and a parallel-coordinate plot. Runs that differ only by seed are grouped "
        "(mean and standard deviation); unfinished and failed runs are listed as left out.")
    p.add_argument("inputs", nargs="+", metavar="RUNS_OR_STUDY",
                   help="run directories, folders holding them, sweep folders, or a study's storage URL")
    p.add_argument("--out", required=True, help="folder for report.md, report.html and figures/")
    p.add_argument("--study", help="study name, when an input is a storage URL holding several studies")
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # a warning is a line for the user ("warning: ..."), not a source location with the line that raised it
    warnings.formatwarning = lambda message, category, *args, **kwargs: f"warning: {message}\n"
    def report(exc: BaseException, code: int) -> bool:  # a process `lorabudget train` started tells it, not the user
        from .train.launch import report

        return report(exc, code)

    try:
        return args.func(args)
    except LorabudgetError as exc:
        if not report(exc, exc.exit_code):
            print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        if not report(exc, 130):
            print("\ninterrupted; an unfinished run continues with `lorabudget train --resume RUN`", file=sys.stderr)
        return 130
    except Exception as exc:
        if report(exc, 1):
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
