"""The data stage: a source (Hub id, folder or file, read by the reader its format names) -> examples (text,
label, id) in a label space -> a stratified, seeded train / validation split."""

from .examples import Dataset, Examples, LabelSpace, Table
from .readers import DATA_ENV, READERS
from .sources import load_source, resolve_source
from .split import (
    Split,
    TrainingData,
    evaluation_examples,
    evaluation_set_names,
    load_training_data,
    split_train_validation,
    validation_hash,
)

__all__ = ["DATA_ENV", "READERS", "Dataset", "Examples", "LabelSpace", "Split", "Table", "TrainingData",
           "evaluation_examples", "evaluation_set_names", "load_source", "load_training_data", "resolve_source",
           "split_train_validation", "validation_hash"]
