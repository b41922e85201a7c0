"""AdaLoRA (Zhang et al. 2023, "Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning"), through peft:
each adapted linear layer holds its update in SVD form, P diag(E) Q (peft's lora_B, lora_E, lora_A), starting at
rank `adapter.r` everywhere (peft's init_r); during training the triplets that matter least, scored by a smoothed
|weight x gradient|, are masked (their E set to 0) until the total rank left is `adapter.target_r` x modules.

What trains is the initial ranks: masked triplets keep their A and B rows, and E may grow back before the next
allocation, so r x (fan_in + fan_out) + r parameters per adapted module train throughout; that is what the budget
counts. The shipped adapter drops the triplets whose E is 0 (at most as many parameters; `pruning_plan`).

Three things peft leaves to its caller, done here and driven by the recipe through `Method.training`:
- `update_and_allocate(step)` after each optimizer step, before the gradients are zeroed (`AdaLoraTraining`);
- the orthogonality regulariser, which peft adds only to a loss the model computes itself (`outputs.loss`), while
  lorabudget computes its loss from the logits: `AdaLoraTraining.regulariser` is peft's term, added by the recipe;
- the allocator's statistics (ipt, exp_avg_ipt, exp_avg_unc) and the rank pattern so far live outside the state
  dict: `state` / `load_state` put them in checkpoints as safetensors, so a killed run resumes bit for bit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ConfigError, DamagedFileError

# The adapter section's AdaLoRA fields at their defaults (config/schema.py documents each): every other method
# refuses other values (methods.SWITCHES). The schedule, in steps or as a fraction of the run's optimizer steps,
# suits runs of a few hundred to a few thousand steps; deltaT 10 re-allocates often enough in 300 steps.
DEFAULTS = {"target_r": 4, "tinit": 0.1, "tfinal": 0.2, "deltaT": 10, "beta1": 0.85, "beta2": 0.85,
            "orth_reg_weight": 0.1}
STATE_FILE = "adalora.safetensors"  # in each checkpoint folder, beside trainable.safetensors
_FORMAT = "#format"  # a marker stored with the statistics: '#' is in no parameter name
_STATS = ("ipt", "exp_avg_ipt", "exp_avg_unc")
_PATTERN = "rank_pattern"

if TYPE_CHECKING:  # torch is imported where it is used: methods.py, which reads this module, stays light
    from pathlib import Path

    import torch


def peft_config(adapter, place):
    from peft import AdaLoraConfig, TaskType

    # total_step, tinit and tfinal are the run's, known once its schedule is: AdaLoraTraining sets them (peft's
    # RankAllocator reads them at every step). Until then a schedule that passes peft's own check stands in; a
    # model built only to be counted or to predict never allocates.
    return AdaLoraConfig(
        task_type=TaskType.SEQ_CLS, init_r=adapter.r, target_r=adapter.target_r, lora_alpha=adapter.alpha,
        lora_dropout=adapter.dropout, target_modules=place.targets, modules_to_save=list(place.modules_to_save),
        bias=adapter.bias, tinit=0, tfinal=0, total_step=1, deltaT=adapter.deltaT, beta1=adapter.beta1,
        beta2=adapter.beta2, orth_reg_weight=adapter.orth_reg_weight)


def linear_params(fan_in: int, fan_out: int, r: int, options: dict) -> dict[str, int]:
    # Q (lora_A) is r x in, P (lora_B) out x r, E (lora_E) r x 1: the same groups as LoRA's, whose names they share
    return {"lora": r * (fan_in + fan_out) + r}


def config_problem(adapter) -> str | None:
    if adapter.target_r >= adapter.r:
        return (f"adapter.target_r={adapter.target_r} must be below adapter.r={adapter.r}: AdaLoRA starts every "
                "module at rank r and prunes to target_r on average (for no pruning use adapter.method=lora)")
    fractions = [v for v in (adapter.tinit, adapter.tfinal) if isinstance(v, float)]
    if len(fractions) == 2 and sum(fractions) >= 1:
        return (f"adapter.tinit={adapter.tinit} and adapter.tfinal={adapter.tfinal} leave no part of the run to "
                "allocate ranks in; their sum must stay below 1")
    return None


def steps(value: int | float, total: int) -> int:
    """adapter.tinit or tfinal in optimizer steps: an int is steps, a float below 1 a fraction of the run."""
    return int(round(value * total)) if isinstance(value, float) else int(value)


def _svd_modules(model) -> dict[str, torch.nn.Module]:
    """The adapted modules (peft's SVDLinear) by their name in the base model, for the adapter 'default'."""
    from peft.tuners.adalora import AdaLoraLayer

    base = model.get_base_model()
    return {n: m for n, m in base.named_modules() if isinstance(m, AdaLoraLayer) and "default" in m.lora_E}


def is_adalora(model) -> bool:
    config = getattr(model, "peft_config", {}).get("default")
    return config is not None and str(getattr(config, "peft_type", "")).endswith("ADALORA")


def pruning_plan(model, total: int) -> dict | None:
    """For an AdaLoRA model, the ranks at the start and the end and what the adapter holds once pruned if every
    module ends at target_r (`params_at_end`; the split is decided in training by importance, so the exact figure
    differs, and never exceeds `total`, since no module ends above its initial rank). None for other models."""
    if not is_adalora(model):
        return None
    config = model.peft_config["default"]
    modules = _svd_modules(model)
    shed = sum((m.r["default"] - config.target_r) * (m.in_features + m.out_features + 1) for m in modules.values())
    return {"init_r": config.init_r, "target_r": config.target_r, "modules": len(modules),
            "ranks_at_start": sum(m.r["default"] for m in modules.values()),
            "ranks_at_end": config.target_r * len(modules), "params_at_end": total - shed}


def kept_ranks(model) -> dict[str, list[bool]]:
    """peft's rank pattern of the weights in the model: a triplet is kept where its singular value E is not 0.
    Masked triplets hold E = 0 exactly and add nothing to the output, so dropping them (as peft does when it
    saves) keeps the predictions of the weights as evaluated, at whichever step they were the best."""
    return {f"{name}.lora_E.default": (m.lora_E["default"] != 0).view(-1).tolist()
            for name, m in _svd_modules(model).items()}


class AdaLoraTraining:
    """What AdaLoRA does in the training loop beside the optimizer (see `methods.MethodTraining`)."""

    file = STATE_FILE

    def __init__(self, model, adapter, total_steps: int):
        self.model, self.tuner = model, model.base_model  # the PeftModel, and peft's AdaLoraModel inside it
        config = self.config = model.peft_config["default"]
        tinit, tfinal = steps(adapter.tinit, total_steps), steps(adapter.tfinal, total_steps)
        if tinit >= total_steps - tfinal:
            raise ConfigError(f"adapter.tinit={adapter.tinit} ({tinit} steps) and adapter.tfinal={adapter.tfinal} "
                              f"({tfinal} steps) leave no step of this {total_steps}-step run to allocate AdaLoRA's "
                              "ranks in; lower them or train longer")
        config.tinit, config.tfinal = tinit, tfinal
        self.tuner.rankallocator.set_total_step(total_steps)  # peft's own setter: the config's total_step
        self.allocator = self.tuner.rankallocator
        self.shipped: dict[str, list[bool]] | None = None
        self.allocated, self.shed = None, 0  # set by before_save
        # P and Q of every adapted module, for the regulariser (peft masks E only: these stay the same tensors)
        self.factors = [(p, ".lora_A." in n) for n, p in self.tuner.model.named_parameters()
                        if (".lora_A." in n or ".lora_B." in n) and n.endswith(".default")]
        self.regulariser = self._orthogonality if config.orth_reg_weight > 0 else None

    def after_step(self, step: int) -> None:
        """peft's allocation after optimizer step `step` (1-based: the last step, total_steps, ends the pruning
        when tfinal is 0), while the gradients it scores are still there."""
        self.tuner.update_and_allocate(step)

    def _orthogonality(self) -> torch.Tensor:
        """peft's term: weight x the mean over P and Q matrices of ||Q Q^T - I||_F and ||P^T P - I||_F, in fp32
        whatever the autocast around it."""
        import torch

        total = 0.0
        with torch.autocast(self.factors[0][0].device.type, enabled=False):
            for p, is_q in self.factors:
                cov = p @ p.T if is_q else p.T @ p
                total = total + torch.linalg.matrix_norm(cov - torch.eye(cov.shape[0], device=cov.device))
        return self.config.orth_reg_weight * total / len(self.factors)

    def state(self) -> dict[str, torch.Tensor]:
        """The allocator's statistics and the rank pattern so far (None until the first allocation): what a
        checkpoint holds beside the weights."""
        import torch

        out = {_FORMAT: torch.tensor(1, dtype=torch.int64)}
        for kind in _STATS:
            out.update({f"{kind}/{n}": t.detach().to("cpu").contiguous().clone()
                        for n, t in getattr(self.allocator, kind).items()})
        for n, kept in (self.config.rank_pattern or {}).items():
            out[f"{_PATTERN}/{n}"] = torch.tensor(kept, dtype=torch.bool)
        return out

    def load_state(self, state: dict[str, torch.Tensor] | None, path: Path, way_out: str) -> None:
        """Exactly what `state()` gave, checked against this model's parameters before anything is applied."""
        if state is None:
            raise DamagedFileError(f"{path} is missing: the run allocates AdaLoRA ranks but the checkpoint holds "
                                   "no allocator state", way_out)
        params = dict(self.tuner.model.named_parameters())
        stats: dict[str, dict[str, torch.Tensor]] = {kind: {} for kind in _STATS}
        pattern: dict[str, list[bool]] = {}
        for key, t in state.items():
            kind, _, name = key.partition("/")
            if key == _FORMAT:
                continue
            if name not in params or (kind in _STATS and t.shape != params[name].shape) or kind not in (
                    *_STATS, _PATTERN):
                raise DamagedFileError(f"{path} does not hold this model's AdaLoRA state ({key!r})", way_out)
            if kind == _PATTERN:
                pattern[name] = t.tolist()
            else:
                stats[kind][name] = t.to(params[name].device)
        if _FORMAT not in state:
            raise DamagedFileError(f"{path} does not hold AdaLoRA allocator state", way_out)
        for kind, values in stats.items():
            setattr(self.allocator, kind, values)
        self.config.rank_pattern = pattern or None

    def before_save(self) -> None:
        """The rank pattern of the weights about to be shipped (the best ones), for peft's save to prune by; the
        allocator's own last pattern is kept for the summary."""
        self.allocated = sum(map(sum, (self.config.rank_pattern or {}).values())) or None
        self.shipped = self.config.rank_pattern = kept_ranks(self.model)
        modules = _svd_modules(self.model)
        self.shed = sum((m.r["default"] - sum(self.shipped[f"{name}.lora_E.default"]))
                        * (m.in_features + m.out_features + 1) for name, m in modules.items())

    def summary(self, trainable: int) -> dict:
        """summary.json's `adalora`: the schedule; the total rank the allocator ended at (None if it never
        allocated: a run stopped early); the shipped adapter's ranks per module and its exact count (`trainable`
        less the pruned triplets' A row, B column and E)."""
        c = self.config
        ranks = {name.removesuffix(".lora_E.default"): sum(kept) for name, kept in (self.shipped or {}).items()}
        return {"adalora": {"init_r": c.init_r, "target_r": c.target_r, "tinit": c.tinit, "tfinal": c.tfinal,
                            "total_step": c.total_step, "deltaT": c.deltaT, "ranks_at_start": c.init_r * len(ranks),
                            "ranks_allocated": self.allocated, "ranks_shipped": sum(ranks.values()),
                            "params_shipped": trainable - self.shed, "ranks": ranks}}
