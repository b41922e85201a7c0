"""`lorabudget shift RUN --target FILE`: how the texts a run will be graded on differ from what it trained on,
before anyone submits: lengths, vocabulary, the training source's artefacts, a domain classifier on the frozen
encoder's features, and the model's own confidence and class distribution."""

from .run import ShiftResult, diagnose_shift

__all__ = ["ShiftResult", "diagnose_shift"]
