"""Data: sources (the built-in shapes dataset, ...), tokenizers, masking and grain pipelines."""

from vlfm.data import builtin  # noqa: F401  (registers the built-in dataset)
from vlfm.data.pipeline import DATASETS, DatasetBundle, build_dataset, to_global, train_iterator

__all__ = ["DATASETS", "DatasetBundle", "build_dataset", "to_global", "train_iterator"]
