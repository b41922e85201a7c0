"""Texts -> token ids, once: cached on disk under LORABUDGET_CACHE, keyed by the tokenizer, max_length and the
texts, so a second run (or a sweep's next trial) on the same data does not tokenize again."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm


@dataclass
class Tokenized:
    ids: list[np.ndarray]  # one int32 array per text, truncated to max_length, special tokens included
    labels: np.ndarray | None

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.ids), dtype=np.int64, count=len(self.ids))

    def __len__(self) -> int:
        return len(self.ids)


def cache_dir() -> Path:
    return Path(os.environ.get("LORABUDGET_CACHE", Path.home() / ".cache" / "lorabudget"))


def _tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(f"{type(tokenizer).__name__}\n{spec}".encode()).hexdigest()


def _key(tokenizer, texts: Sequence[str], max_length: int) -> str:
    h = hashlib.sha256()
    h.update(_tokenizer_fingerprint(tokenizer).encode())
    h.update(str(max_length).encode())
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


def tokenize(texts: Sequence[str], labels: Sequence[int] | None, tokenizer, max_length: int, *,
             use_cache: bool = True, progress: bool = True, desc: str = "tokenize") -> Tokenized:
    """Token ids for each text; cached under LORABUDGET_CACHE keyed by tokenizer, max_length and the texts."""
    label_arr = None if labels is None else np.asarray(labels, dtype=np.int64)
    path = cache_dir() / "tokens" / f"{_key(tokenizer, texts, max_length)}.npz" if use_cache else None
    if path is not None and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                flat, offsets = z["flat"], z["offsets"]
            if len(offsets) == len(texts) + 1:
                return Tokenized([flat[offsets[i]:offsets[i + 1]] for i in range(len(texts))], label_arr)
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache entry is recomputed and overwritten below
    ids: list[np.ndarray] = []
    chunk = 2048
    for start in tqdm(range(0, len(texts), chunk), desc=desc, unit="chunk", disable=not progress, leave=False):
        enc = tokenizer(list(texts[start:start + chunk]), truncation=True, max_length=max_length,
                        add_special_tokens=True)
        ids.extend(np.asarray(x, dtype=np.int32) for x in enc["input_ids"])
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(x) for x in ids])
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, flat=np.concatenate(ids) if ids else np.zeros(0, np.int32), offsets=offsets)
        os.replace(tmp, path)
    return Tokenized(ids, label_arr)
