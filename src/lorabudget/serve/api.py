"""Python API for notebooks and scripts: `lorabudget.load(RUN)` gives a trained classifier.

    clf = lorabudget.load("runs/minilm-cpu")
    clf.predict(["Stocks rally as rates fall"])        # -> ['Business']
    clf.predict_proba(["..."])                          # -> array of shape (n, classes)
    clf.model                                           # the transformers model (adapters merged)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..config import Config, load_config
from ..data import LabelSpace
from ..errors import RunDirError
from ..model.adapters import quiet_peft_deprecations
from ..model.backbone import load_pretrained, load_tokenizer
from ..model.heads import apply_head
from ..rundir import RunDir, open_finished
from ..runtime.batching import TokenBatches
from ..runtime.inference import ordered, predict_logits
from ..runtime.precision import DTYPES, inference_device, resolve_precision
from ..runtime.tokens import Tokenized, tokenize


def load_peft_model(cfg: Config, labels: LabelSpace, adapter_dir: Path):
    """The stock model class, lorabudget's head, then peft loads the adapter (and the head's trained weights)."""
    from peft import PeftModel

    if not (adapter_dir / "adapter_model.safetensors").is_file():
        raise RunDirError(f"{adapter_dir} holds no adapter_model.safetensors")
    model = load_pretrained(cfg.model.name, labels.names, trust_remote_code=cfg.model.trust_remote_code)
    apply_head(model, cfg.head)  # the whole head section: lowrank needs its rank
    with quiet_peft_deprecations():
        return PeftModel.from_pretrained(model, str(adapter_dir))


class Classifier:
    """A finished run, loaded for inference with its adapters merged into the weights."""

    def __init__(self, run: RunDir, device: str | None = None, precision: str | None = None):
        self.run = run
        self.config: Config = load_config(run.config)
        self.labels = LabelSpace.from_json(json.loads(run.labels.read_text()))
        self.tokenizer = load_tokenizer(self.config.model.name,
                                        trust_remote_code=self.config.model.trust_remote_code)
        peft_model = load_peft_model(self.config, self.labels, run.adapter)
        # Merged weights: inference costs what the plain model costs, with no adapter matmuls on the side.
        self.model = peft_model.merge_and_unload()
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
        return tokenize(list(texts), labels, self.tokenizer, self.config.model.max_length, progress=progress)

    def logits(self, data: Tokenized, *, batch_size: int = 128, progress: bool = False) -> np.ndarray:
        rows, logits = predict_logits(self.model, TokenBatches(data, self.pad_id), batch_size=batch_size,
                                      device=self.device, dtype=self.dtype, progress=progress, desc="predict")
        return ordered(rows, logits, len(data)) if len(data) else np.zeros((0, len(self.class_names)), np.float32)

    def predict_proba(self, texts: Sequence[str], *, batch_size: int = 128) -> np.ndarray:
        logits = self.logits(self.tokenize(texts), batch_size=batch_size)
        return torch.softmax(torch.from_numpy(logits), dim=-1).numpy()

    def predict(self, texts: Sequence[str], *, batch_size: int = 128) -> list[str]:
        ids = self.logits(self.tokenize(texts), batch_size=batch_size).argmax(axis=1)
        return [self.class_names[i] for i in ids]


def load(run_dir: str | Path, *, device: str | None = None, precision: str | None = None) -> Classifier:
    """Load a finished run for inference."""
    return Classifier(open_finished(run_dir), device=device, precision=precision)
