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
    Continual,
    DatasetRecord,
    DatasetSplit,
    DatasetStats,
    DatasetStore,
    DuplicateContentError,
    Generation,
    GenerationRecord,
    Generator,
    Home,
    ImageGenerator,
    IncompatibleHomeError,
    InternalError,
    InUseError,
    InvalidConfigError,
    InvalidDataError,
    JobHandle,
    JobLog,
    JobRecord,
    MetricPoint,
    ModelFile,
    ModelRecord,
    ModelRegistry,
    ModelUsage,
    NotFoundError,
    Predictor,
    Preset,
    Score,
    StorageError,
    StreamChunk,
    Timings,
    TokenStream,
    TrainingEngine,
    TrainReport,
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
    "Continual",
    "DatasetRecord",
    "DatasetSplit",
    "DatasetStats",
    "DatasetStore",
    "DuplicateContentError",
    "Generation",
    "GenerationRecord",
    "Generator",
    "Home",
    "ImageGenerator",
    "InUseError",
    "IncompatibleHomeError",
    "InternalError",
    "InvalidConfigError",
    "InvalidDataError",
    "JobHandle",
    "JobLog",
    "JobRecord",
    "MetricPoint",
    "ModelFile",
    "ModelRecord",
    "ModelRegistry",
    "ModelUsage",
    "NotFoundError",
    "Predictor",
    "Preset",
    "Score",
    "StorageError",
    "StreamChunk",
    "Timings",
    "TokenStream",
    "TrainReport",
    "TrainingEngine",
    "__version__",
]

# Webhooks, their signatures, and synthetic tabular scenarios.
from anneal._anneal import (  # noqa: E402
    Deliverer,
    Webhooks,
    synthetic_scenario,
    verify_signature,
    write_synthetic_scenario,
)

__all__ += ["Deliverer", "Webhooks", "synthetic_scenario", "verify_signature", "write_synthetic_scenario"]

# Retraining monitors.
from anneal._anneal import Monitor, MonitorHandle, Monitors  # noqa: E402

__all__ += ["Monitor", "MonitorHandle", "Monitors"]

# Plots: PNG bytes that Jupyter shows as an image (TrainingEngine.plot, JobHandle.plot).
from anneal._png import PngBytes  # noqa: E402

__all__ += ["PngBytes"]
