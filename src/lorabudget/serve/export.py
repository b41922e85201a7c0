"""Export of a finished run as a portable model: the PEFT adapter as saved, or a plain transformers model with the
adapters merged (a head the stock classes cannot express carries its own modeling file, from its HEADS entry)."""

from __future__ import annotations

import inspect
import shutil
from contextlib import nullcontext
from pathlib import Path

import torch

from ..config import load_config
from ..errors import RunDirError
from ..model.adapters import NOT_LORA, check_adapter_scale
from ..model.heads import HEADS, head_style, model_family
from ..rundir import follow_umask, open_finished, remove_quietly, replace_dir, writing
from .api import Classifier


def _writer_lock(run, target: Path):
    """An export into the run directory itself writes that run: it holds the run's lock (a second writer, or a
    training that replaces the run, waits its turn); an export elsewhere writes only its own folder."""
    from ..runlock import command_line

    inside = target.resolve().is_relative_to(run.path.resolve())
    return run.lock(command_line()) if inside else nullcontext()


def export_adapter(run_dir: str, out: str, *, adapter_scale: float | None = None) -> Path:
    """The PEFT adapter alone (head weights included), as the run saved it; with a scale below 1 (`adapter_scale`,
    else the run's adapter.inference_scale), its LoRA B matrices scaled (the update B A scales with them: WiSE-FT,
    as model.adapters.scale_update), so that plain peft loads what lorabudget predicts with."""
    run = open_finished(run_dir)
    adapter_cfg = load_config(run.config).adapter
    if adapter_scale is None:
        adapter_scale = adapter_cfg.inference_scale
    check_adapter_scale(adapter_scale)
    if adapter_scale != 1.0 and adapter_cfg.train_layernorms:
        # a scale interpolates the LayerNorms trained in full towards their pretrained values, which the adapter
        # file does not hold (only the trained copies): the merged export has both
        raise RunDirError(f"this run trains LayerNorms in full (adapter.train_layernorms), and an adapter scaled "
                          f"by {adapter_scale:g} would need their pretrained values beside it; export the merged "
                          f"model instead (--merged DIR --adapter-scale {adapter_scale:g}), or the adapter "
                          f"unscaled (--adapter-scale 1)")
    target = Path(out)
    tmp = target.with_name(target.name + ".tmp")
    remove_quietly(tmp)
    try:
        with _writer_lock(run, target), writing(target):
            shutil.copytree(run.adapter, tmp)
            if adapter_scale != 1.0:
                _scale_b(tmp / "adapter_model.safetensors", adapter_scale)
            follow_umask(tmp)
            replace_dir(tmp, target)
    except BaseException:
        remove_quietly(tmp)
        raise
    return target


def _scale_b(weights: Path, scale: float) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(weights)
    b = [k for k in tensors if ".lora_B." in k]
    if not b:
        raise RunDirError(f"{NOT_LORA}; this run's adapter has no LoRA B matrix")
    for key in b:
        tensors[key] = tensors[key] * scale
    save_file(tensors, str(weights), metadata={"format": "pt"})


_MODELING_HEADER = '''"""A {family} classifier with lorabudget's {head!r} head, which the stock transformers
classes cannot express. Written by `lorabudget export --merged --custom-code`. Loading this model runs this file:

    AutoModelForSequenceClassification.from_pretrained(DIR, trust_remote_code=True)
"""

import torch
from torch import nn
from transformers import {base}


'''

_MODELING_CLASS = '''


class {name}({base}):
    def __init__(self, config):
        super().__init__(config)
        head = config.lorabudget_head
        {install}(self, head["style"], head["rank"], head["pooling"])
'''


def _modeling_source(family: str, head_type: str, base: str, name: str) -> str:
    """What the head's entry in HEADS says an exported model needs (its modules and installer), copied from their
    source: one definition, not a second copy."""
    head = HEADS[head_type]
    parts = [inspect.getsource(obj) for obj in head.exported]
    return (_MODELING_HEADER.format(family=family, head=head_type, base=base) + "\n\n".join(parts)
            + _MODELING_CLASS.format(name=name, base=base, install=head.install.__name__))


def export_merged(run_dir: str, out: str, *, custom_code: bool = False, adapter_scale: float | None = None) -> Path:
    """A plain transformers model: adapters merged into the weights (their update scaled by `adapter_scale`),
    head and tokenizer included. A head the stock classes cannot express needs `custom_code`: the model then
    carries its own modeling file."""
    run = open_finished(run_dir)
    clf = Classifier(run, device="cpu", precision="fp32", adapter_scale=adapter_scale)
    head = clf.config.head
    custom = not HEADS[head.type].stock_loadable
    if custom and not custom_code:
        raise RunDirError(
            f"head.type={head.type!r} has no counterpart in {type(clf.model).__name__}, so the run cannot become "
            "a plain transformers model. Either export the adapter (--adapter DIR) and load it with "
            "lorabudget.load(RUN), or add --custom-code for a model that carries its own modeling code (it then "
            "loads only with trust_remote_code=True, which runs that code)")
    target = Path(out)
    tmp = target.with_name(target.name + ".tmp")
    remove_quietly(tmp)
    try:
        with _writer_lock(run, target), writing(target):
            _save_merged(clf, tmp, custom)
            follow_umask(tmp)  # safetensors writes its files private (0600); a model is for others to load
            replace_dir(tmp, target)
    except BaseException:
        remove_quietly(tmp)
        raise
    return target


def _save_merged(clf: Classifier, tmp: Path, custom: bool) -> None:
    head = clf.config.head
    model = clf.model.to(torch.float32)
    model.config.id2label = dict(enumerate(clf.class_names))
    model.config.label2id = {n: i for i, n in enumerate(clf.class_names)}
    if custom:
        base = type(model).__name__
        name = f"Lorabudget{base}"
        model.config.lorabudget_head = {"style": head_style(model.config), "type": head.type, "rank": head.rank,
                                          "pooling": head.pooling}
        model.config.auto_map = {"AutoModelForSequenceClassification": f"modeling_lorabudget.{name}"}
        model.config.architectures = [name]
    model.save_pretrained(str(tmp), safe_serialization=True)
    if custom:
        source = _modeling_source(model_family(model.config), head.type, base, name)
        (tmp / "modeling_lorabudget.py").write_text(source)
    clf.tokenizer.save_pretrained(str(tmp))
