"""The device, precision and processes a run trains on: `accelerate` for one CPU, a GPU, or data parallel."""

from __future__ import annotations

import torch

from ..config import Config
from ..errors import ConfigError
from ..rundir import RunDir
from ..runtime.precision import resolve_precision
from .launch import check_processes


def make_accelerator(cfg: Config, run: RunDir | None = None):
    """(accelerator, resolved precision). Autocast is applied around each forward (runtime.precision.autocast), so
    accelerate only handles fp16 loss scaling."""
    from accelerate import Accelerator

    from .trackers import accelerator_kwargs

    if cfg.model.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("model.device=cuda but no CUDA GPU is visible; use model.device=auto or cpu")
    cpu = cfg.model.device == "cpu" or (cfg.model.device == "auto" and not torch.cuda.is_available()
                                        and not torch.backends.mps.is_available())
    probe_device = torch.device("cpu") if cpu else torch.device("cuda" if torch.cuda.is_available() else "mps")
    precision = resolve_precision(cfg.model.precision, probe_device)
    kwargs = accelerator_kwargs(cfg, run)  # the trackers: a missing package fails here, before the run dir is reset
    accelerator = Accelerator(cpu=cpu, mixed_precision="fp16" if precision == "fp16" else "no", **kwargs)
    check_processes(cfg, cfg.speed.processes, accelerator.num_processes)  # as many as the config says
    return accelerator, precision
