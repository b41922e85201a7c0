"""Class shares matched on the rows that read unlike training (`predict/evaluate --match-shares`, data.target_shares).

On a shifted target a fine-tuned classifier does not only err more: it errs one way. On the course's generated
texts every MiniLM run tilts towards Sci/Tech (modern entities read as technology to a 2004 news model): most of
its errors on the labelled generated rows are that one tilt (60 of 72 for one run, docs/shift.md). When the user
knows the target's class shares (a competition's test set is balanced), the tilt can be undone without a label:
per-class offsets on the logits, fitted so that the model's mean probability of each class on the target's rows
equals those shares (runtime.priors.match_shares).

Fitted on every target row, the offsets also move the rows that read like training, which the model already
gets right: on the course's target that cost 1.3 points in-distribution. So by default they are fitted on, and
applied to, only the rows a domain classifier finds unlike the training data: those scoring above what 99% of
training rows score out of fold (as `lorabudget shift` counts them). That classifier reads words (TF-IDF and
logistic regression, scikit-learn): on the course's target it finds 88% of the labelled generated rows at that
threshold, where the frozen encoder's features, which `lorabudget shift` reports, find 52%.
Nothing trains in the model and nothing is added to it: the budget is untouched."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..data.normalize import normalize_texts
from ..errors import DataError, LorabudgetError
from ..runtime.priors import match_shares

SHARE_ROWS = ("shifted", "all")
MIN_ROWS = 100  # fewer rows than this say too little about a class balance to correct it
UNLIKE_PERCENTILE = 99.0  # a row scoring above 99% of training rows is unlike training (1% by chance)
TRAIN_SAMPLE = 3000  # training rows the domain classifier reads: enough for words, quick to fit


def wants_shares(value) -> bool:
    """Whether a --match-shares / data.target_shares value asks for matching at all (before the classes are known)."""
    return value is not None and not (isinstance(value, str) and value.strip().lower() == "none")


def parse_shares(value, class_names: Sequence[str]) -> np.ndarray | None:
    """None or 'none': no matching; 'uniform': every class alike; a list or 'a,b,c,d': one share per class, in the
    run's class order (normalised to sum to 1)."""
    if not wants_shares(value):
        return None
    k = len(class_names)
    if isinstance(value, str) and value.strip().lower() == "uniform":
        return np.full(k, 1.0 / k)
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        shares = np.asarray([float(p) for p in parts], dtype=np.float64)
    except (TypeError, ValueError):
        raise LorabudgetError(f"class shares must be 'uniform', 'none' or {k} numbers separated by commas "
                              f"({', '.join(class_names)}), not {value!r}") from None
    if len(shares) != k:
        raise LorabudgetError(f"{len(shares)} class shares given for {k} classes ({', '.join(class_names)})")
    if not np.all(np.isfinite(shares)) or np.any(shares <= 0):
        raise LorabudgetError(f"class shares must be positive numbers, not {value!r}")
    return shares / shares.sum()


def separation(train_scores: np.ndarray, target_scores: np.ndarray, folds: int) -> dict:
    """How well a train-versus-target classifier's out-of-fold scores tell the two apart: AUC, the threshold (99% of
    training rows score below it) and the share of target rows above it. Both domain classifiers report this
    (`lorabudget shift`), and the threshold is the one that picks the rows whose class shares are matched."""
    from sklearn.metrics import roc_auc_score

    threshold = float(np.percentile(train_scores, UNLIKE_PERCENTILE))
    y = np.r_[np.zeros(len(train_scores)), np.ones(len(target_scores))]
    return {"auc": float(roc_auc_score(y, np.r_[train_scores, target_scores])), "folds": folds,
            "threshold": threshold, "unlike_share": float(np.mean(target_scores > threshold)),
            "train_scores": train_scores, "target_scores": target_scores}


class ShiftedRows:
    """A train-versus-target classifier on words: which rows of any text read unlike the training data.
    `separation` says how well it tells them apart, from out-of-fold scores."""

    def __init__(self, train_texts: Sequence[str], target_texts: Sequence[str], *, folds: int = 5, seed: int = 0):
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import StratifiedKFold, cross_val_predict
        from sklearn.pipeline import make_pipeline

        texts = list(train_texts) + list(target_texts)
        y = np.r_[np.zeros(len(train_texts)), np.ones(len(target_texts))]
        self.probe = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
                                   LogisticRegression(C=1.0, max_iter=3000))
        folds = max(2, min(folds, len(train_texts), len(target_texts)))
        cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
        # the threshold from out-of-fold scores: a training row's in-sample score would be too low
        scores = cross_val_predict(self.probe, texts, y, cv=cv, method="predict_proba")[:, 1]
        self.separation = separation(scores[: len(train_texts)], scores[len(train_texts):], folds)
        self.threshold = self.separation["threshold"]
        self.probe.fit(texts, y)

    def flags(self, texts: Sequence[str]) -> np.ndarray:
        if not len(texts):
            return np.zeros(0, dtype=bool)
        return self.probe.predict_proba(list(texts))[:, 1] > self.threshold


@dataclass
class ShareMatch:
    """Offsets fitted on a target's rows (all, or those unlike training), applied to any rows of it."""

    shares: np.ndarray
    offsets: np.ndarray
    rows: str  # "shifted" or "all"
    fitted_rows: int
    target_rows: int
    target_flags: np.ndarray  # which target rows the offsets were fitted on (and apply to)
    normalize: str = "none"  # the run's data.normalize: the detector reads texts as the model does
    detector: ShiftedRows | None = None

    def applies_to(self, texts: Sequence[str]) -> np.ndarray:
        """Which rows (texts as read from the source) the offsets are for."""
        if self.detector is None:
            return np.ones(len(texts), dtype=bool)
        return self.detector.flags(normalize_texts(list(texts), self.normalize))

    def offset(self, logits: np.ndarray, flags: np.ndarray) -> np.ndarray:
        """The logits with the offsets added on the flagged rows (flags from applies_to, or target_flags)."""
        return logits + np.where(flags[:, None], self.offsets, 0.0)

    def summary(self, class_names: Sequence[str]) -> dict:
        return {"classes": list(class_names), "shares": self.shares.tolist(), "offsets": self.offsets.tolist(),
                "rows": self.rows, "fitted_rows": self.fitted_rows, "target_rows": self.target_rows}


def fit_share_match(clf, target_texts: Sequence[str], shares: np.ndarray, rows: str = "shifted", *,
                    target_logits: np.ndarray | None = None, detector: ShiftedRows | None = None,
                    progress: bool = False) -> ShareMatch:
    """Offsets for `clf` (a serve.api.Classifier) that match its class shares on the target's rows (`rows`:
    'shifted', those unlike the run's training data; 'all') to `shares`. `target_texts` as read from the source:
    they are normalised here as the model reads them. `detector`: one fitted before for the same run and target
    (it reads only texts, so every scale of a run can share it)."""
    if rows not in SHARE_ROWS:
        raise LorabudgetError(f"the rows to match shares on must be one of {', '.join(SHARE_ROWS)}, not {rows!r}")
    texts = normalize_texts(list(target_texts), clf.config.data.normalize)
    chosen = np.ones(len(texts), dtype=bool)
    if rows == "all":
        detector = None
    elif detector is None:
        from ..data.split import load_training_data

        try:
            training = load_training_data(clf.config).split.train.texts
        except DataError as err:
            raise DataError(f"matching shares on the shifted rows reads the run's training data to tell them "
                            f"apart, and it cannot be read: {err}") from None
        rng = np.random.default_rng(0)
        pick = np.sort(rng.choice(len(training), size=min(TRAIN_SAMPLE, len(training)), replace=False))
        detector = ShiftedRows(normalize_texts([training[i] for i in pick], clf.config.data.normalize), texts)
    if detector is not None:
        chosen = detector.flags(texts)
    if chosen.sum() < MIN_ROWS:
        raise DataError(f"only {int(chosen.sum())} of the target's {len(texts):,} rows read unlike the training "
                        f"data: too few to match class shares on (at least {MIN_ROWS}). The target reads like the "
                        "training data, so no correction is needed: pass --match-shares none"
                        if rows == "shifted" else
                        f"only {len(texts)} target rows: too few to match class shares on (at least {MIN_ROWS})")
    if target_logits is None:
        target_logits = clf.logits(clf.tokenize(list(target_texts)), batch_size=clf.config.eval.batch_size,
                                   progress=progress, desc="target")
    offsets = match_shares(target_logits[chosen], shares)
    return ShareMatch(shares=shares, offsets=offsets, rows=rows, fitted_rows=int(chosen.sum()),
                      target_rows=len(texts), target_flags=chosen, normalize=clf.config.data.normalize,
                      detector=detector)
