"""An exponential moving average (EMA) of the trainable weights (optim.ema_decay): no parameter added, the budget
unchanged; when on, every evaluation, the best checkpoint and the shipped adapter use the averaged weights.

Why by hand rather than `torch.optim.swa_utils.AveragedModel` with `get_ema_multi_avg_fn`: AveragedModel deep-copies
the whole module, frozen encoder included (a second roberta-base in memory to average under a million weights), its
state dict is the whole model's, and its decay is fixed. Here the shadow is an fp32 copy of the trained parameters
only (the names `model.weights.trainable_state` uses, so it goes into checkpoints as one small safetensors file),
and the decay may warm up.

The warmup (optim.ema_warmup, TensorFlow's `num_updates` correction): decay_n = min(decay, (1 + n) / (10 + n)) at
the n-th update. The shadow starts at the initial weights (random head, zero LoRA B), and with decay 0.999 it would
take thousands of steps to forget them: a CPU run of a few hundred steps would evaluate mostly its initialisation.
With the warmup the early shadow is close to a plain mean over the steps so far, and the full decay applies once
(1 + n) / (10 + n) exceeds it (n = 8,991 for 0.999; n = 89 for 0.99).

Several processes: DDP keeps the parameters equal on every process, so each keeps an equal shadow; the main one
writes it. A self-training round starts its shadow afresh at the weights it starts from (selftrain.apply_round), as
it starts a fresh optimizer.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch

from ..errors import DamagedFileError
from ..model.budget import trained_parameters

EMA_FILE = "ema.safetensors"  # in each checkpoint folder, beside trainable.safetensors
_UPDATES = "#updates"  # the update count, stored with the shadow: '#' is in no parameter name


class TrainableEMA:
    """shadow <- decay_n * shadow + (1 - decay_n) * weights after each optimizer step, over the trained parameters."""

    def __init__(self, model: torch.nn.Module, decay: float, warmup: bool = True):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the EMA decay must lie strictly between 0 and 1, got {decay}")
        self.decay, self.warmup = decay, warmup
        named = list(trained_parameters(model))
        self.names, self.params = [n for n, _ in named], [p for _, p in named]
        self.shadow: list[torch.Tensor] = []
        self.updates = 0
        self._applied = False
        self.reset()

    def reset(self) -> None:
        """Start afresh at the current weights (a new run, or a self-training round's start)."""
        self.shadow = [p.detach().to(torch.float32, copy=True) for p in self.params]
        self.updates = 0

    def decay_now(self) -> float:
        """The decay the next update uses."""
        n = self.updates
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self) -> None:
        """One optimizer step's update (not one per micro-batch: grad accumulation changes nothing here)."""
        weight = 1.0 - self.decay_now()
        # lerp: shadow + weight * (p - shadow), one fused kernel over every tensor on a GPU
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in self.params], weight)
        self.updates += 1

    @contextmanager
    def applied(self):
        """The averaged weights in the model for the block (evaluation, saving the best), the trained ones put back
        bit for bit afterwards. Re-entrant: an inner `applied` inside an outer one changes nothing."""
        if self._applied:
            yield
            return
        raw = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, s in zip(self.params, self.shadow):
                p.copy_(s)
        self._applied = True
        try:
            yield
        finally:
            with torch.no_grad():
                for p, r in zip(self.params, raw):
                    p.copy_(r)
            self._applied = False

    def state(self) -> dict[str, torch.Tensor]:
        """The shadow by parameter name, and the update count: what a checkpoint holds."""
        out = {n: s.detach().to("cpu").contiguous().clone() for n, s in zip(self.names, self.shadow)}
        out[_UPDATES] = torch.tensor(self.updates, dtype=torch.int64)
        return out

    def load_state(self, state: dict[str, torch.Tensor] | None, path: Path, way_out: str) -> None:
        """Exactly what `state()` gave: same names, same shapes; anything else is a damaged or foreign file."""
        if state is None:
            raise DamagedFileError(f"{path} is missing: the run averages its weights (optim.ema_decay) but the "
                                   "checkpoint holds no average", way_out)
        names = set(state) - {_UPDATES}
        if _UPDATES not in state or names != set(self.names):
            raise DamagedFileError(f"{path} does not hold this model's weight average (it names "
                                   f"{len(names)} parameters where {len(self.names)} train)", way_out)
        for s, n in zip(self.shadow, self.names):
            if state[n].shape != s.shape:
                raise DamagedFileError(f"{path}: {n} has shape {tuple(state[n].shape)}, not {tuple(s.shape)}",
                                       way_out)
            s.copy_(state[n])
        self.updates = int(state[_UPDATES])


def make_ema(model: torch.nn.Module, o) -> TrainableEMA | None:
    """The run's weight average (`o`: OptimConfig), or None when optim.ema_decay is not set."""
    return None if o.ema_decay is None else TrainableEMA(model, o.ema_decay, o.ema_warmup)


@contextmanager
def evaluated_weights(recipe):
    """The weights a recipe evaluates and ships: the average when it keeps one, else the trained ones."""
    if recipe.ema is None:
        yield
    else:
        with recipe.ema.applied():
            yield
