"""Text-only measures of a shift: lengths, vocabulary, and the artefacts of a training source (plain Python: they
need no model)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

# The marks the AG News crawl left (data.normalize: news removes them); a target without them, or with marks of
# its own (curly quotes), reads as another source to a model that learnt them.
ARTEFACTS = {
    "HTML entity (#39; quot; &lt;)": re.compile(r"&?#\d{1,5};|\b(?:quot|amp|lt|gt);"),
    "escaped dollar sign": re.compile(r"\\\$"),
    "backslash line break": re.compile(r"\\[A-Za-z]"),
    "agency credit ((Reuters), AP -)": re.compile(r"\((?:Reuters|AP|AFP|CP|CNN[^)]{0,10}|[A-Za-z]+\.com)\)|"
                                                 r"(?:^|\s)(?:Reuters|AP|AFP) -{1,2} "),
    "HTML tag": re.compile(r"<[^<>]{1,200}>|&lt;/?[A-Za-z]"),
    "URL": re.compile(r"https?://|\bwww\."),
    "curly quotes": re.compile("[\u2018\u2019\u201c\u201d]"),
}
SHORT_CHARS = 20  # a text this short carries little topic


def lengths(texts: Sequence[str]) -> dict:
    chars = np.array([len(t) for t in texts]) if texts else np.zeros(1)
    return {"median_chars": float(np.median(chars)), "p10_chars": float(np.percentile(chars, 10)),
            "p90_chars": float(np.percentile(chars, 90)),
            "share_short": float(np.mean(chars < SHORT_CHARS)),
            "share_duplicated": 1.0 - len(set(texts)) / max(len(texts), 1)}


def artefact_shares(texts: Sequence[str]) -> dict[str, float]:
    """The share of rows showing each artefact."""
    n = max(len(texts), 1)
    return {name: sum(1 for t in texts if pattern.search(t)) / n for name, pattern in ARTEFACTS.items()}


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+(?:'[a-z]+)?", text.lower())


def vocabulary_shift(train: Sequence[str], other: Sequence[str], rare: int = 2) -> dict:
    """Of the word occurrences in `other`: the share that never occurs in `train`, and the share that occurs
    there at most `rare` times."""
    counts = Counter(w for t in train for w in words(t))
    tokens = [w for t in other for w in words(t)]
    n = max(len(tokens), 1)
    return {"unseen": sum(1 for w in tokens if w not in counts) / n,
            "rare": sum(1 for w in tokens if 0 < counts[w] <= rare) / n}
