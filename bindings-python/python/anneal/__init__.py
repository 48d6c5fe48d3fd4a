"""anneal: import datasets, register models, fine-tune them and generate, in one home.

>>> import anneal
>>> home = anneal.Home.open("./anneal-home")
>>> ds = home.datasets().import_file("train.jsonl")
>>> model = home.models().create_preset("nano", seed=0)
"""

from anneal._anneal import (
    AlreadyExistsError,
    AnnealError,
    AnnealFileNotFoundError,
    AnnealIOError,
    CallbackError,
    CancelledError,
    CancelToken,
    ComputeError,
    DatasetRecord,
    DatasetSplit,
    DatasetStats,
    DatasetStore,
    DuplicateContentError,
    Home,
    IncompatibleHomeError,
    InternalError,
    InUseError,
    InvalidConfigError,
    InvalidDataError,
    ModelFile,
    ModelRecord,
    ModelRegistry,
    NotFoundError,
    Preset,
    StorageError,
    __version__,
)

__all__ = [
    "AlreadyExistsError",
    "AnnealError",
    "AnnealFileNotFoundError",
    "AnnealIOError",
    "CallbackError",
    "CancelToken",
    "CancelledError",
    "ComputeError",
    "DatasetRecord",
    "DatasetSplit",
    "DatasetStats",
    "DatasetStore",
    "DuplicateContentError",
    "Home",
    "InUseError",
    "IncompatibleHomeError",
    "InternalError",
    "InvalidConfigError",
    "InvalidDataError",
    "ModelFile",
    "ModelRecord",
    "ModelRegistry",
    "NotFoundError",
    "Preset",
    "StorageError",
    "__version__",
]
