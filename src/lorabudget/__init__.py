"""lorabudget: fine-tune a frozen encoder for text classification with LoRA-family adapters under an exact
trainable-parameter budget."""

from .version import __version__


def __getattr__(name):
    # Lazy, so that `lorabudget --help` and config validation do not pay for importing torch.
    if name == "load":
        from .serve.api import load

        return load
    raise AttributeError(name)


__all__ = ["load", "__version__"]
