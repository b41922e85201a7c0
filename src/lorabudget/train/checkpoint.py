"""Checkpoints: the trainable weights (safetensors), optimizer and scheduler state, random state and loop state, and
any further state a recipe keeps in safetensors (the weight average of optim.ema_decay, `ema.safetensors`).

A checkpoint folder is written beside its final place and swapped in whole, so a kill at any moment leaves a
complete checkpoint. Two generations are kept, `last` and `previous`: when `last` is damaged (a disk that failed
mid-copy), a resume falls back to `previous` with a warning. Each folder ends with `manifest.json`, the size and
SHA-256 of every file, written last: a folder whose files do not match it is damaged, however it got so.

The optimizer state is the one file that is not safetensors (it nests step counters and parameter groups); it
holds only tensors and numbers and is read back with `torch.load(weights_only=True)`, which refuses anything else.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..errors import DamagedFileError
from ..model.weights import (
    MANIFEST,
    WEIGHTS,
    load_trainable_state,
    read_safetensors,
    state_bytes,
    trainable_state,
    verify,
)
from ..rundir import atomic_write_bytes, atomic_write_json, read_json, remove_quietly, replace_dir, writing


def _write_files(folder: Path, files: dict[str, bytes], extra_json: dict[str, Any] | None = None) -> None:
    """Write `files` (and JSON ones) into `folder`.tmp with a manifest, then return; the caller swaps it in."""
    for name, data in files.items():
        atomic_write_bytes(folder / name, data)
    for name, obj in (extra_json or {}).items():
        atomic_write_json(folder / name, obj)
    listing = {p.name: {"bytes": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
               for p in sorted(folder.iterdir()) if p.name != MANIFEST}
    atomic_write_json(folder / MANIFEST, listing)


def _staged(folder: Path) -> Path:
    tmp = folder.with_name(folder.name + ".tmp")
    remove_quietly(tmp)  # a half-written one from a killed process
    with writing(tmp):
        tmp.mkdir(parents=True)
    return tmp


def save_weights(model: torch.nn.Module, folder: Path, meta: dict[str, Any] | None = None) -> None:
    tmp = _staged(folder)
    try:
        _write_files(tmp, {WEIGHTS: state_bytes(trainable_state(model))}, {"meta.json": meta or {}})
        with writing(folder):
            replace_dir(tmp, folder)
    except BaseException:
        remove_quietly(tmp)
        raise


def save_checkpoint(folder: Path, model: torch.nn.Module, optimizer, scheduler, loop_state: dict[str, Any],
                    tensors: dict[str, dict[str, torch.Tensor]] | None = None) -> None:
    """`folder` (checkpoints/last) is replaced; the one it replaces becomes checkpoints/previous. `tensors`: further
    state by file name (the weight average, `ema.safetensors`), each written as safetensors."""
    optim = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, optim)
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            rng[f"cuda{i}"] = s
    tmp = _staged(folder)
    try:
        _write_files(tmp, {WEIGHTS: state_bytes(trainable_state(model)), "optimizer.pt": optim.getvalue(),
                           "rng.safetensors": state_bytes(rng),
                           **{name: state_bytes(state) for name, state in (tensors or {}).items()}},
                     {"state.json": loop_state})
        previous = previous_of(folder)
        with writing(folder):
            remove_quietly(previous)
            if folder.exists():
                os.replace(folder, previous)
            os.replace(tmp, folder)
    except BaseException:
        remove_quietly(tmp)
        raise


def previous_of(folder: Path) -> Path:
    return folder.with_name("previous")


def newest_state(last: Path) -> dict | None:
    """The loop state of the checkpoint a resume would start from (last, else previous), read without checking
    the rest of the checkpoint: for messages and for rebuilding a self-training round. None when neither reads."""
    for folder in (last, previous_of(last)):
        try:
            state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(state, dict) and isinstance(state.get("step"), int):
            return state
    return None


def _read_checkpoint(folder: Path, way_out: str, tensor_files=()) -> dict[str, Any]:
    """Everything in a checkpoint, read and checked before any of it is applied; of `tensor_files`, those that the
    checkpoint holds (None for one it does not: the caller says what that means)."""
    if not folder.is_dir():
        raise DamagedFileError(f"{folder} is missing", way_out)
    verify(folder, way_out)
    try:
        opt = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  unpickling errors of every kind: the file is not what we wrote
        raise DamagedFileError(f"{folder / 'optimizer.pt'} is damaged ({str(exc)[:120]})", way_out) from None
    return {"weights": read_safetensors(folder / WEIGHTS, way_out), "optimizer": opt,
            "rng": read_safetensors(folder / "rng.safetensors", way_out),
            "state": read_json(folder / "state.json", way_out),
            "tensors": {name: read_safetensors(folder / name, way_out) if (folder / name).is_file() else None
                        for name in tensor_files}, "folder": folder}


def load_checkpoint(folder: Path, model: torch.nn.Module, optimizer, scheduler, run_path: Path,
                    say: Callable[[str], None] = print,
                    tensors: dict[str, Callable[..., None]] | None = None) -> dict[str, Any]:
    """The loop state of checkpoints/last, its weights, optimizer, schedule and random state applied; when last
    is damaged or missing, checkpoints/previous, with a warning. `tensors`: file name -> load(state or None, path,
    way_out) for further state saved with `save_checkpoint(tensors=...)`, called first (it may refuse)."""
    way_out = (f"start the run again: `lorabudget train -c {run_path / 'config.yaml'} --output-dir {run_path} "
               "--overwrite`")
    tensors = tensors or {}
    try:
        ckpt = _read_checkpoint(folder, way_out, tuple(tensors))
    except DamagedFileError as damaged:
        previous = previous_of(folder)
        if not previous.is_dir():
            raise
        ckpt = _read_checkpoint(previous, f"both checkpoints are damaged; {way_out}", tuple(tensors))
        say(f"warning: {damaged.what}\nwarning: resuming from the previous checkpoint instead (step "
            f"{ckpt['state']['step']})")
    for name, load in tensors.items():
        load(ckpt["tensors"][name], ckpt["folder"] / name, way_out)
    load_trainable_state(model, ckpt["weights"])
    optimizer.load_state_dict(ckpt["optimizer"]["optimizer"])
    scheduler.load_state_dict(ckpt["optimizer"]["scheduler"])
    torch.set_rng_state(ckpt["rng"]["cpu"])
    if torch.cuda.is_available():
        states = [ckpt["rng"][k] for k in sorted(ckpt["rng"]) if k.startswith("cuda")]
        if states:
            torch.cuda.set_rng_state_all(states)
    return ckpt["state"]

