"""What a recipe writes into its run directory besides checkpoints: the header when it starts (config, labels,
split), where a resumed run takes up, and when it finishes the adapter (peft's format, head included), the
plots and the summary. Only the main process writes."""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import torch

from ..config import dump_config
from ..data.split import HELD_OUT
from ..model.adapters import quiet_peft_deprecations
from ..model.weights import load_weights
from ..rundir import RunDir, atomic_write_json, atomic_write_text, follow_umask, remove_quietly, replace_dir, writing
from ..version import __version__
from .averaging import EMA_FILE, evaluated_weights
from .checkpoint import load_checkpoint, save_checkpoint, save_weights
from .evaluation import LoopState, evaluation_record, record
from .launch import batch_per_process, with_processes
from .selftrain import rounds_summary


def library_versions() -> dict:
    import accelerate
    import peft
    import transformers

    return {"lorabudget": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "accelerate": accelerate.__version__, "python": platform.python_version()}


def data_facts(recipe) -> dict:
    """Which rows a run trained and was scored on (split.json, and the summary's `data`)."""
    split, sources = recipe.data.split, recipe.cfg.data.validation_source
    counts = np.bincount(np.asarray(split.train.labels), minlength=len(recipe.labels.names)).tolist()
    facts = {"source": absolute(recipe.data.dataset.source), "train_rows": len(split.train),
             "train_class_counts": counts,  # the priors the model learns under (predict --adapt-priors)
             "validation_rows": len(split.validation), "validation_hash": split.validation_hash,
             "split_seed": recipe.cfg.data.split_seed}
    if sources:  # the user's own evaluation sets: the first decides, the others by name
        facts["evaluation_sets"] = {name: len(rows) for name, rows in split.extra.items()}
        if sources[0] != HELD_OUT:  # rows held out of train are re-derived from the source, as without sources
            facts["validation_source"] = absolute(sources[0])
    return facts


def absolute(path: str) -> str:
    """A local path made absolute (a Hub id, or a path that does not exist here, as given)."""
    return str(Path(path).resolve()) if not Path(path).is_absolute() and Path(path).exists() else path


def recorded_config(cfg):
    """The config as config.yaml records it: local paths (data sources, a model folder) made absolute, so that
    evaluate, predict, shift and --resume find them from any working directory."""
    data = cfg.data.model_copy(update={"source": absolute(cfg.data.source),
                                       "validation_source": [absolute(s) for s in cfg.data.validation_source]})
    model = cfg.model.model_copy(update={"name": absolute(cfg.model.name)})
    return cfg.model_copy(update={"data": data, "model": model})


def write_run_header(recipe) -> None:
    run = recipe.run
    cfg = recipe.cfg  # in-process training (the Python API, a sweep) never resolves 'auto': record what trains it
    if cfg.speed.processes == "auto":
        cfg = with_processes(cfg, recipe.world)
    atomic_write_text(run.config, dump_config(recorded_config(cfg)))
    atomic_write_json(run.labels, recipe.labels.to_json())
    atomic_write_json(run.path / "split.json", data_facts(recipe))
    run.set_status("running")


RANK_RNG_FILE = "rng_ranks.safetensors"  # with several processes: each one's random state, for an exact resume


def start_run(recipe) -> LoopState:
    """A new run: the folder is cleared only now, so a config, data or model error in setup leaves an older run
    untouched. With several processes, each but the main one draws its dropout masks from a stream of its own
    from here on (all built the same model from the same seed)."""
    if recipe.main:
        recipe.run.reset()
        write_run_header(recipe)
    if recipe.rank > 0:
        torch.manual_seed(int(np.random.SeedSequence([recipe.cfg.seed, recipe.rank]).generate_state(1)[0]))
    return LoopState()


def rank_rng_states(recipe) -> dict[str, torch.Tensor] | None:
    """Every process's random state (a collective: all processes call it), or None for one process."""
    if recipe.world == 1:
        return None
    import torch.distributed as dist

    states: list = [None] * recipe.world
    dist.all_gather_object(states, torch.get_rng_state())
    return {f"rank{rank}": state for rank, state in enumerate(states)}


def resume_run(recipe) -> LoopState:
    """A killed run, from its last checkpoint: weights, optimizer, schedule, random state and loop state; the
    metrics logged after that checkpoint are dropped, since those steps are about to be redone."""
    acc, run = recipe.accelerator, recipe.run
    tensors = {EMA_FILE: recipe.ema.load_state} if recipe.ema is not None else {}
    if recipe.method.file:  # the adapter method's own state (AdaLoRA's rank allocator)
        tensors[recipe.method.file] = recipe.method.load_state
    ranks: dict = {}
    if recipe.world > 1:  # each process's own random state
        tensors[RANK_RNG_FILE] = lambda state, path, way_out: ranks.update(state or {})
    state = LoopState(**load_checkpoint(run.last, acc.unwrap_model(recipe.model), recipe.optimizer, recipe.scheduler,
                                        run.path, say=recipe.say, tensors=tensors))
    if f"rank{recipe.rank}" in ranks:  # the checkpoint's main random state is the main process's
        torch.set_rng_state(ranks[f"rank{recipe.rank}"])
    if recipe.main:
        run.truncate_metrics(state.step)
        run.set_status("running", resumed_at=state.step)
    return state


def evaluate_and_checkpoint(recipe, bar) -> None:
    """Score every evaluation set, note the best, let a sweep's pruner speak, log, save the best weights when they
    improved, then checkpoint."""
    st = recipe.state
    with evaluated_weights(recipe):  # scored and saved as best: the weight average when the run keeps one
        scores = recipe.validate()
        improved = record(st, scores, recipe.cfg.eval)
        if recipe.on_evaluate is not None and recipe.on_evaluate(st.step, scores):
            st.stopped_early, st.stopped_by = True, "callback"
        # train_seconds: the training time so far, for time-to-accuracy
        log_metrics(recipe, {"step": st.step, "epoch": round(st.step / recipe.steps_per_epoch, 4),
                             **evaluation_record(scores), "train_seconds": round(st.train_seconds, 2)})
        bar.set_postfix(val_acc=f"{scores['accuracy']:.4f}")
        if recipe.main and improved:
            save_weights(recipe.accelerator.unwrap_model(recipe.model), recipe.run.best, {"step": st.step,
                                                                                       **st.best_scores})
    recipe.last_scores = scores
    checkpoint(recipe)


def checkpoint(recipe) -> None:
    """checkpoints/last (the one before it kept as checkpoints/previous), by the main process; all wait."""
    ranks = rank_rng_states(recipe)  # with several processes: every one's random state
    if recipe.main:  # the trained weights, and the average beside them (both are needed to go on exactly)
        tensors = {EMA_FILE: recipe.ema.state()} if recipe.ema is not None else {}
        if ranks:
            tensors[RANK_RNG_FILE] = ranks
        if recipe.method.file:  # and the adapter method's own state (AdaLoRA's rank allocator)
            tensors[recipe.method.file] = recipe.method.state()
        save_checkpoint(recipe.run.last, recipe.accelerator.unwrap_model(recipe.model), recipe.optimizer,
                        recipe.scheduler, recipe.state.to_json(), tensors)
    recipe.accelerator.wait_for_everyone()


def log_train_loss(recipe, bar) -> None:
    """The mean training loss since the last logged step (over every process), and the learning rate."""
    st, acc = recipe.state, recipe.accelerator
    mean = float(acc.reduce(torch.tensor(st.window_loss / st.window_n, device=recipe.device), "mean"))
    rates = recipe.scheduler.get_last_lr()  # the adapters' group first; during an LP-FT probe only the head's
    line = {"step": st.step, "epoch": round(st.step / recipe.steps_per_epoch, 4), "train_loss": mean,
            "lr": rates[0] if rates[0] > 0 else max(rates)}  # groups move, so the one that trains is logged
    if recipe.cfg.optim.rdrop_alpha:  # how far the two dropout passes disagree (train_loss includes alpha x this)
        line["train_rdrop_kl"] = float(acc.reduce(torch.tensor(st.window_kl / st.window_n, device=recipe.device),
                                                    "mean"))
    log_metrics(recipe, line)
    bar.set_postfix(loss=f"{mean:.4f}")
    st.window_loss, st.window_n, st.window_kl = 0.0, 0, 0.0


def log_metrics(recipe, record: dict) -> None:
    """One line of metrics.jsonl (a logging step or an evaluation), and the experiment trackers when asked."""
    if recipe.main:
        recipe.run.append_metrics(record)
    if recipe.cfg.logging.trackers:
        recipe.accelerator.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])


def save_adapter(run: RunDir, model, recipe) -> None:
    tmp = run.adapter.with_name("adapter.tmp")
    remove_quietly(tmp)
    try:
        with writing(tmp):
            # save_embedding_layers=False: no embedding trains here, and peft's "auto" asks the Hub about the base
            # model (a minute of retries offline) to decide whether a resized vocabulary must be saved.
            with quiet_peft_deprecations():
                model.save_pretrained(str(tmp), safe_serialization=True, save_embedding_layers=False)
            recipe.tokenizer.save_pretrained(str(tmp))
        atomic_write_json(tmp / "lorabudget_head.json", {
            "head": recipe.adapted.head.type, "base_model": recipe.cfg.model.name,
            "stock_loadable": recipe.adapted.head.stock_loadable, "labels": recipe.labels.names,
            "note": "load with lorabudget.load(RUN); with head 'default' or 'pooler' PeftModel.from_pretrained onto "
                    "AutoModelForSequenceClassification works too"})
        follow_umask(tmp)
        with writing(run.adapter):
            replace_dir(tmp, run.adapter)
    except BaseException:
        remove_quietly(tmp)
        raise


def run_summary(recipe, model, final_scores: dict) -> dict:
    """summary.json: best and final scores, the trainable breakdown, timing, how it ran, versions."""
    st, cfg, sched = recipe.state, recipe.cfg, recipe.schedule
    return {
        "finished": True,
        "best": {"step": st.best_step, "metric": cfg.eval.metric, **(st.best_scores or {})},
        "final": {"step": st.step, **{k: final_scores[k] for k in ("accuracy", "macro_f1", "loss", "sets")
                                      if k in final_scores}},
        "steps": st.step, "total_steps": sched.total_steps, "epochs": round(st.step / sched.steps_per_epoch, 4),
        "stopped_early": st.stopped_early,
        "stopped_by": st.stopped_by or ("early_stopping" if st.stopped_early else None),
        "trainable_params": recipe.adapted.breakdown.total,
        "budget": cfg.budget,
        "breakdown": recipe.adapted.breakdown.to_json(),
        "train_seconds": round(st.train_seconds, 2),
        "train_samples_per_s": round(st.samples / max(st.train_seconds, 1e-9), 2),
        "train_samples": st.samples,
        "num_processes": recipe.world,
        "batch_size_per_process": batch_per_process(cfg, recipe.world),
        "samples_per_step": batch_per_process(cfg, recipe.world) * recipe.world * cfg.optim.grad_accum,
        "encoder_layers": getattr(model.config, "num_hidden_layers", None),
        "frozen_prefix_cached_layers": recipe.prefix,
        "prefix_cache_storage": recipe.cache_storage,
        "compiled": recipe.compiled,
        "fast_dropout_modules": recipe.fast_dropouts,
        "fast_attention_dropout": recipe.fast_attention_dropout,
        "adapter_input_casts_skipped": recipe.input_casts_skipped,
        # the regularisers that add no parameter: which weights were evaluated and shipped, and R-Drop's weight
        "ema": None if recipe.ema is None else {"decay": recipe.ema.decay, "warmup": recipe.ema.warmup,
                                                "updates": recipe.ema.updates},
        "evaluated_weights": "ema" if recipe.ema is not None else "trained",
        "rdrop_alpha": cfg.optim.rdrop_alpha,
        **recipe.method.summary(recipe.adapted.breakdown.total),  # AdaLoRA: `adalora`, its ranks as shipped
        "threads": torch.get_num_threads(),
        "device": str(recipe.device), "precision": recipe.precision,
        "data": data_facts(recipe),
        "labels": recipe.labels.names,
        "selftrain": rounds_summary(recipe.run) if cfg.selftrain.rounds else None,
        "versions": library_versions(),
    }


def finish_run(recipe, final_scores: dict) -> dict:
    """The main process ships the best adapter (not the last), the plots and the summary, then marks the run
    finished; every process waits for it. Returns the summary (empty on other processes)."""
    from ..plots import plot_training_curves

    acc, run, summary = recipe.accelerator, recipe.run, None
    if recipe.main:
        model = acc.unwrap_model(recipe.model)
        load_weights(model, run.best, "the run's best weights are lost: start it again with --overwrite")
        recipe.method.before_save()  # AdaLoRA: the ranks the best weights use, which peft's save keeps
        save_adapter(run, model, recipe)
        summary = run_summary(recipe, model, final_scores)
        plot_training_curves(run.read_metrics(), run.plots)
        atomic_write_json(run.summary_file, summary)
        run.set_status("finished")
    acc.wait_for_everyone()
    if recipe.cfg.logging.trackers:  # the summary's numbers, then close them
        from .trackers import finish_trackers
        finish_trackers(acc, summary)
    return summary or {}
