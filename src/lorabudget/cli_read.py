"""The verbs that read a finished run (evaluate, predict, shift, export): each calls one function and prints what
it found. Errors the user can fix raise LorabudgetError, which `cli.main` turns into a message and exit 2."""

from __future__ import annotations

from pathlib import Path

from .errors import LorabudgetError


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
        scores, out = evaluate(args.run, args.data, out_dir, _data_overrides(args), adapter_scale=scale)
        if scores["note"] and scale == scales[0]:
            print(scores["note"])
        used = scores.get("adapter_scale", 1.0)
        scaled = f", LoRA update scaled by {used:g}" if used != 1.0 else ""
        print(f"evaluated {args.run} on {scores['data']}{scaled}")
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
                          adapter_scale=args.adapter_scale)
    if result["note"]:
        print(result["note"])
    where = f"the test split of {args.data}" if result["split"] == "test" else args.data
    print(f"predicted {result['rows']:,} rows of {where}: {class_counts(result)}")
    if "priors" in result:
        p = result["priors"]
        shares = ", ".join(f"{n} {e:.1%} (train {t:.1%})" for n, e, t in zip(p["classes"], p["estimated"], p["train"]))
        print(f"priors    the target's class shares, estimated by EM and applied: {shares}")
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
