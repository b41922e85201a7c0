"""The verbs that read a finished run (evaluate, predict, shift, export): each calls one function and prints what
it found. Errors the user can fix raise LorabudgetError, which `cli.main` turns into a message and exit 2."""

from __future__ import annotations

from pathlib import Path

from .errors import LorabudgetError


def add_match_args(p, evaluate: bool = False) -> None:
    """--match-shares and its companions, for predict and (with the target to fit on) evaluate."""
    p.add_argument("--match-shares", metavar="SHARES", default=None,
                   help="the class shares of the texts you will be graded on: 'uniform' (a balanced test set) or one "
                   "share per class in the run's class order, as evaluate lists them (0.3,0.2,0.2,0.3); per-class "
                   "offsets fitted on the target so that the model's class balance there matches, undoing a shift "
                   "that tilts predictions towards one class (docs/shift.md). Default: the run's "
                   "data.target_shares; 'none': off")
    p.add_argument("--match-rows", choices=["shifted", "all"], default=None,
                   help="match the shares on the target rows that read unlike the training data (shifted: a word "
                   "classifier, train against target, decides) or on all of them. Default: the run's "
                   "data.target_share_rows (shifted)")
    if evaluate:
        p.add_argument("--match-on", metavar="SOURCE", default=None,
                       help="the target to fit --match-shares on (its texts; labels not needed), whose rows "
                       "--data belongs to. Default: the run's data.target_source")


def _data_overrides(args) -> dict:
    """`--set data.key=value` for verbs that read a new source with a finished run's config."""
    from .config import parse_override

    overrides = {}
    for item in args.overrides:
        path, value = parse_override(item)
        if len(path) != 2 or path[0] != "data":
            raise LorabudgetError(f"{args.command} takes only data.* overrides (how to read --data), not {item!r}")
        overrides[path[1]] = value
    if getattr(args, "allow_pickle", False):
        overrides["allow_pickle"] = True
    return overrides


def matched_shares(m: dict) -> str:
    """What --match-shares did, in a line: on which rows, to which shares, by which offsets."""
    where = (f"{m['fitted_rows']:,} of {m['target_rows']:,} rows unlike the training data" if m["rows"] == "shifted"
             else f"all {m['target_rows']:,} rows")
    shares = ", ".join(f"{n} {s:.0%} ({o:+.2f})" for n, s, o in zip(m["classes"], m["shares"], m["offsets"]))
    return f"class shares matched on {where}: {shares} (share, logit offset)"


def class_counts(result: dict) -> str:
    """A prediction's classes, counted: 'World 1,462, Sports 1,969, ...'."""
    return ", ".join(f"{k} {v:,}" for k, v in result["counts"].items())


def cmd_evaluate(args) -> int:
    from .metrics import format_report
    from .model.adapters import check_adapter_scale
    from .serve.evaluate import evaluate

    scales = args.adapter_scale or [None]
    for scale in scales:  # every scale checked before the first model loads
        if scale is not None:
            check_adapter_scale(scale)
    table = []
    for scale in scales:
        out_dir = args.out and (str(Path(args.out) / f"scale{scale:g}") if len(scales) > 1 else args.out)
        scores, out = evaluate(args.run, args.data, out_dir, _data_overrides(args), adapter_scale=scale,
                               match_shares=args.match_shares, match_rows=args.match_rows, match_on=args.match_on)
        if scores["note"] and scale == scales[0]:
            print(scores["note"])
        used = scores.get("adapter_scale", 1.0)
        scaled = f", LoRA update scaled by {used:g}" if used != 1.0 else ""
        print(f"evaluated {args.run} on {scores['data']}{scaled}")
        if "shares" in scores:
            m = scores["shares"]
            print(f"shares    {matched_shares(m)}; applied to {m['scored_rows_matched']:,} scored rows")
        print(format_report(scores))
        print(f"wrote     {out}/metrics.json and confusion_matrix.png")
        table.append((used, scores["accuracy"], scores["macro_f1"], scores.get("checkpoint_step")))
    if len(table) > 1:  # the choice at a glance: each scale's scores on the same rows
        best = max(range(len(table)), key=lambda i: table[i][1:3])
        steps = {row[3] for row in table}
        print(f"\n{'scale':>6s} {'accuracy':>9s} {'macro-F1':>9s}   ({scores['data']})")
        for i, (used, acc, f1, step) in enumerate(table):
            at = f"   checkpoint of step {step}" if len(steps) > 1 else ""  # a run still training moved on
            print(f"{used:6g} {acc:9.4f} {f1:9.4f}" + ("   best" if i == best else "      ") + at)
    return 0


def cmd_predict(args) -> int:
    from .serve.predict import predict_file

    result = predict_file(args.run, args.data, args.out, label_format=args.label_format, proba=args.proba,
                          data_overrides=_data_overrides(args), adapt=args.adapt_priors,
                          adapter_scale=args.adapter_scale, match_shares=args.match_shares,
                          match_rows=args.match_rows)
    if result["note"]:
        print(result["note"])
    where = f"the test split of {args.data}" if result["split"] == "test" else args.data
    print(f"predicted {result['rows']:,} rows of {where}: {class_counts(result)}")
    if "priors" in result:
        p = result["priors"]
        shares = ", ".join(f"{n} {e:.1%} (train {t:.1%})" for n, e, t in zip(p["classes"], p["estimated"], p["train"]))
        print(f"priors    the target's class shares, estimated by EM and applied: {shares}")
    if "shares" in result:
        print(f"shares    {matched_shares(result['shares'])}")
    if "accuracy" in result:
        print(f"accuracy  {result['accuracy']:.4f} (the source has labels)")
    print(f"wrote     {result['out']}")
    return 0


def cmd_shift(args) -> int:
    from .tools.shift import diagnose_shift

    result = diagnose_shift(args.run, args.target, out_dir=args.out, data_overrides=_data_overrides(args),
                            sample=args.sample, seed=args.sample_seed)
    print("\n".join(result.lines))
    print(f"wrote     {result.out}/ (shift.json, shift.png, target_scores.csv: most foreign rows first)")
    return 0


def cmd_export(args) -> int:
    from .serve.export import export_adapter, export_merged

    if not (args.merged or args.adapter):
        raise LorabudgetError("say what to export: --merged DIR (a plain transformers model) or --adapter DIR")
    if args.adapter:
        where = export_adapter(args.run, args.adapter, adapter_scale=args.adapter_scale)
        print(f"wrote adapter       {where}  (PeftModel.from_pretrained)")
    if args.merged:
        where = export_merged(args.run, args.merged, custom_code=args.custom_code, adapter_scale=args.adapter_scale)
        remote = (where / "modeling_lorabudget.py").exists()
        print(f"wrote merged model  {where}  (AutoModelForSequenceClassification.from_pretrained"
              + (", trust_remote_code=True: loading runs its modeling file)" if remote else ")"))
    return 0
