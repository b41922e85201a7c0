"""The training recipe: setup -> train -> finish, one readable loop on `accelerate`.

The same code runs on a CPU, a GPU, or several processes under `accelerate launch` / `torchrun` (data parallel:
each process takes every world-th batch, or a world-th of each batch with speed.processes = the world; gradients
are averaged by DDP). Only the main process writes the run directory. The loop reads top to bottom: batch,
forward under autocast, loss, backward (accumulating), clip, step, schedule, log, evaluate, checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from functools import partial

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import Config
from ..model.adapters import scaled_update
from ..model.budget import format_breakdown
from ..model.methods import METHODS
from ..rundir import RunDir
from ..runtime.augment import token_noise
from ..runtime.batching import TokenBatches
from ..runtime.forward import forward_logits
from ..runtime.precision import DTYPES, autocast
from .accelerator import make_accelerator
from .averaging import evaluated_weights, make_ema
from .evaluation import scores_of_every_set
from .losses import training_loss, warn_without_dropout
from .optim import class_weight_tensor, make_optimizer, plan_schedule
from .run_files import checkpoint, evaluate_and_checkpoint, finish_run, log_train_loss, resume_run, start_run
from .selftrain import begin_next_round, prepare_target, rebuild_round
from .setup import cache_prefix, epoch_batches, prepare_data, prepare_model
from .stopping import StopSignals, check_finite, run_writer


class TrainingRecipe:
    """One training run, from config to finished run directory (torchtune's recipe shape)."""

    def __init__(self, cfg: Config, run: RunDir, *, resume: bool = False,
                 on_evaluate: Callable[[int, dict], bool] | None = None):
        # on_evaluate(step, validation scores) -> True asks the run to stop now (a sweep pruning a poor trial);
        # the run then finishes normally, best adapter saved, with `stopped_by: "callback"` in its summary.
        self.cfg, self.run, self.resume, self.on_evaluate = cfg, run, resume, on_evaluate
        self.stop, self.state = StopSignals(), None  # the signals' flag is set by `train()`; state by setup

    # ---- setup ---------------------------------------------------------------------------------------------
    def setup(self) -> None:
        from transformers import set_seed

        cfg = self.cfg
        acc, self.precision = make_accelerator(cfg, self.run)
        self.accelerator, self.main, self.device = acc, acc.is_main_process, acc.device
        self.world, self.rank = acc.num_processes, acc.process_index
        self.dtype = DTYPES[self.precision]  # what the forward autocasts to (fp32: no autocast)
        self.progress = cfg.logging.progress and self.main
        self.say = tqdm.write if self.main else lambda text: None  # a line for the user, from one process

        d = prepare_data(cfg, self.progress, self.say)
        self.data, self.labels, self.tokenizer, self.pad_id = d.data, d.data.labels, d.tokenizer, d.pad_id
        self.train_data, self.val_data, self.extra_data = d.train, d.validation, d.extra
        self.labelled_train, self.train_labels = d.train, np.asarray(d.train.labels)
        self.target_data = prepare_target(self)  # self-training's unlabelled target, when on

        set_seed(cfg.seed)  # head init, adapter init and dropout all follow the training seed
        m = prepare_model(cfg, self.labels, self.precision, self.device, say=self.say)
        self.adapted, model, self.inner, self.prefix = m.adapted, m.adapted.model, m.inner, m.prefix
        self.compiled, self.fast_dropouts = m.compiled, m.fast_dropouts
        self.fast_attention_dropout, self.input_casts_skipped = m.fast_attention_dropout, m.input_casts_skipped
        self.cache_storage: str | None = None  # 'memory' or 'disk', decided when the states are computed
        self.train_source, self.val_source, self.extra_sources = (
            TokenBatches(self.train_data, self.pad_id, token_noise(cfg.data, cfg.seed)),
            TokenBatches(self.val_data, self.pad_id),
            {name: TokenBatches(data, self.pad_id) for name, data in self.extra_data.items()})
        self.class_weights = (class_weight_tensor(self.train_data.labels, len(self.labels.names)).to(self.device)
                              if cfg.optim.class_weights == "balanced" else None)

        self.schedule = plan_schedule(cfg.optim, len(self._epoch_batches(0)), len(self.train_data), self.world)
        optimizer, self.scheduler = make_optimizer(model, cfg.optim, self.schedule)
        self.model, self.optimizer = acc.prepare(model, optimizer)  # the scheduler is stepped by hand, alike
        # dynamic=True: length buckets change the sequence length every batch; one graph serves them all.
        self.train_forward = torch.compile(self.model, dynamic=True) if self.compiled else self.model
        self.forward = partial(forward_logits, inner=self.inner)
        # Both regularisers add no parameter: the weight average (None when off) and the loss, R-Drop's when on.
        self.ema = make_ema(acc.unwrap_model(self.model), cfg.optim)
        # what the adapter method does beside the optimizer (AdaLoRA: rank allocation, a regulariser); its hooks
        self.method = METHODS[cfg.adapter.method].train_hooks(acc.unwrap_model(self.model), cfg.adapter,
                                                              self.total_steps)
        self.loss = partial(training_loss, forward=self.forward, device=self.device, weight=self.class_weights,
                            label_smoothing=cfg.optim.label_smoothing, rdrop_alpha=cfg.optim.rdrop_alpha,
                            regulariser=self.method.regulariser)
        warn_without_dropout(cfg.optim.rdrop_alpha, model, self.inner, self.prefix, self.say)
        self.eval_every = cfg.eval.every_steps or self.schedule.steps_per_epoch
        if self.resume:
            rebuild_round(self)  # a run killed in a self-training round: that round's data, schedule, optimizer
        self.state = resume_run(self) if self.resume else start_run(self)
        if cfg.logging.trackers:  # after start_run: a new run's folder is cleared first
            from .trackers import start_trackers
            start_trackers(acc, cfg, self.run)

    # Shortcuts for callers that announce the run (cli, sweep, benchmarks)
    total_steps = property(lambda self: self.schedule.total_steps)
    steps_per_epoch = property(lambda self: self.schedule.steps_per_epoch)

    def _epoch_batches(self, epoch: int) -> list[np.ndarray]:
        round_ = self.state.round if self.state is not None else 0  # each self-training round its own shuffles
        return epoch_batches(self.cfg, self.train_data.lengths, epoch + 1000 * round_, self.rank, self.world)

    # ---- the loop ------------------------------------------------------------------------------------------
    def train(self) -> dict:
        self.model.train()
        self.started = time.perf_counter()
        if self.prefix:  # inside the timed span: the caching pass is part of training's cost
            cache_prefix(self)
        self._phase()
        while begin_next_round(self):  # self-training rounds, when asked (selftrain.*)
            self._phase()
        self.state.train_seconds += time.perf_counter() - self.started
        return self._finish()

    def _phase(self) -> None:
        """The supervised phase, or one self-training round: steps until the phase's last, evaluating and
        checkpointing on the way."""
        cfg, acc, st, o = self.cfg, self.accelerator, self.state, self.cfg.optim
        model, optimizer, scheduler = self.model, self.optimizer, self.scheduler
        bar = tqdm(total=self.total_steps, initial=st.step, desc=f"selftrain {st.round}" if st.round else "train",
                   unit="step", disable=not self.progress)
        batches = self._epoch_batches(st.epoch)
        while st.step < self.total_steps and not st.stopped_early:
            if st.step_in_epoch >= self.steps_per_epoch:  # epoch boundary
                st.epoch, st.step_in_epoch = st.epoch + 1, 0
                batches = self._epoch_batches(st.epoch)
            first = st.step_in_epoch * o.grad_accum
            micro = batches[first:first + o.grad_accum]
            step_loss = step_kl = 0.0
            for i, index in enumerate(micro):
                batch = self.train_source.batch(index)
                # DDP averages gradients only on the last micro-batch of an accumulation window
                sync = acc.no_sync(model) if i < len(micro) - 1 else nullcontext()
                with sync, autocast(self.device, self.dtype):
                    loss, kl = self.loss(self.train_forward, batch)
                    acc.backward(loss / len(micro))
                step_loss += loss.item() / len(micro)
                step_kl += 0.0 if kl is None else kl.item() / len(micro)
                st.samples += len(index) * self.world
            check_finite(self, step_loss)
            if o.max_grad_norm is not None:
                acc.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], o.max_grad_norm)
            optimizer.step()
            self.method.after_step(st.step + 1)  # before zero_grad: AdaLoRA scores ranks by |weight x grad|
            if self.ema is not None:
                self.ema.update()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            st.step += 1
            st.step_in_epoch += 1
            st.window_loss, st.window_n = st.window_loss + step_loss, st.window_n + 1
            st.window_kl += step_kl
            bar.update(1)

            if st.step % cfg.logging.every_steps == 0 or st.step == self.total_steps:
                log_train_loss(self, bar)
            evaluate = (st.step - st.round_start) % self.eval_every == 0 or st.step == self.total_steps
            stop = self.stop.agreed(acc)  # a signal: checkpoint here, then stop
            if evaluate or stop:
                st.train_seconds += time.perf_counter() - self.started
                if st.step == self.total_steps:
                    bar.close()  # its elapsed time is training's: the phase's last evaluation is not part of it
                evaluate_and_checkpoint(self, bar) if evaluate else checkpoint(self)
                if stop:
                    bar.close()
                    raise self.stop.interrupted(self.run, st.step)
                self.started = time.perf_counter()
        bar.close()

    def validate(self) -> dict:
        with evaluated_weights(self), scaled_update(self.model, self.cfg.adapter.inference_scale):  # as shipped
            return scores_of_every_set(self)

    # ---- finish --------------------------------------------------------------------------------------------
    def _finish(self) -> dict:
        final_scores = getattr(self, "last_scores", None) or self.validate()
        return finish_run(self, final_scores)

    def describe(self) -> str:
        return format_breakdown(self.adapted.breakdown, self.cfg.budget)


def train(cfg: Config, run: RunDir, *, resume: bool = False, on_ready=None,
          on_evaluate: Callable[[int, dict], bool] | None = None) -> dict:
    """Train `cfg` into `run` (a RunDir the caller has checked with `check_new`, or an unfinished one to resume).
    Returns the summary (empty on non-main processes)."""
    recipe = TrainingRecipe(cfg, run, resume=resume, on_evaluate=on_evaluate)
    # One writer per run dir; a signal stops at a safe point; a refused write or a stop marks status.json.
    with run_writer(run, started=lambda: recipe.state is not None) as recipe.stop:
        recipe.setup()
        if on_ready is not None:
            on_ready(recipe)
        return recipe.train()
