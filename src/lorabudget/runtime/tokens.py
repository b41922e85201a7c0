"""Texts -> token ids, once: cached on disk under LORABUDGET_CACHE, keyed by the tokenizer, max_length and the
texts, so a second run (or a sweep's next trial) on the same data does not tokenize again."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm


@dataclass
class Tokenized:
    ids: list[np.ndarray]  # one int32 array per text, truncated to max_length, special tokens included
    labels: np.ndarray | None
    from_cache: bool = False  # read from LORABUDGET_CACHE rather than tokenized now

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.ids), dtype=np.int64, count=len(self.ids))

    def __len__(self) -> int:
        return len(self.ids)


def cache_dir() -> Path:
    return Path(os.environ.get("LORABUDGET_CACHE", Path.home() / ".cache" / "lorabudget"))


def _tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # The serialised backend records the truncation and padding of its last call: without them, the key is
        # the same before and after a first use (max_length is part of the key on its own).
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None)
        spec.pop("padding", None)
        spec = json.dumps(spec, sort_keys=True)
    else:
        spec = repr(sorted(tokenizer.get_vocab().items()))
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
                return Tokenized([flat[offsets[i]:offsets[i + 1]] for i in range(len(texts))], label_arr, True)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
            pass  # a damaged cache entry (cut short, garbled) is recomputed and overwritten below
    ids: list[np.ndarray] = []
    chunk = 2048
    for start in tqdm(range(0, len(texts), chunk), desc=desc, unit="chunk", disable=not progress, leave=False):
        enc = tokenizer(list(texts[start:start + chunk]), truncation=True, max_length=max_length,
                        add_special_tokens=True)
        ids.extend(np.asarray(x, dtype=np.int32) for x in enc["input_ids"])
    if path is not None:
        _store(path, ids)
    return Tokenized(ids, label_arr)


def _store(path: Path, ids: list[np.ndarray]) -> None:
    """Write a cache entry; a disk that refuses (full, read-only) costs only the cache, never the run."""
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(x) for x in ids])
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, flat=np.concatenate(ids) if ids else np.zeros(0, np.int32), offsets=offsets)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        warnings.warn(f"the token cache {path.parent} could not be written ({exc.strerror or exc}); going on "
                      "without it", stacklevel=3)
