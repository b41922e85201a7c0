"""The config's training sections: how a run trains (optim), evaluates (eval), logs (logging), runs fast (speed)
and learns from unlabelled target texts (selftrain). Split from `schema` (the run's whole config and the sections
that say what is adapted) to keep each module short; `schema` re-exports them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from .section import Section as _Section


class OptimConfig(_Section):
    lr: float = Field(1e-3, gt=0, description="Peak learning rate of AdamW.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW decoupled weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    scheduler: Literal["cosine", "linear", "constant"] = Field(
        "linear", description="Learning-rate decay after warmup (to 0 for cosine and linear)."
    )
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="Warmup as a fraction of all optimizer steps.")
    warmup_steps: int | None = Field(None, ge=0, description="Warmup in optimizer steps; overrides warmup_ratio.")
    epochs: float = Field(4.0, gt=0, description="Passes over the training split (fractions allowed).")
    max_steps: int | None = Field(None, gt=0, description="Optimizer steps; overrides epochs when set.")
    batch_size: int = Field(32, gt=0, description="Examples per micro-batch on each process.")
    grad_accum: int = Field(1, gt=0, description="Micro-batches accumulated per optimizer step.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping norm; null disables.")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Cross-entropy label smoothing.")
    class_weights: Literal["none", "balanced"] = Field(
        "none", description="'balanced' weights the loss by inverse class frequency, for unbalanced data."
    )
    loraplus_lr_ratio: float | None = Field(
        None, ge=1, description="LoRA+ (Hayou et al. 2024): LoRA's B matrices learn at lr x this ratio (>= 1; 16 is "
        "common, set with lr: peft suggests a plain-LoRA lr about halved), while A, DoRA magnitudes, biases, "
        "LayerNorms and the head keep lr. For adapter.method=lora (with DoRA, rsLoRA or any init too). None: off.")
    ema_decay: float | None = Field(
        None, gt=0, lt=1, description="Keep an exponential moving average of the trainable weights, updated after "
        "every optimizer step with this decay (typical: 0.999; see ema_warmup for the first steps). When set, "
        "every evaluation, the best checkpoint, the shipped adapter (so evaluate, predict, export and "
        "lorabudget.load) and self-training's pseudo-labels use the averaged weights; training itself goes on "
        "from the raw ones. Adds no trainable parameter; checkpoints hold the average for an exact resume. "
        "None: off.")
    ema_warmup: bool = Field(
        True, description="Warm the EMA decay up: min(ema_decay, (1 + n) / (10 + n)) at the n-th update, so the "
        "average forgets the initial weights within tens of steps instead of thousands (until the cap, it spans "
        "roughly the last n/9 steps). Ignored without ema_decay.")
    rdrop_alpha: float = Field(
        0.0, ge=0, description="R-Drop (Liang et al. 2021): each batch runs twice with different dropout masks "
        "(one forward of the batch duplicated) and the loss is the mean cross-entropy of both plus rdrop_alpha "
        "times the symmetric KL between their predictions (summed over classes, averaged over examples); the "
        "paper uses 0.5-5 for classification. Needs dropout to act on (adapter.dropout, the encoder's); costs "
        "about twice the compute of a step. Adds no trainable parameter. 0: off.")
    probe_epochs: float = Field(0.0, ge=0, description="LP-FT (Kumar et al. 2022): train the head alone (adapters "
        "still) for this many epochs first, then everything, so the adapters start from a head fitted to the "
        "pretrained features; the paper finds it keeps out-of-distribution accuracy that plain fine-tuning loses. "
        "Counted within optim.epochs. 0: off.")


class EvalConfig(_Section):
    every_steps: int | None = Field(
        None, gt=0, description="Evaluate on the validation split every N optimizer steps; None: once per epoch."
    )
    metric: Literal["accuracy", "macro_f1", "loss"] = Field(
        "accuracy", description="Metric that picks the best checkpoint and drives early stopping."
    )
    early_stopping_patience: int | None = Field(
        None, gt=0, description="Stop after this many evaluations without improvement; None never stops early."
    )
    min_delta: float = Field(0.0, ge=0, description="Smallest change of the metric that counts as improvement.")
    batch_size: int = Field(128, gt=0, description="Examples per evaluation batch.")


class LoggingConfig(_Section):
    every_steps: int = Field(10, gt=0, description="Log train loss and lr every N optimizer steps.")
    trackers: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(
        default_factory=list,
        description="Experiment trackers that also get the run, through accelerate's trackers: the config as dotted "
        "parameters (adapter.r), every metrics record, and at the end best_*/final_* scores, trainable_params and "
        "train_seconds. 'tensorboard' writes RUN/tensorboard/. 'mlflow' logs to MLFLOW_TRACKING_URI when set, else "
        "to a local SQLite store, RUN/mlflow/mlflow.db (`mlflow ui --backend-store-uri sqlite:///RUN/mlflow/mlflow.db`"
        "). 'wandb' writes RUN/wandb/ and runs offline unless WANDB_MODE is set (offline needs no login or network; "
        "`wandb sync` uploads the run later; WANDB_MODE=online streams it). Each needs its package: `pip install "
        "lorabudget[mlflow]` (or [tensorboard], [wandb]). A resumed run logs as a new tracker run of the same name.",
    )
    project: str = Field(
        "lorabudget", min_length=1,
        description="What the trackers file the run under: the MLflow experiment, the W&B project, the TensorBoard "
        "subfolder. The tracker run is named after the run directory.",
    )
    tensorboard: bool = Field(
        False,
        description="Deprecated: `true` is the same as 'tensorboard' in logging.trackers (a validator moves it there "
        "and sets this back to false).",
    )
    progress: bool = Field(True, description="Show progress bars.")

    @field_validator("trackers")
    @classmethod
    def _unique_trackers(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(v))

    @model_validator(mode="after")
    def _fold_tensorboard(self) -> LoggingConfig:
        # Written to __dict__: an assignment would validate again (validate_assignment) and call this once more.
        if self.tensorboard:
            self.__dict__["trackers"] = list(dict.fromkeys([*self.trackers, "tensorboard"]))
            self.__dict__["tensorboard"] = False
        return self


class SpeedConfig(_Section):
    length_buckets: bool = Field(
        True, description="Batch texts of similar length together and pad per batch (AG News averages ~50 tokens)."
    )
    bucket_size_batches: int = Field(
        64, gt=0, description="Length-sort within windows of this many batches, so batches stay randomly mixed."
    )
    cache_frozen_prefix: bool = Field(
        True,
        description="When nothing below encoder layer k trains (adapters on the top layers only), compute layers "
        "0..k-1 once per text (eval mode: their dropout is off) and train on the stored states (fp16).",
    )
    prefix_cache_storage: Literal["auto", "memory", "disk"] = Field(
        "auto",
        description="Where the cached states live (~2 bytes x hidden per token): 'memory'; 'disk', a memory-mapped "
        "file under LORABUDGET_CACHE, deleted when the run ends, for training sets whose states do not fit in RAM; "
        "'auto', memory when they take at most half of the RAM available as caching starts, else disk.",
    )
    fast_dropout: bool = Field(
        True,
        description="On CPUs, draw dropout masks from numpy's SFC64 bits instead of torch's per-element sampler: the "
        "same keep probability, several times cheaper; the encoder's, the head's and the adapters' dropout alike, "
        "and attention-probability dropout where the encoder's attention goes through transformers' sdpa interface "
        "(runtime/attention.py). Not with speed.compile, which generates its own.",
    )
    compile: bool = Field(
        False,
        description="torch.compile the training forward. Pays off on GPUs (fused elementwise kernels); on CPUs the "
        "compile takes minutes and measured no faster here (see docs/benchmarks.md).",
    )
    processes: int | Literal["auto"] = Field(
        "auto",
        description="Data-parallel training processes on this machine: `lorabudget train` (and --resume) starts "
        "them itself (torch.distributed, gloo on CPUs), each with cores / N threads, and they train one run. "
        "optim.batch_size stays the batch of one micro-step over all of them: each process takes batch_size / N "
        "rows of it (batch_size must divide by N). 'auto' (the default): 2 on a CPU with at least 2 physical "
        "cores when the encoder is small (hidden size <= 768, batch <= 64, two copies fit half the free memory), "
        "else 1; on a GPU 1. Measured on 2 cores (docs/benchmarks.md): the recommended MiniLM recipe trains 1.35x "
        "faster as 2 processes of 1 thread than as 1 of 2 at batch 32 (roberta-base's shape 1.01-1.12x), and "
        "learns as well on MiniLM (the accuracy benchmark, 3 seeds). config.yaml records the number that ran, so "
        "--resume starts as many. Under an outside launcher (torchrun, accelerate launch), 1 and 'auto' give each "
        "process a whole batch_size, as before; N (the launcher's count) shares each batch out.",
    )

    @field_validator("processes", mode="before")
    @classmethod
    def _processes(cls, v):
        if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            return v
        raise ValueError("expected a whole number of processes (1, 2, ...) or 'auto'")


class SelfTrainConfig(_Section):
    rounds: int = Field(
        0, ge=0, description="Self-training on data.target_source: after the supervised phase, this many rounds of "
        "pseudo-labelling the target with the best checkpoint so far and training on labelled + pseudo-labelled "
        "rows. 0: off. Adds no trainable parameter.")
    threshold: float = Field(0.9, ge=0, le=1, description="Keep a target row when the model's top probability "
                             "is at least this.")
    top_share: float | None = Field(
        None, gt=0, le=1, description="Class-balanced selection: of the rows predicted as each class (and over the "
        "threshold), keep only this most confident share. None: every row over the threshold.")
    epochs: float = Field(1.0, gt=0, description="Passes over labelled + pseudo-labelled rows per round.")
    lr: float | None = Field(None, gt=0, description="Peak learning rate of each round (warmup and schedule as "
                             "optim's). None: optim.lr.")
    adapt_priors: bool = Field(
        False, description="Pseudo-label from probabilities re-weighted by the target's class shares, estimated by "
        "EM (as predict --adapt-priors).")
