"""Data: sources (built-in shapes, TFDS, webdataset shards, text files, mixtures), preprocessing,
tokenizers, masking and grain pipelines."""

from vlfm.data import builtin, mixing, text_files, tfds_source, webdataset  # noqa: F401  (register datasets)
from vlfm.data import label_text  # noqa: F401  (registers the image-label-text wrappers)
from vlfm.data import builtin_tasks  # noqa: F401  (registers the vision-language task datasets)
from vlfm.data import audio, sounds, video, videos  # noqa: F401  (audio / video fields, built-in sounds / videos)
from vlfm.data import multi_hot  # noqa: F401  (the multi-label `labels` field)
from vlfm.data import karpathy, statements, vqav2  # noqa: F401  (registers the benchmark readers)
from vlfm.data.bad_data import EmptyDatasetError
from vlfm.data.pipeline import DATASETS, DataIterator, DatasetBundle, build_dataset, to_global, train_iterator

__all__ = ["DATASETS", "DataIterator", "DatasetBundle", "EmptyDatasetError", "build_dataset", "to_global",
           "train_iterator"]
