"""The training recipe: setup -> train -> finish, one readable loop on `accelerate`.

The same code runs on a CPU, a GPU, or several processes under `accelerate launch` / `torchrun` (data parallel:
each process takes every world-th batch; gradients are averaged by DDP). Only the main process writes the run
directory. The loop reads top to bottom: batch, forward under autocast, loss, backward (accumulating), clip, step,
schedule, log, evaluate, checkpoint.
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import __version__
from .batching import TokenBatches, Tokenized, cache_dir, tokenize, train_batches
from .budget import format_breakdown, trained_parameters
from .checkpoint import load_checkpoint, load_weights, save_checkpoint, save_weights
from .config import Config, dump_config
from .data import LabelSpace
from .errors import ConfigError, TrainingError
from .fastdropout import use_fast_dropout
from .inference import ordered, predict_logits
from .metrics import classification_scores
from .models import load_tokenizer
from .pipeline import AdaptedModel, TrainingData, build_adapted_model, hold_frozen_in, load_training_data
from .prefix import compute_states, decide_storage, encoder_model, frozen_prefix_length, layers_from
from .rundir import RunDir, atomic_write_json, atomic_write_text

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def cpu_supports_bf16() -> bool:
    """True where the CPU has native bf16 matmul (AVX512-BF16 or AMX). Without it bf16 is emulated and hundreds
    of times slower than fp32 (measured: 0.3 vs 150 GFLOP/s on an AVX2-only EPYC), so 'auto' must not pick it."""
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(torch.cpu, probe, None)
        try:
            if check is not None and check():
                return True
        except RuntimeError:
            continue
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        if device.type == "cpu":
            return "bf16" if cpu_supports_bf16() else "fp32"
        return "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("model.precision=fp16 needs a CUDA GPU (loss scaling is a GPU feature); use bf16 or fp32")
    return precision


def make_accelerator(cfg: Config, run: RunDir | None = None):
    from accelerate import Accelerator

    if cfg.model.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("model.device=cuda but no CUDA GPU is visible; use model.device=auto or cpu")
    cpu = cfg.model.device == "cpu" or (cfg.model.device == "auto" and not torch.cuda.is_available()
                                        and not torch.backends.mps.is_available())
    probe_device = torch.device("cpu") if cpu else torch.device("cuda" if torch.cuda.is_available() else "mps")
    precision = resolve_precision(cfg.model.precision, probe_device)
    kwargs = {}
    if cfg.logging.tensorboard and run is not None:
        kwargs = {"log_with": "tensorboard", "project_dir": str(run.path / "tensorboard")}
    # Autocast is applied by us (see `_autocast`), so accelerate only handles fp16 loss scaling.
    accelerator = Accelerator(cpu=cpu, mixed_precision="fp16" if precision == "fp16" else "no", **kwargs)
    return accelerator, precision


def lr_lambda(kind: str, warmup: int, total: int):
    def f(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        progress = min(max(progress, 0.0), 1.0)
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress

    return f


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices (adapter and head weights); leave biases, norms and DoRA magnitudes undecayed."""
    decay, no_decay = [], []
    for _, p in trained_parameters(model):
        (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def class_weight_tensor(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    weights = np.where(counts > 0, counts.sum() / (n_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def library_versions() -> dict:
    import accelerate
    import peft
    import transformers

    return {"lorabudget": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "accelerate": accelerate.__version__, "python": platform.python_version()}


def is_better(value: float, best: float | None, metric: str, min_delta: float) -> bool:
    if best is None:
        return True
    return value < best - min_delta if metric == "loss" else value > best + min_delta


@dataclass
class LoopState:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    step_in_epoch: int = 0
    best_metric: float | None = None
    best_step: int = 0
    best_scores: dict | None = None
    evals_without_improvement: int = 0
    samples: int = 0  # training examples seen, all processes
    train_seconds: float = 0.0
    stopped_early: bool = False
    stopped_by: str | None = None  # None, or "callback" when on_evaluate asked to stop

    def to_json(self) -> dict:
        return dict(self.__dict__)


class TrainingRecipe:
    """One training run, from config to finished run directory (torchtune's recipe shape)."""

    def __init__(self, cfg: Config, run: RunDir, *, resume: bool = False,
                 on_evaluate: Callable[[int, dict], bool] | None = None):
        # on_evaluate(step, validation scores) -> True asks the run to stop now (a sweep pruning a poor trial);
        # the run then finishes normally, best adapter saved, with `stopped_by: "callback"` in its summary.
        self.cfg, self.run, self.resume, self.on_evaluate = cfg, run, resume, on_evaluate

    # ---- setup ---------------------------------------------------------------------------------------------
    def setup(self) -> None:
        from transformers import set_seed

        cfg = self.cfg
        self.accelerator, self.precision = make_accelerator(cfg, self.run)
        acc = self.accelerator
        self.main = acc.is_main_process
        self.device = acc.device
        self.autocast_dtype = _DTYPES[self.precision] if self.precision in ("bf16", "fp16") else None
        progress = cfg.logging.progress and self.main

        self.data: TrainingData = load_training_data(cfg)
        self.labels: LabelSpace = self.data.labels
        self.tokenizer = load_tokenizer(cfg.model.name, trust_remote_code=cfg.model.trust_remote_code)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        split = self.data.split
        self.train_data: Tokenized = tokenize(split.train.texts, split.train.labels, self.tokenizer,
                                              cfg.model.max_length, progress=progress, desc="tokenize train")
        self.val_data: Tokenized = tokenize(split.validation.texts, split.validation.labels, self.tokenizer,
                                            cfg.model.max_length, progress=progress, desc="tokenize validation")

        set_seed(cfg.seed)  # head init, adapter init and dropout all follow the training seed
        self.adapted: AdaptedModel = build_adapted_model(cfg, self.labels)
        model = self.adapted.model
        if self.precision == "bf16":
            hold_frozen_in(model, torch.bfloat16)
        model.to(self.device)
        self.inner = encoder_model(model)
        self.prefix = frozen_prefix_length(model) if cfg.speed.cache_frozen_prefix else 0
        self.cache_storage: str | None = None  # 'memory' or 'disk', decided when the states are computed
        # Not under torch.compile: it generates a fast dropout itself, and numpy calls would break its graph.
        will_compile = cfg.speed.compile and not self.prefix
        self.fast_dropouts = (use_fast_dropout(model) if cfg.speed.fast_dropout and self.device.type == "cpu"
                              and not will_compile else 0)
        self.train_source = TokenBatches(self.train_data, self.pad_id)
        self.val_source = TokenBatches(self.val_data, self.pad_id)

        n_classes = len(self.labels.names)
        self.class_weights = None
        if cfg.optim.class_weights == "balanced":
            self.class_weights = class_weight_tensor(self.train_data.labels, n_classes).to(self.device)

        o = cfg.optim
        optimizer = torch.optim.AdamW(param_groups(model, o.weight_decay), lr=o.lr, betas=o.betas, eps=o.eps)
        self.world, self.rank = acc.num_processes, acc.process_index
        self.micro_per_epoch = self._epoch_batches(0).__len__()
        if self.micro_per_epoch == 0:
            raise ConfigError(f"optim.batch_size={o.batch_size} x {self.world} processes leaves no full batch for "
                              f"{len(self.train_data)} training rows; lower the batch size")
        self.steps_per_epoch = math.ceil(self.micro_per_epoch / o.grad_accum)
        self.total_steps = o.max_steps or max(1, math.ceil(o.epochs * self.steps_per_epoch))
        warmup = o.warmup_steps if o.warmup_steps is not None else int(round(o.warmup_ratio * self.total_steps))
        if warmup >= self.total_steps and self.total_steps > 1:
            raise ConfigError(f"warmup of {warmup} steps is not shorter than the whole run ({self.total_steps} "
                              "steps); lower optim.warmup_steps or optim.warmup_ratio")
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(o.scheduler, warmup, self.total_steps))
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self.scheduler = scheduler  # stepped by hand once per optimizer step, on every process alike
        # Compiled for the training forward only: the module (names, checkpoints, evaluation) stays the same.
        # dynamic=True: length buckets change the sequence length every batch; one graph serves them all.
        # Not with a cached prefix: its forward swaps modules in and out, which would recompile every step.
        self.compiled = will_compile
        if cfg.speed.compile and self.prefix and self.main:
            tqdm.write("speed.compile is not applied: the frozen prefix is cached, and its forward swaps modules")
        self.train_forward = torch.compile(self.model, dynamic=True) if self.compiled else self.model
        self.eval_every = cfg.eval.every_steps or self.steps_per_epoch
        self.state = LoopState()

        if self.resume:
            loop = load_checkpoint(self.run.last, acc.unwrap_model(self.model), self.optimizer, self.scheduler)
            self.state = LoopState(**loop)
            if self.main:
                self.run.truncate_metrics(self.state.step)
        elif self.main:
            self.run.reset()  # only now: a config, data or model error above leaves an older run untouched
            self._write_run_header()
        if cfg.logging.tensorboard:
            acc.init_trackers("lorabudget", config={k: str(v) for k, v in cfg.model_dump().items()})

    def _epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """This process's micro-batches of an epoch: a pure function of (seed, epoch), equal count per process."""
        s = self.cfg.speed
        batches = train_batches(self.train_data.lengths, self.cfg.optim.batch_size, self.cfg.seed, epoch,
                                bucket=s.length_buckets, window_batches=s.bucket_size_batches)
        per_rank = len(batches) // self.world
        return batches[self.rank::self.world][:per_rank]

    def _write_run_header(self) -> None:
        run = self.run
        atomic_write_text(run.config, dump_config(self.cfg))
        atomic_write_json(run.labels, self.labels.to_json())
        split = self.data.split
        atomic_write_json(run.path / "split.json", {
            "source": self.data.dataset.source, "train_rows": len(split.train),
            "validation_rows": len(split.validation), "validation_hash": split.validation_hash,
            "split_seed": self.cfg.data.split_seed})
        run.set_status("running")

    # ---- the loop ------------------------------------------------------------------------------------------
    def train(self) -> dict:
        cfg, acc, st = self.cfg, self.accelerator, self.state
        o = cfg.optim
        model, optimizer, scheduler = self.model, self.optimizer, self.scheduler
        model.train()
        bar = tqdm(total=self.total_steps, initial=st.step, desc="train", unit="step",
                   disable=not (cfg.logging.progress and self.main))
        window_loss, window_n = 0.0, 0
        started = time.perf_counter()
        if self.prefix:
            self._cache_prefix()  # inside the timed span: the caching pass is part of training's cost
        batches = self._epoch_batches(st.epoch)
        while st.step < self.total_steps and not st.stopped_early:
            if st.step_in_epoch >= self.steps_per_epoch:  # epoch boundary
                st.epoch, st.step_in_epoch = st.epoch + 1, 0
                batches = self._epoch_batches(st.epoch)
            first = st.step_in_epoch * o.grad_accum
            micro = batches[first:first + o.grad_accum]
            step_loss = 0.0
            for i, index in enumerate(micro):
                batch = self.train_source.batch(index)
                # DDP averages gradients only on the last micro-batch of an accumulation window
                sync = acc.no_sync(model) if i < len(micro) - 1 else nullcontext()
                with sync, self._autocast():
                    logits = self._forward(self.train_forward, batch, self.device)
                    loss = F.cross_entropy(logits.float(), batch["labels"].to(self.device), weight=self.class_weights,
                                           label_smoothing=o.label_smoothing)
                    acc.backward(loss / len(micro))
                step_loss += loss.item() / len(micro)
                st.samples += len(index) * self.world
            if not math.isfinite(step_loss):
                self._fail(f"the training loss became {step_loss} at step {st.step + 1}; the last good checkpoint "
                           "is kept. Lower optim.lr, or use fp32/bf16 instead of fp16")
            if o.max_grad_norm is not None:
                acc.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], o.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            st.step += 1
            st.step_in_epoch += 1
            window_loss, window_n = window_loss + step_loss, window_n + 1
            bar.update(1)

            if st.step % cfg.logging.every_steps == 0 or st.step == self.total_steps:
                mean = float(acc.reduce(torch.tensor(window_loss / window_n, device=self.device), "mean"))
                self._log({"step": st.step, "epoch": round(st.step / self.steps_per_epoch, 4), "train_loss": mean,
                           "lr": scheduler.get_last_lr()[0]})
                bar.set_postfix(loss=f"{mean:.4f}")
                window_loss, window_n = 0.0, 0

            if st.step % self.eval_every == 0 or st.step == self.total_steps:
                st.train_seconds += time.perf_counter() - started
                self._evaluate_and_checkpoint(bar)
                started = time.perf_counter()
        st.train_seconds += time.perf_counter() - started
        bar.close()
        return self._finish()

    def _forward(self, model, batch: dict, device: torch.device) -> torch.Tensor:
        """Logits for a batch of token ids, or of cached states after the frozen prefix."""
        mask = batch["attention_mask"].to(device, non_blocking=True)
        if "inputs_embeds" in batch:
            with layers_from(self.inner, self.prefix):
                return model(inputs_embeds=batch["inputs_embeds"].to(device, non_blocking=True),
                             attention_mask=mask).logits
        return model(input_ids=batch["input_ids"].to(device, non_blocking=True), attention_mask=mask).logits

    def _cache_prefix(self) -> None:
        progress = self.cfg.logging.progress and self.main
        model = self.accelerator.unwrap_model(self.model)
        self.cache_storage, need, available = decide_storage(
            self.cfg.speed.prefix_cache_storage, [self.train_data, self.val_data], self.inner.config.hidden_size)
        if self.main and self.cfg.speed.prefix_cache_storage == "auto" and self.cache_storage == "disk":
            tqdm.write(f"the cached states take {need / 2**30:,.1f} GiB, more than half of the "
                       f"{available / 2**30:,.1f} GiB of RAM available: they go to a memory-mapped file under "
                       f"{cache_dir()} (speed.prefix_cache_storage=memory keeps them in RAM)")
        on_disk = cache_dir() / "prefix" if self.cache_storage == "disk" else None
        kwargs = dict(pad_id=self.pad_id, device=self.device, progress=progress, on_disk=on_disk,
                      autocast=self._autocast if self.autocast_dtype is not None else None)
        self.train_source = compute_states(model, self.train_data, self.prefix, **kwargs)
        self.val_source = compute_states(model, self.val_data, self.prefix, **kwargs)
        if self.main and progress:
            mb = (self.train_source.nbytes() + self.val_source.nbytes()) / 2**20
            tqdm.write(f"cached the frozen layers 0-{self.prefix - 1}: {mb:,.0f} MiB of hidden states")

    def _autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def _log(self, record: dict) -> None:
        if self.main:
            self.run.append_metrics(record)
        if self.cfg.logging.tensorboard:
            self.accelerator.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def validate(self) -> dict:
        acc = self.accelerator
        rows, logits = predict_logits(acc.unwrap_model(self.model), self.val_source,
                                      batch_size=self.cfg.eval.batch_size, device=self.device,
                                      dtype=self.autocast_dtype, shard=(self.rank, self.world), forward=self._forward)
        if self.world > 1:
            from accelerate.utils import gather_object

            parts = gather_object([(rows, logits)])
            rows = np.concatenate([r for r, _ in parts])
            logits = np.concatenate([lg for _, lg in parts if lg.size])
        logits = ordered(rows, logits, len(self.val_data))
        labels = self.val_data.labels
        loss = float(F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)))
        scores = classification_scores(labels, logits.argmax(1), self.labels.names)
        scores["loss"] = loss
        return scores

    def _evaluate_and_checkpoint(self, bar) -> None:
        cfg, st = self.cfg, self.state
        scores = self.validate()
        value = scores[cfg.eval.metric]
        improved = is_better(value, st.best_metric, cfg.eval.metric, cfg.eval.min_delta)
        if improved:
            st.best_metric, st.best_step, st.evals_without_improvement = value, st.step, 0
            st.best_scores = {k: scores[k] for k in ("accuracy", "macro_f1", "loss")}
        else:
            st.evals_without_improvement += 1
        patience = cfg.eval.early_stopping_patience
        if patience is not None and st.evals_without_improvement >= patience:
            st.stopped_early = True
        if self.on_evaluate is not None and self.on_evaluate(st.step, scores):
            st.stopped_early, st.stopped_by = True, "callback"
        self._log({"step": st.step, "epoch": round(st.step / self.steps_per_epoch, 4),
                   "val_loss": scores["loss"], "val_accuracy": scores["accuracy"], "val_macro_f1": scores["macro_f1"],
                   "train_seconds": round(st.train_seconds, 2)})  # training time so far: time-to-accuracy
        bar.set_postfix(val_acc=f"{scores['accuracy']:.4f}")
        if self.main:
            model = self.accelerator.unwrap_model(self.model)
            if improved:
                save_weights(model, self.run.best)
            save_checkpoint(self.run.last, model, self.optimizer, self.scheduler, st.to_json())
        self.last_scores = scores
        self.accelerator.wait_for_everyone()

    def _fail(self, message: str) -> None:
        if self.main:
            self.run.set_status("failed", reason=message, step=self.state.step)
        raise TrainingError(message)

    # ---- finish --------------------------------------------------------------------------------------------
    def _finish(self) -> dict:
        acc, st, cfg = self.accelerator, self.state, self.cfg
        final_scores = getattr(self, "last_scores", None) or self.validate()
        summary = None
        if self.main:
            model = acc.unwrap_model(self.model)
            load_weights(model, self.run.best)  # the adapter we ship is the best one, not the last
            self._save_adapter(model)
            split = self.data.split
            summary = {
                "finished": True,
                "best": {"step": st.best_step, "metric": cfg.eval.metric, **(st.best_scores or {})},
                "final": {"step": st.step, **{k: final_scores[k] for k in ("accuracy", "macro_f1", "loss")}},
                "steps": st.step, "total_steps": self.total_steps, "epochs": round(st.step / self.steps_per_epoch, 4),
                "stopped_early": st.stopped_early,
                "stopped_by": st.stopped_by or ("early_stopping" if st.stopped_early else None),
                "trainable_params": self.adapted.breakdown.total,
                "budget": cfg.budget,
                "breakdown": self.adapted.breakdown.to_json(),
                "train_seconds": round(st.train_seconds, 2),
                "train_samples_per_s": round(st.samples / max(st.train_seconds, 1e-9), 2),
                "train_samples": st.samples,
                "num_processes": self.world,
                "encoder_layers": getattr(model.config, "num_hidden_layers", None),
                "frozen_prefix_cached_layers": self.prefix,
                "prefix_cache_storage": self.cache_storage,
                "compiled": self.compiled,
                "fast_dropout_modules": self.fast_dropouts,
                "threads": torch.get_num_threads(),
                "device": str(self.device), "precision": self.precision,
                "data": {"source": self.data.dataset.source, "train_rows": len(split.train),
                         "validation_rows": len(split.validation), "validation_hash": split.validation_hash,
                         "split_seed": cfg.data.split_seed},
                "labels": self.labels.names,
                "versions": library_versions(),
            }
            from .plots import plot_training_curves

            plot_training_curves(self.run.read_metrics(), self.run.plots)
            atomic_write_json(self.run.summary_file, summary)
            self.run.set_status("finished")
        acc.wait_for_everyone()
        if cfg.logging.tensorboard:
            acc.end_training()
        return summary or {}

    def _save_adapter(self, model) -> None:
        from .rundir import replace_dir

        tmp = self.run.adapter.with_name("adapter.tmp")
        model.save_pretrained(str(tmp), safe_serialization=True)
        self.tokenizer.save_pretrained(str(tmp))
        atomic_write_json(tmp / "lorabudget_head.json", {
            "head": self.adapted.head.type, "base_model": self.cfg.model.name,
            "stock_loadable": self.adapted.head.stock_loadable, "labels": self.labels.names,
            "note": "load with lorabudget.load(RUN); with head 'default' or 'pooler' PeftModel.from_pretrained onto "
                    "AutoModelForSequenceClassification works too"})
        replace_dir(tmp, self.run.adapter)

    def describe(self) -> str:
        b = self.adapted.breakdown
        return format_breakdown(b, self.cfg.budget)


def train(cfg: Config, run: RunDir, *, resume: bool = False, on_ready=None,
          on_evaluate: Callable[[int, dict], bool] | None = None) -> dict:
    """Train `cfg` into `run` (a RunDir the caller has checked with `check_new`, or an unfinished one to resume).
    Returns the summary (empty on non-main processes)."""
    recipe = TrainingRecipe(cfg, run, resume=resume, on_evaluate=on_evaluate)
    recipe.setup()
    if on_ready is not None:
        on_ready(recipe)
    return recipe.train()
