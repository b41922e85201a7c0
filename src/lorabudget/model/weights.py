"""The trainable weights of an adapted model as a flat name -> tensor dict, in safetensors: what checkpoints
hold, and what a reader loads from a run that is still being written."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from ..errors import DamagedFileError
from ..rundir import read_json
from .budget import trained_parameters

WEIGHTS = "trainable.safetensors"
MANIFEST = "manifest.json"  # size and SHA-256 of each file of a checkpoint folder, written last


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().to("cpu").contiguous().clone() for n, p in trained_parameters(model)}


def load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [n for n in state if n not in params]
    if missing:
        raise DamagedFileError(f"the checkpoint names parameters the model lacks: {missing[:3]}; it belongs to "
                               "another config")
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t.to(params[n].device, params[n].dtype))


def state_bytes(state: dict[str, torch.Tensor]) -> bytes:
    """safetensors bytes, for the project's atomic writer (which follows the umask and names a full disk)."""
    return save(state)


def read_safetensors(path: Path, way_out: str) -> dict[str, torch.Tensor]:
    """A safetensors file read back whole; a missing, truncated or garbled one is a DamagedFileError."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise DamagedFileError(f"{path} is missing", way_out) from None
    except OSError as exc:
        raise DamagedFileError(f"{path} cannot be read ({exc.strerror or exc})", way_out) from None
    try:
        return load(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise DamagedFileError(f"{path} is damaged ({str(exc)[:120]})", way_out) from None


def verify(folder: Path, way_out: str) -> None:
    """Every file the manifest lists is there, whole and unchanged."""
    manifest = read_json(folder / MANIFEST, way_out)
    for name, want in manifest.items():
        path = folder / name
        try:
            data = path.read_bytes()
        except OSError:
            raise DamagedFileError(f"{path} is missing", way_out) from None
        if len(data) != want["bytes"] or hashlib.sha256(data).hexdigest() != want["sha256"]:
            raise DamagedFileError(f"{path} is damaged ({len(data):,} bytes where {want['bytes']:,} were "
                                   f"written, or its content changed)", way_out)


def load_weights(model: torch.nn.Module, folder: Path, way_out: str) -> None:
    if (folder / MANIFEST).is_file():
        verify(folder, way_out)
    load_trainable_state(model, read_safetensors(folder / WEIGHTS, way_out))
