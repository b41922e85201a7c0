"""Python API for notebooks and scripts: `lorabudget.load(RUN)` gives a trained classifier.

    clf = lorabudget.load("runs/minilm-cpu")
    clf.predict(["Stocks rally as rates fall"])        # -> ['Business']
    clf.predict_proba(["..."])                          # -> array of shape (n, classes)
    clf.model                                           # the transformers model (adapters merged)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..config import Config, load_config
from ..data import LabelSpace
from ..data.normalize import normalize_texts
from ..errors import DamagedFileError, RunDirError
from ..model.adapters import check_adapter_scale, merge_into_base, quiet_peft_deprecations, scale_update
from ..model.backbone import load_pretrained, load_tokenizer
from ..model.build import build_adapted_model
from ..model.heads import apply_head
from ..model.weights import load_weights, read_safetensors
from ..rundir import RunDir, open_finished, read_json
from ..runtime.batching import TokenBatches
from ..runtime.inference import ordered, predict_logits
from ..runtime.precision import DTYPES, inference_device, resolve_precision
from ..runtime.tokens import Tokenized, tokenize


def load_peft_model(cfg: Config, labels: LabelSpace, adapter_dir: Path):
    """The stock model class, lorabudget's head, then peft loads the adapter (and the head's trained weights)."""
    from peft import PeftModel
    from safetensors import SafetensorError

    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        raise RunDirError(f"{adapter_dir} holds no adapter_model.safetensors")
    read_safetensors(weights, DAMAGED_ADAPTER)  # checked whole first: peft's own error would be a traceback
    model = load_pretrained(cfg.model.name, labels.names, trust_remote_code=cfg.model.trust_remote_code)
    apply_head(model, cfg.head)  # the whole head section: lowrank needs its rank
    try:
        with quiet_peft_deprecations():
            return PeftModel.from_pretrained(model, str(adapter_dir))
    except (SafetensorError, ValueError, OSError) as exc:  # adapter_config.json damaged, say
        raise DamagedFileError(f"{adapter_dir} cannot be loaded ({str(exc)[:160]}); {DAMAGED_ADAPTER}") from None


DAMAGED_ADAPTER = ("the run's adapter is damaged: export it again from a backup, or train the run again "
                   "(checkpoints/best holds its best weights if only the adapter folder was hit)")


def load_best_checkpoint(cfg: Config, labels: LabelSpace, run: RunDir):
    """A run still being written has no adapter yet: its model as built for training, with the best weights so
    far (complete: a checkpoint folder is swapped in whole)."""
    model = build_adapted_model(cfg, labels).model
    load_weights(model, run.best, "the run is still being written: try again after its next evaluation")
    return model


class Classifier:
    """A finished run, loaded for inference with its adapters merged into the weights."""

    def __init__(self, run: RunDir, device: str | None = None, precision: str | None = None,
                 adapter_scale: float | None = None):
        self.run = run
        self.config: Config = load_config(run.config)
        # WiSE-FT's interpolation towards the pretrained encoder, when asked (model.adapters.scale_update): the
        # run's adapter.inference_scale unless the caller says otherwise; checked before anything slow loads
        self.adapter_scale = self.config.adapter.inference_scale if adapter_scale is None else adapter_scale
        check_adapter_scale(self.adapter_scale)
        self.labels = LabelSpace.from_json(read_json(run.labels, "the run's class names are lost: train it again"))
        self.tokenizer = load_tokenizer(self.config.model.name,
                                        trust_remote_code=self.config.model.trust_remote_code)
        # A run that a live process is still writing is read from its best checkpoint so far (`checkpoint` says
        # which step); a finished run from its adapter.
        self.checkpoint: dict | None = None
        if run.is_finished():
            peft_model = load_peft_model(self.config, self.labels, run.adapter)
        else:
            peft_model = load_best_checkpoint(self.config, self.labels, run)
            self.checkpoint = read_json(run.best / "meta.json", "the run is still being written: try again")
        scale_update(peft_model, self.adapter_scale)
        # Merged weights: inference costs what the plain model costs, with no adapter matmuls on the side.
        self.model = merge_into_base(peft_model)
        self.model.eval()
        self.device = inference_device(device or self.config.model.device)
        self.model.to(self.device)
        self.precision = resolve_precision(precision or self.config.model.precision, self.device)
        self.dtype = DTYPES.get(self.precision)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    @property
    def class_names(self) -> list[str]:
        return list(self.labels.names)

    def tokenize(self, texts: Sequence[str], labels: Sequence[int] | None = None, *,
                 progress: bool = False) -> Tokenized:
        # the run's own normalisation (data.normalize), as in training
        return tokenize(normalize_texts(texts, self.config.data.normalize), labels, self.tokenizer,
                        self.config.model.max_length, progress=progress)

    def logits(self, data: Tokenized, *, batch_size: int = 128, progress: bool = False,
               desc: str = "predict") -> np.ndarray:
        rows, logits = predict_logits(self.model, TokenBatches(data, self.pad_id), batch_size=batch_size,
                                      device=self.device, dtype=self.dtype, progress=progress, desc=desc)
        return ordered(rows, logits, len(data)) if len(data) else np.zeros((0, len(self.class_names)), np.float32)

    def predict_proba(self, texts: Sequence[str], *, batch_size: int = 128) -> np.ndarray:
        logits = self.logits(self.tokenize(texts), batch_size=batch_size)
        return torch.softmax(torch.from_numpy(logits), dim=-1).numpy()

    def predict(self, texts: Sequence[str], *, batch_size: int = 128) -> list[str]:
        ids = self.logits(self.tokenize(texts), batch_size=batch_size).argmax(axis=1)
        return [self.class_names[i] for i in ids]


def load(run_dir: str | Path, *, device: str | None = None, precision: str | None = None,
         allow_running: bool = False, adapter_scale: float | None = None) -> Classifier:
    """Load a finished run for inference; with `allow_running`, also a run still being written, from its best
    checkpoint so far (`clf.checkpoint` then says which step). `adapter_scale` < 1 scales the LoRA update towards
    the pretrained encoder (WiSE-FT), which can hold up better on texts unlike the training data; None: the run's
    adapter.inference_scale."""
    return Classifier(open_finished(run_dir, allow_running=allow_running), device=device, precision=precision,
                      adapter_scale=adapter_scale)


def joined_notes(*notes: str | None) -> str | None:
    """The notes a verb prints before its result, one per line; None when there is none."""
    return "\n".join(n for n in notes if n) or None


def still_running_note(clf: Classifier) -> str | None:
    """What a reader prints when it scored a run that is still being written, or None for a finished run."""
    if clf.checkpoint is None:
        return None
    from ..runlock import describe_holder

    writer = clf.run.writer()
    who = describe_holder(writer) if writer else "its writer just stopped"
    return (f"note      {clf.run.path} is still being written ({who}): this used its best checkpoint so far, "
            f"step {clf.checkpoint.get('step', '?')}")
