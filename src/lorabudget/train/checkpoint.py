"""Checkpoints: the trainable weights (safetensors), optimizer and scheduler state, random state and loop state.

A checkpoint folder is written beside its final place and swapped in whole, so a kill at any moment leaves the
previous checkpoint intact. The optimizer state is the one file that is not safetensors (it nests step counters
and parameter groups); it holds only tensors and numbers and is read back with `torch.load(weights_only=True)`,
which refuses anything else.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..model.budget import trained_parameters
from ..rundir import atomic_write_json, replace_dir

WEIGHTS = "trainable.safetensors"


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().to("cpu").contiguous().clone() for n, p in trained_parameters(model)}


def load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [n for n in state if n not in params]
    if missing:
        raise KeyError(f"checkpoint names parameters the model lacks: {missing[:3]}")
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t.to(params[n].device, params[n].dtype))


def save_weights(model: torch.nn.Module, folder: Path) -> None:
    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file(trainable_state(model), str(tmp / WEIGHTS))
    replace_dir(tmp, folder)


def load_weights(model: torch.nn.Module, folder: Path) -> None:
    load_trainable_state(model, load_file(str(folder / WEIGHTS)))


def save_checkpoint(folder: Path, model: torch.nn.Module, optimizer, scheduler, loop_state: dict[str, Any]) -> None:
    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file(trainable_state(model), str(tmp / WEIGHTS))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            rng[f"cuda{i}"] = s
    save_file(rng, str(tmp / "rng.safetensors"))
    atomic_write_json(tmp / "state.json", loop_state)
    replace_dir(tmp, folder)


def load_checkpoint(folder: Path, model: torch.nn.Module, optimizer, scheduler) -> dict[str, Any]:
    load_weights(model, folder)
    opt = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(opt["optimizer"])
    scheduler.load_state_dict(opt["scheduler"])
    rng = load_file(str(folder / "rng.safetensors"))
    torch.set_rng_state(rng["cpu"])
    if torch.cuda.is_available():
        states = [rng[k] for k in sorted(rng) if k.startswith("cuda")]
        if states:
            torch.cuda.set_rng_state_all(states)
    return json.loads((folder / "state.json").read_text())
