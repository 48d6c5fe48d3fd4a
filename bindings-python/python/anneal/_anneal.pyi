"""Type stubs of the native module `anneal._anneal` (re-exported by `anneal`)."""

import builtins
import datetime
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Literal, TypedDict, final

from typing_extensions import Unpack

from anneal._png import PngBytes

__version__: str

StrPath = str | os.PathLike[str]
DatasetFormat = Literal["text", "completion", "instruction", "chat", "tabular", "image"]
SourceFormat = Literal["jsonl", "json", "csv", "tsv", "txt", "records", "images"]
ImageLayout = Literal["imagefolder", "captions", "instance"]
TxtMode = Literal["lines", "document"]
OnDuplicate = Literal["error", "reuse"]
ModelKind = Literal["base", "full", "lora", "classifier"]
Storage = Literal["copy", "reference"]
IfExists = Literal["new_version", "reuse", "error"]

# ---------------------------------------------------------------- events

class _ErrorInfo(TypedDict):
    code: str
    message: str

class TaskStartedEvent(TypedDict, total=False):
    type: Literal["task_started"]
    task: str
    name: str
    total: int
    unit: str

class TaskProgressEvent(TypedDict, total=False):
    type: Literal["task_progress"]
    task: str
    done: int
    total: int

class TaskFinishedEvent(TypedDict, total=False):
    type: Literal["task_finished"]
    task: str
    status: Literal["completed", "failed", "cancelled"]
    id: str
    error: _ErrorInfo

class JobStartedEvent(TypedDict):
    type: Literal["job_started"]
    job_id: str
    total_steps: int
    epochs: int

class StepEvent(TypedDict, total=False):
    type: Literal["step"]
    job_id: str
    epoch: int
    step: int
    total_steps: int
    loss: float
    lr: float
    tokens_per_sec: float
    progress: float
    sample: str
    image: str

class EvalEvent(TypedDict):
    type: Literal["eval"]
    job_id: str
    step: int
    metrics: dict[str, float]

class CheckpointEvent(TypedDict):
    type: Literal["checkpoint"]
    job_id: str
    step: int
    path: str

class LogEvent(TypedDict):
    type: Literal["log"]
    job_id: str
    level: str
    message: str

class JobFinishedEvent(TypedDict, total=False):
    type: Literal["job_finished"]
    job_id: str
    status: Literal["completed", "failed", "cancelled"]
    model_id: str
    error: _ErrorInfo

class DriftDetectedEvent(TypedDict, total=False):
    type: Literal["drift_detected"]
    monitor: str
    model: str
    model_id: str
    signal: str
    window_rows: int
    drifted_columns: list[str]
    score: float
    threshold: float
    expected_accuracy: float

class RetrainStartedEvent(TypedDict):
    type: Literal["retrain_started"]
    monitor: str
    model: str
    model_id: str
    job_id: str
    trigger: str
    reason: str

class CandidateEvaluatedEvent(TypedDict, total=False):
    type: Literal["candidate_evaluated"]
    monitor: str
    candidate: str
    candidate_id: str
    production: str
    dataset_id: str
    metric: str
    candidate_value: float
    production_value: float
    metrics: dict[str, float]
    verdict: Literal["passed", "failed"]
    reason: str

class PromotedEvent(TypedDict, total=False):
    type: Literal["promoted"]
    model: str
    model_id: str
    alias: str
    previous: str
    mode: str
    monitor: str
    reason: str

class RolledBackEvent(TypedDict, total=False):
    type: Literal["rolled_back"]
    model: str
    model_id: str
    alias: str
    previous: str
    monitor: str
    reason: str

class MonitorErrorEvent(TypedDict, total=False):
    type: Literal["monitor_error"]
    monitor: str
    model: str
    job_id: str
    error: _ErrorInfo

Event = (
    TaskStartedEvent
    | TaskProgressEvent
    | TaskFinishedEvent
    | JobStartedEvent
    | StepEvent
    | EvalEvent
    | CheckpointEvent
    | LogEvent
    | JobFinishedEvent
    | DriftDetectedEvent
    | RetrainStartedEvent
    | CandidateEvaluatedEvent
    | PromotedEvent
    | RolledBackEvent
    | MonitorErrorEvent
    | dict[str, Any]
)
"""Events are dicts with a `type` key (`task_started`, `task_progress`, `task_finished`,
`job_started`, `step`, `eval`, `checkpoint`, `log`, `job_finished`; monitors: `drift_detected`,
`retrain_started`, `candidate_evaluated`, `promoted`, `rolled_back`, `monitor_error`)."""

OnEvent = Callable[[Event], object]

@final
class CancelToken:
    """Cancels a long call from another thread; the call raises `CancelledError`."""

    def __init__(self) -> None: ...
    def cancel(self) -> None: ...
    @property
    def is_cancelled(self) -> bool: ...

# ---------------------------------------------------------------- errors

class AnnealError(Exception):
    """Base class of every anneal error."""

    code: str

class InvalidConfigError(AnnealError):
    field: str
    reason: str

class InvalidDataError(AnnealError):
    file: str | None
    record: int | None
    field: str | None
    reason: str

class NotFoundError(AnnealError): ...
class AlreadyExistsError(AnnealError): ...

class DuplicateContentError(AnnealError):
    sha256: str
    existing_id: str
    existing_name: str

class InUseError(AnnealError): ...

class IncompatibleHomeError(AnnealError):
    path: str
    found: int
    supported: int

class CancelledError(AnnealError): ...
class CallbackError(AnnealError): ...
class StorageError(AnnealError): ...
class ComputeError(AnnealError): ...
class InternalError(AnnealError): ...
class AnnealFileNotFoundError(AnnealError, FileNotFoundError): ...
class AnnealIOError(AnnealError, OSError): ...

# ---------------------------------------------------------------- home

@final
class Home:
    """An opened home directory: the catalog and every stored file."""

    @staticmethod
    def open(path: StrPath, *, memory_limit: int | None = None) -> Home: ...
    @property
    def root(self) -> str: ...
    @property
    def memory_limit(self) -> int: ...
    def schema_version(self) -> int: ...
    @staticmethod
    def supported_schema_version() -> int: ...
    def webhooks(self) -> Webhooks: ...
    def stats(self, *, since: str | datetime.datetime | None = None, recent: int | None = None) -> HomeStats:
        """Figures read from the catalog now; `since` limits activity, jobs, generations
        and alias changes to what happened at or after it (a naive datetime is UTC)."""
    def datasets(self) -> DatasetStore: ...
    def models(self) -> ModelRegistry: ...
    def training(self) -> TrainingEngine: ...
    def generator(
        self,
        model: str,
        *,
        merge_adapter: bool | None = None,
        dtype: Literal["f32", "bf16", "f16"] | None = None,
        record: bool | None = None,
        quantize: Literal["q8_0", "bf16"] | None = None,
    ) -> Generator: ...
    def image_generator(
        self,
        model: str,
        *,
        merge_adapter: bool | None = None,
        record: bool | None = None,
    ) -> ImageGenerator: ...
    def predictor(
        self,
        model: str,
        *,
        log_features: bool | None = None,
        max_rows: int | None = None,
        max_age_days: int | None = None,
    ) -> Predictor: ...
    def continual(self) -> Continual: ...
    def monitors(self) -> Monitors: ...

# ---------------------------------------------------------------- datasets

class FieldStats(TypedDict):
    min_chars: int
    max_chars: int
    mean_chars: float
    empty: int

class LengthBucket(TypedDict):
    min_chars: int
    max_chars: int
    count: int

class SizeStats(TypedDict):
    min: int
    max: int
    mean: float

class ImageStats(TypedDict):
    count: int
    width: SizeStats
    height: SizeStats
    aspect_ratios: dict[str, int]
    modes: dict[str, int]
    formats: dict[str, int]

@final
class DatasetRecord:
    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def format(self) -> DatasetFormat: ...
    @property
    def sha256(self) -> str: ...
    @property
    def num_records(self) -> int: ...
    @property
    def bytes(self) -> int: ...
    @property
    def source(self) -> str: ...
    @property
    def source_format(self) -> str: ...
    @property
    def columns(self) -> dict[str, str]: ...
    @property
    def parent_id(self) -> str | None: ...
    @property
    def created_at(self) -> str: ...
    @property
    def path(self) -> str: ...
    def to_dict(self) -> dict[str, Any]: ...

@final
class DatasetStats:
    @property
    def num_records(self) -> int: ...
    @property
    def bytes(self) -> int: ...
    @property
    def fields(self) -> dict[str, FieldStats]: ...
    @property
    def length_histogram(self) -> list[LengthBucket]: ...
    @property
    def role_counts(self) -> dict[str, int] | None: ...
    @property
    def label_counts(self) -> dict[str, int] | None: ...
    @property
    def images(self) -> ImageStats | None: ...
    @property
    def tokens(self) -> dict[str, int] | None: ...
    def to_dict(self) -> dict[str, Any]: ...

@final
class DatasetSplit:
    @property
    def train(self) -> DatasetRecord: ...
    @property
    def val(self) -> DatasetRecord: ...
    def __iter__(self) -> Iterator[DatasetRecord]: ...
    def to_dict(self) -> dict[str, Any]: ...

@final
class DatasetStore:
    """Imports, stores and serves datasets."""

    def import_file(
        self,
        path: StrPath,
        *,
        name: str | None = None,
        format: DatasetFormat | None = None,
        columns: Mapping[str, str] | None = None,
        source_format: SourceFormat | None = None,
        txt_mode: TxtMode | None = None,
        on_duplicate: OnDuplicate | None = None,
        max_record_bytes: int | None = None,
        on_event: OnEvent | None = None,
        cancel: CancelToken | None = None,
    ) -> DatasetRecord: ...
    def import_records(
        self,
        records: Iterable[Mapping[str, Any]],
        *,
        name: str | None = None,
        format: DatasetFormat | None = None,
        columns: Mapping[str, str] | None = None,
        on_duplicate: OnDuplicate | None = None,
        max_record_bytes: int | None = None,
        on_event: OnEvent | None = None,
        cancel: CancelToken | None = None,
    ) -> DatasetRecord: ...
    def get(self, id_or_name: str) -> DatasetRecord: ...
    def list(self) -> builtins.list[DatasetRecord]: ...
    def preview(self, id_or_name: str, n: int = 5) -> builtins.list[dict[str, Any]]: ...
    def stats(self, id_or_name: str) -> DatasetStats: ...
    def split(
        self,
        id_or_name: str,
        val_fraction: float,
        *,
        seed: int | None = None,
        names: tuple[str, str] | None = None,
    ) -> DatasetSplit: ...
    def delete(self, id_or_name: str, *, force: bool | None = None) -> None: ...
    def import_images(
        self,
        path: StrPath,
        *,
        name: str | None = None,
        layout: ImageLayout | None = None,
        caption_column: str | None = None,
        image_column: str | None = None,
        caption_extension: str | None = None,
        instance_prompt: str | None = None,
        on_duplicate: OnDuplicate | None = None,
        max_pixels: int | None = None,
        max_image_bytes: int | None = None,
        on_event: OnEvent | None = None,
        cancel: CancelToken | None = None,
    ) -> DatasetRecord:
        """Imports a folder of images with captions: an HF imagefolder (metadata.jsonl /
        metadata.csv), kohya sidecar captions (foo.png + foo.txt), or a DreamBooth
        instance set (give instance_prompt). Every image is decoded; a bad one is
        invalid_data naming it and nothing is stored. Images over max_pixels are refused."""
    def thumbnails(
        self, id_or_name: str, n: int = 5, *, size: int = 128
    ) -> builtins.list[tuple[dict[str, Any], Any]]:
        """The first n records of an image dataset with a thumbnail (at most size x size)
        of each: a PIL.Image.Image when Pillow is installed, else PNG bytes."""
    def generate(
        self,
        model: str,
        prompts: builtins.list[str],
        *,
        name: str | None = None,
        generation: GenerationConfig | None = None,
        batch_size: int | None = None,
        on_duplicate: OnDuplicate | None = None,
        on_event: OnEvent | None = None,
        cancel: CancelToken | None = None,
    ) -> DatasetRecord:
        """A completion of each prompt by `model`, stored as a new `completion` dataset
        with its lineage (all or nothing)."""
    def lineage(self, id_or_name: str) -> DatasetLineage | None: ...

# ---------------------------------------------------------------- models

@final
class ModelFile:
    @property
    def name(self) -> str: ...
    @property
    def bytes(self) -> int: ...
    @property
    def sha256(self) -> str: ...
    def to_dict(self) -> dict[str, Any]: ...

@final
class Preset:
    @property
    def name(self) -> str: ...
    @property
    def description(self) -> str: ...
    @property
    def hidden_size(self) -> int: ...
    @property
    def intermediate_size(self) -> int: ...
    @property
    def num_hidden_layers(self) -> int: ...
    @property
    def num_attention_heads(self) -> int: ...
    @property
    def num_key_value_heads(self) -> int: ...
    @property
    def max_position_embeddings(self) -> int: ...
    def to_dict(self) -> dict[str, Any]: ...

@final
class ModelRecord:
    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def kind(self) -> ModelKind: ...
    @property
    def family(self) -> str: ...
    @property
    def architecture(self) -> str: ...
    @property
    def model_type(self) -> str: ...
    @property
    def parent_id(self) -> str | None: ...
    @property
    def params(self) -> int: ...
    @property
    def dtype(self) -> str: ...
    @property
    def bytes(self) -> int: ...
    @property
    def sha256(self) -> str: ...
    @property
    def storage(self) -> Storage: ...
    @property
    def path(self) -> str: ...
    @property
    def files(self) -> list[ModelFile]: ...
    @property
    def tokenizer(self) -> str | None: ...
    @property
    def source(self) -> str: ...
    @property
    def task(self) -> str | None: ...
    @property
    def tags(self) -> list[str]: ...
    @property
    def lineage(self) -> dict[str, Any]: ...
    @property
    def config(self) -> dict[str, Any]: ...
    @property
    def created_at(self) -> str: ...
    @property
    def aliases(self) -> list[str]: ...
    def reference(self) -> str: ...
    def to_dict(self) -> dict[str, Any]: ...

@final
class ModelRegistry:
    """Registers, names, versions and serves models."""

    def register_dir(
        self,
        path: StrPath,
        *,
        name: str | None = None,
        storage: Storage | None = None,
        parent: str | None = None,
        task: str | None = None,
        tags: builtins.list[str] | None = None,
        if_exists: IfExists | None = None,
        on_event: OnEvent | None = None,
        cancel: CancelToken | None = None,
    ) -> ModelRecord: ...
    def register_file(
        self,
        path: StrPath,
        *,
        name: str | None = None,
        storage: Storage | None = None,
        parent: str | None = None,
        task: str | None = None,
        tags: builtins.list[str] | None = None,
        on_event: OnEvent | None = None,
        cancel: CancelToken | None = None,
    ) -> ModelRecord: ...
    def create_preset(
        self,
        preset: str,
        *,
        name: str | None = None,
        seed: int | None = None,
        task: str | None = None,
        tags: builtins.list[str] | None = None,
        if_exists: IfExists | None = None,
    ) -> ModelRecord: ...
    @staticmethod
    def presets() -> builtins.list[Preset]: ...
    def get(self, id: str) -> ModelRecord: ...
    def resolve(self, reference: str, /) -> ModelRecord: ...
    def list(
        self,
        *,
        kind: ModelKind | None = None,
        family: str | None = None,
        task: str | None = None,
        name: str | None = None,
        tag: str | None = None,
        parent: str | None = None,
    ) -> builtins.list[ModelRecord]: ...
    def set_alias(self, model: str, alias: str) -> ModelRecord: ...
    def remove_alias(self, name: str, alias: str) -> None: ...
    def delete(self, model: str, *, force: bool | None = None) -> None: ...
    def generations(
        self,
        *,
        model: str | None = None,
        kind: GenerationKind | None = None,
        limit: int | None = None,
    ) -> builtins.list[GenerationRecord]: ...
    def usage(self, model: str) -> ModelUsage: ...
    def promote(self, model: str, *, reason: str | None = None) -> AliasMove: ...
    def rollback(self, name: str, *, reason: str | None = None) -> AliasMove: ...
    def alias_history(self, name: str, alias: str | None = None) -> builtins.list[AliasChange]: ...
    def alias_at(self, name: str, alias: str, at: str | datetime.datetime) -> AliasChange | None: ...
    def export(
        self,
        model: str,
        format: ExportFormat,
        dest: StrPath,
        *,
        overwrite: bool | None = None,
        max_shard_bytes: int | None = None,
        base_model: str | None = None,
        quantization: GgufType | None = None,
        merge: bool | None = None,
        name: str | None = None,
        on_event: OnEvent | None = None,
        cancel: CancelToken | None = None,
    ) -> ExportReport: ...
    def import_bundle(
        self,
        path: StrPath,
        *,
        name: str | None = None,
        on_event: OnEvent | None = None,
        cancel: CancelToken | None = None,
    ) -> ModelRecord: ...

ExportFormat = Literal["hf", "peft", "gguf", "ollama", "bundle"]
GgufType = Literal["f32", "f16", "bf16", "q8_0", "q4_0", "q4_k_m"]

class ExportedFile(TypedDict):
    path: str
    bytes: int
    sha256: str

class ExportReport(TypedDict):
    model: str
    format: ExportFormat
    path: str
    files: builtins.list[ExportedFile]

# ---------------------------------------------------------------- training

JobStatus = Literal["pending", "running", "completed", "failed", "cancelled", "interrupted"]
Schedule = Literal["constant", "linear", "cosine"]
MixedPrecision = Literal["no", "bf16"]

class LoraConfig(TypedDict, total=False):
    r: int
    alpha: float
    dropout: float
    target_modules: builtins.list[str]
    fan_in_fan_out: bool | None
    use_rslora: bool

class LoraMethod(TypedDict):
    lora: LoraConfig

class ClassifierConfig(TypedDict, total=False):
    """The `classifier` training method (a tabular classifier); every field has a default."""

    model: Literal["logistic", "mlp"]
    hidden: builtins.list[int]
    c: float
    alpha: float
    optimizer: Literal["lbfgs", "adam"] | None
    max_iter: int
    batch_size: int | None
    learning_rate: float
    tol: float
    class_weight: Literal["none", "balanced"]
    validation_fraction: float
    patience: int
    seed: int | None
    sgd_learning_rate: float
    missing_indicator: bool
    categorical: builtins.list[str]
    numeric: builtins.list[str]
    exclude: builtins.list[str]

class ClassifierMethod(TypedDict):
    classifier: ClassifierConfig

ImageCrop = Literal["center", "random", "buckets"]

class ImageTrainOptions(TypedDict, total=False):
    """Image (Stable Diffusion) training (crops, min-SNR, DreamBooth, validation)."""

    resolution: int | None
    crop: ImageCrop
    random_flip: bool
    snr_gamma: float | None
    train_text_encoder: bool
    caption_dropout: float
    noise_offset: float
    instance_prompt: str | None
    class_prompt: str | None
    num_class_images: int
    prior_loss_weight: float
    validation_prompts: builtins.list[str]
    validation_every: int | None
    validation_steps: int
    validation_guidance_scale: float
    validation_scheduler: str | None
    validation_seed: int | None

class TrainSpec(TypedDict, total=False):
    """Fields of a training job; only `base` and `dataset` are required (defaults in the core)."""

    base: str
    dataset: str
    eval_dataset: str | None
    eval_fraction: float | None
    method: Literal["full", "lora", "classifier"] | LoraMethod | ClassifierMethod
    epochs: int
    max_steps: int | None
    batch_size: int
    grad_accum: int
    seq_len: int
    learning_rate: float
    warmup_steps: int
    schedule: Schedule
    mixed_precision: MixedPrecision
    adam_beta1: float
    adam_beta2: float
    adam_eps: float
    weight_decay: float
    max_grad_norm: float | None
    seed: int
    eval_every: int | None
    early_stopping_patience: int | None
    checkpoint_every: int | None
    keep_last_checkpoints: int
    output_name: str | None
    image: ImageTrainOptions | None
    init_adapter: str | None
    if_exists: IfExists

@final
class JobRecord:
    @property
    def id(self) -> str: ...
    @property
    def status(self) -> JobStatus: ...
    @property
    def is_resumable(self) -> bool: ...
    @property
    def base_model_id(self) -> str | None: ...
    @property
    def dataset_id(self) -> str | None: ...
    @property
    def eval_dataset_id(self) -> str | None: ...
    @property
    def output_model_id(self) -> str | None: ...
    @property
    def spec(self) -> dict[str, Any]: ...
    @property
    def progress(self) -> float: ...
    @property
    def epoch(self) -> int: ...
    @property
    def step(self) -> int: ...
    @property
    def total_steps(self) -> int: ...
    @property
    def tokens(self) -> int: ...
    @property
    def loss(self) -> float | None: ...
    @property
    def eval_loss(self) -> float | None: ...
    @property
    def lr(self) -> float | None: ...
    @property
    def tokens_per_sec(self) -> float | None: ...
    @property
    def sample(self) -> str | None: ...
    @property
    def heartbeat_at(self) -> int | None: ...
    @property
    def runner_pid(self) -> int | None: ...
    @property
    def cancel_requested(self) -> bool: ...
    @property
    def error(self) -> _ErrorInfo | None: ...
    @property
    def checkpoint(self) -> str | None: ...
    @property
    def image(self) -> str | None: ...
    @property
    def created_at(self) -> str: ...
    @property
    def updated_at(self) -> str: ...
    @property
    def started_at(self) -> str | None: ...
    @property
    def finished_at(self) -> str | None: ...
    def to_dict(self) -> dict[str, Any]: ...

@final
class TrainReport:
    @property
    def job_id(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def model_id(self) -> str: ...
    @property
    def final_loss(self) -> float: ...
    @property
    def eval_loss(self) -> float | None: ...
    @property
    def steps(self) -> int: ...
    @property
    def tokens(self) -> int: ...
    @property
    def duration_s(self) -> float: ...
    def to_dict(self) -> dict[str, Any]: ...

@final
class MetricPoint:
    @property
    def kind(self) -> Literal["train", "eval"]: ...
    @property
    def step(self) -> int: ...
    @property
    def epoch(self) -> int: ...
    @property
    def loss(self) -> float: ...
    @property
    def lr(self) -> float | None: ...
    @property
    def tokens_per_sec(self) -> float | None: ...
    @property
    def at(self) -> str: ...
    def to_dict(self) -> dict[str, Any]: ...

@final
class JobLog:
    @property
    def at(self) -> str: ...
    @property
    def level(self) -> str: ...
    @property
    def message(self) -> str: ...
    def to_dict(self) -> dict[str, Any]: ...

@final
class JobHandle:
    """A job running on a background thread; usable from any thread."""

    @property
    def job_id(self) -> str: ...
    @property
    def is_finished(self) -> bool: ...
    def cancel(self) -> None: ...
    def plot(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        width: int | None = None,
        height: int | None = None,
        title: str | None = None,
    ) -> PngBytes: ...
    def wait(self) -> TrainReport: ...
    def events(self) -> JobHandle: ...
    def __iter__(self) -> JobHandle: ...
    def __next__(self) -> Event: ...

@final
class TrainingEngine:
    """Creates, runs, watches and resumes training jobs."""

    def create_job(self, spec: TrainSpec | None = None, /, **fields: Unpack[TrainSpec]) -> JobRecord: ...
    def run(
        self,
        job_id: str,
        *,
        on_event: OnEvent | None = None,
        cancel: CancelToken | None = None,
        progress: bool = False,
        tensorboard: str | os.PathLike[str] | None = None,
        mlflow: str | os.PathLike[str] | None = None,
        mlflow_experiment: str | None = None,
    ) -> TrainReport: ...
    def train(
        self,
        spec: TrainSpec | None = None,
        /,
        *,
        on_event: OnEvent | None = None,
        cancel: CancelToken | None = None,
        progress: bool = False,
        tensorboard: str | os.PathLike[str] | None = None,
        mlflow: str | os.PathLike[str] | None = None,
        mlflow_experiment: str | None = None,
        **fields: Unpack[TrainSpec],
    ) -> TrainReport: ...
    def resume(
        self,
        job_id: str,
        *,
        on_event: OnEvent | None = None,
        cancel: CancelToken | None = None,
        progress: bool = False,
        tensorboard: str | os.PathLike[str] | None = None,
        mlflow: str | os.PathLike[str] | None = None,
        mlflow_experiment: str | None = None,
    ) -> TrainReport: ...
    def spawn(self, job_id: str) -> JobHandle: ...
    def plot(
        self,
        job_id: str,
        path: str | os.PathLike[str] | None = None,
        *,
        width: int | None = None,
        height: int | None = None,
        title: str | None = None,
    ) -> PngBytes: ...
    def job(self, job_id: str) -> JobRecord: ...
    def jobs(
        self,
        *,
        status: JobStatus | None = None,
        base_model: str | None = None,
        dataset: str | None = None,
    ) -> builtins.list[JobRecord]: ...
    def logs(self, job_id: str) -> builtins.list[JobLog]: ...
    def metrics(self, job_id: str) -> builtins.list[MetricPoint]: ...
    def cancel(self, job_id: str) -> JobRecord: ...

# ---------------------------------------------------------------- generation

FinishReason = Literal["eos", "stop", "length"]
GenerationKind = Literal["generate", "stream", "batch", "score", "txt2img"]

class ChatMessage(TypedDict):
    role: str
    content: str

Prompt = str | builtins.list[ChatMessage] | builtins.list[int]

@final
class Timings:
    @property
    def ttft_ms(self) -> float: ...
    @property
    def decode_ms(self) -> float: ...
    @property
    def total_ms(self) -> float: ...
    @property
    def prompt_tokens_per_s(self) -> float: ...
    @property
    def decode_tokens_per_s(self) -> float: ...
    def to_dict(self) -> dict[str, Any]: ...

@final
class Generation:
    @property
    def id(self) -> str | None: ...
    @property
    def model_id(self) -> str: ...
    @property
    def text(self) -> str: ...
    @property
    def token_ids(self) -> list[int]: ...
    @property
    def finish_reason(self) -> FinishReason: ...
    @property
    def stop_sequence(self) -> str | None: ...
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def generated_tokens(self) -> int: ...
    @property
    def seed(self) -> int | None: ...
    @property
    def timings(self) -> Timings: ...
    def to_dict(self) -> dict[str, Any]: ...

@final
class StreamChunk:
    @property
    def text(self) -> str: ...
    @property
    def token_ids(self) -> list[int]: ...
    def to_dict(self) -> dict[str, Any]: ...

@final
class Score:
    @property
    def loss(self) -> float: ...
    @property
    def perplexity(self) -> float: ...
    @property
    def tokens(self) -> int: ...
    def to_dict(self) -> dict[str, Any]: ...

@final
class GenerationRecord:
    @property
    def id(self) -> str: ...
    @property
    def model_id(self) -> str: ...
    @property
    def base_model_id(self) -> str: ...
    @property
    def kind(self) -> GenerationKind: ...
    @property
    def params(self) -> dict[str, Any]: ...
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def generated_tokens(self) -> int: ...
    @property
    def finish_reason(self) -> FinishReason | None: ...
    @property
    def ttft_ms(self) -> float | None: ...
    @property
    def duration_ms(self) -> float: ...
    @property
    def created_at(self) -> str: ...
    def to_dict(self) -> dict[str, Any]: ...

@final
class ModelUsage:
    @property
    def model_id(self) -> str: ...
    @property
    def calls(self) -> int: ...
    @property
    def generations(self) -> int: ...
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def generated_tokens(self) -> int: ...
    @property
    def total_duration_ms(self) -> float: ...
    @property
    def last_used_at(self) -> str | None: ...
    def to_dict(self) -> dict[str, Any]: ...

@final
class TokenStream(Iterator[StreamChunk]):
    """A generation in progress; `generation` is the result after the last chunk."""

    def __iter__(self) -> TokenStream: ...
    def __next__(self) -> StreamChunk: ...
    @property
    def generation(self) -> Generation | None: ...

@final
class Generator:
    """Generates with one loaded model; the GIL is released during every computation."""

    @staticmethod
    def load(
        models: ModelRegistry,
        model: str,
        *,
        merge_adapter: bool | None = None,
        dtype: Literal["f32", "bf16", "f16"] | None = None,
        record: bool | None = None,
        quantize: Literal["q8_0", "bf16"] | None = None,
    ) -> Generator: ...
    def generate(
        self,
        prompt: Prompt,
        *,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        min_p: float | None = None,
        repetition_penalty: float | None = None,
        seed: int | None = None,
        stop: str | builtins.list[str] | None = None,
        ignore_eos: bool | None = None,
        adapter: str | None = None,
        on_event: OnEvent | None = None,
        cancel: CancelToken | None = None,
    ) -> Generation: ...
    def stream(
        self,
        prompt: Prompt,
        *,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        min_p: float | None = None,
        repetition_penalty: float | None = None,
        seed: int | None = None,
        stop: str | builtins.list[str] | None = None,
        ignore_eos: bool | None = None,
        adapter: str | None = None,
    ) -> TokenStream: ...
    def generate_batch(
        self,
        prompts: builtins.list[Prompt],
        *,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        min_p: float | None = None,
        repetition_penalty: float | None = None,
        seed: int | None = None,
        stop: str | builtins.list[str] | None = None,
        ignore_eos: bool | None = None,
        adapter: str | None = None,
        on_event: OnEvent | None = None,
        cancel: CancelToken | None = None,
    ) -> builtins.list[Generation]: ...
    def score(self, texts: builtins.list[str], *, adapter: str | None = None) -> builtins.list[Score]: ...
    def add_adapter(self, model: str) -> ModelRecord: ...
    def adapters(self) -> builtins.list[ModelRecord]: ...
    def defaults(self) -> dict[str, Any]: ...
    @property
    def model(self) -> ModelRecord: ...
    @property
    def base_model(self) -> ModelRecord: ...
    @property
    def context_length(self) -> int: ...
    @property
    def eos_token_ids(self) -> builtins.list[int]: ...

# ---------------------------------------------------------------- images

class ImageAdapter(TypedDict, total=False):
    """A LoRA applied to one text-to-image request."""

    model: str
    scale: float

@final
class ImageGenerator:
    """Text-to-image with one loaded Stable Diffusion model; the GIL is released while it works."""

    def generate(
        self,
        prompt: str | builtins.list[str],
        *,
        negative_prompt: str | None = None,
        guidance_scale: float | None = None,
        steps: int | None = None,
        scheduler: str | None = None,
        seed: int | None = None,
        width: int | None = None,
        height: int | None = None,
        num_images: int | None = None,
        clip_skip: int | None = None,
        adapters: builtins.list[ImageAdapter] | None = None,
        on_event: OnEvent | None = None,
        cancel: CancelToken | None = None,
    ) -> builtins.list[Any]:
        """PIL images (settings in `.info`) when Pillow is installed, else PNG bytes."""
    @property
    def model(self) -> ModelRecord: ...

# ---------------------------------------------------------------- continual learning

ClassifierModel = Literal["logistic", "mlp"]
ClassifierOptimizer = Literal["lbfgs", "adam"]
ClassWeighting = Literal["none", "balanced"]
DriftVerdict = Literal["no_drift", "drift", "insufficient_data"]
DriftTest = Literal["ks", "wasserstein", "chi_square", "jensen_shannon"]
ColumnKind = Literal["numeric", "categorical"]

class Prediction(TypedDict):
    """What `Predictor.predict` answers for one row (the row is logged as `prediction_id`)."""

    label: Any
    confidence: float
    probabilities: dict[str, float]
    model: str
    model_id: str
    prediction_id: str
    unseen: builtins.list[str]

class PredictionRecord(TypedDict):
    """A logged prediction (a catalog row)."""

    id: str
    model_id: str
    features: dict[str, Any] | None
    features_sha256: str
    label: Any
    confidence: float
    latency_ms: float
    actual: Any | None
    correct: bool | None
    labelled_at: str | None
    created_at: str

class RealisedAccuracy(TypedDict):
    model_id: str
    labelled: int
    correct: int
    accuracy: float | None

class EvaluationRecord(TypedDict):
    """An evaluation of a model on a dataset (a catalog row)."""

    id: str
    model_id: str
    model: str
    dataset_id: str
    metrics: dict[str, float]
    rows: int
    created_at: str

class ColumnDrift(TypedDict):
    column: str
    kind: ColumnKind
    test: DriftTest
    statistic: float | None
    p_value: float | None
    threshold: float
    drifted: bool
    psi: float | None
    reference_count: int
    window_count: int
    window_missing_share: float
    reference_missing_share: float
    unseen_share: float | None

class DriftReport(TypedDict):
    verdict: DriftVerdict
    window_rows: int
    reference_rows: int
    drifted_columns: int
    drift_share: float
    columns: builtins.list[ColumnDrift]

class LossDrift(TypedDict):
    reference_dataset: str
    statistic: float
    p_value: float
    reference_samples: int
    window_samples: int
    reference_mean_loss: float
    window_mean_loss: float

class DriftCheck(TypedDict):
    """A stored drift check (a catalog row)."""

    id: str
    model_id: str
    model: str
    window: str
    verdict: DriftVerdict
    report: DriftReport | None
    loss: LossDrift | None
    expected_accuracy: float | None
    realised_accuracy: float | None
    labelled: int
    created_at: str

class PredictionsWindow(TypedDict):
    predictions: int

class DatasetWindow(TypedDict):
    dataset: str

DriftWindow = PredictionsWindow | DatasetWindow

@final
class Predictor:
    """Serves a registered classifier and logs every answered row; the GIL is released while it predicts."""

    def predict(self, row: Mapping[str, Any]) -> Prediction: ...
    def predict_batch(self, rows: Iterable[Mapping[str, Any]]) -> builtins.list[Prediction]: ...
    @property
    def model(self) -> ModelRecord: ...
    @property
    def classes(self) -> builtins.list[Any]: ...

@final
class Continual:
    """Labels, realised accuracy, evaluations and drift checks of a home's models."""

    def label(self, prediction_id: str, y: Any) -> PredictionRecord: ...
    def prediction(self, prediction_id: str) -> PredictionRecord: ...
    def predictions(
        self, model: str, *, labelled: bool | None = None, limit: int | None = None
    ) -> builtins.list[PredictionRecord]: ...
    def realised_accuracy(self, model: str, *, since: str | None = None, last: int | None = None) -> RealisedAccuracy: ...
    def evaluate(self, model: str, dataset: str) -> EvaluationRecord: ...
    def evaluations(self, model: str) -> builtins.list[EvaluationRecord]: ...
    def drift(
        self,
        model: str,
        window: DriftWindow,
        *,
        numeric_test: Literal["ks", "wasserstein"] | None = None,
        categorical_test: Literal["chi_square", "jensen_shannon"] | None = None,
        p_value: float | None = None,
        wasserstein_threshold: float | None = None,
        jensen_shannon_threshold: float | None = None,
        min_rows: int | None = None,
        drift_share: float | None = None,
    ) -> DriftCheck: ...
    def drift_checks(self, model: str) -> builtins.list[DriftCheck]: ...
    def timeline(
        self,
        model_name: str,
        *,
        window: int | None = None,
        since: str | None = None,
        until: str | None = None,
        max_points: int | None = None,
    ) -> Timeline:
        """The model name over time, from the catalog's rows (GIL released)."""
    def plot_timeline(
        self,
        model_name: str,
        path: StrPath | None = None,
        *,
        window: int | None = None,
        since: str | None = None,
        until: str | None = None,
        max_points: int | None = None,
        width: int | None = None,
        height: int | None = None,
        title: str | None = None,
    ) -> bytes:
        """The timeline as PNG bytes; with `path`, also written there atomically."""
    def learn(
        self,
        model: str,
        records: Iterable[Mapping[str, Any]],
        *,
        epochs: int | None = None,
        batch_size: int | None = None,
        learning_rate: float | None = None,
        output_name: str | None = None,
    ) -> ModelRecord:
        """SGD updates of a classifier on labelled records (`{column: value, "label": y}`),
        registered as a new version with lineage; the model learned from is unchanged."""

TimelineEventKind = Literal["promoted", "rolled_back", "retrain_started", "kept"]

class TimelineOptions(TypedDict, total=False):
    """What `Continual.timeline` reads (its keyword arguments)."""

    window: int
    since: str | None
    until: str | None
    max_points: int

class PlotOptions(TypedDict, total=False):
    """How `Continual.plot_timeline` draws (its keyword arguments besides the timeline's)."""

    width: int
    height: int
    title: str | None

class AccuracyPoint(TypedDict):
    """Rolling realised accuracy after one labelled prediction."""

    index: int
    at: str
    prediction_id: str
    model_id: str
    version: int
    correct: bool
    accuracy: float
    window_rows: int

class DriftPoint(TypedDict):
    """One drift check of a version of the model name."""

    at: str
    check_id: str
    model_id: str
    version: int
    window: str
    verdict: DriftVerdict
    score: float | None
    drifted_columns: int | None
    columns: int | None
    window_rows: int | None
    expected_accuracy: float | None
    realised_accuracy: float | None

class EvaluationPoint(TypedDict):
    """One evaluation of a version of the model name."""

    at: str
    evaluation_id: str
    model_id: str
    version: int
    dataset_id: str
    metrics: dict[str, float]
    rows: int

class TimelineEvent(TypedDict):
    """A moment the timeline marks."""

    at: str
    kind: TimelineEventKind
    model_id: str | None
    version: int | None
    previous_version: int | None
    job_id: str | None
    monitor: str | None
    reason: str | None

class VersionAccuracy(TypedDict):
    """Realised accuracy of one version over the timeline's range."""

    model_id: str
    version: int
    predictions: int
    labelled: int
    correct: int
    accuracy: float | None
    first_at: str
    last_at: str

class Timeline(TypedDict):
    """A model name over time (`Continual.timeline`)."""

    model_name: str
    window: int
    since: str | None
    until: str | None
    labelled: int
    accuracy: builtins.list[AccuracyPoint]
    versions: builtins.list[VersionAccuracy]
    drift: builtins.list[DriftPoint]
    evaluations: builtins.list[EvaluationPoint]
    events: builtins.list[TimelineEvent]
    accuracy_floor: float | None

class LearnOptions(TypedDict, total=False):
    """How `Continual.learn` updates a classifier (its keyword arguments)."""

    epochs: int
    batch_size: int
    learning_rate: float | None
    output_name: str | None

class LearnLineage(TypedDict):
    """`ModelRecord.lineage["learned"]` of a version made by `Continual.learn`."""

    records: int
    records_sha256: str
    epochs: int
    batch_size: int
    learning_rate: float
    steps: int
    accuracy_before: float
    accuracy_after: float
    log_loss_before: float
    log_loss_after: float

# ---------------------------------------------------------------- monitors (home.monitors())

PromotionMode = Literal["auto", "manual", "shadow"]
GateMetric = Literal["accuracy", "f1_macro", "log_loss", "loss", "perplexity"]
TickOutcome = Literal["idle", "held", "retrain_started", "waiting", "promoted", "kept", "awaiting_approval", "error"]
DecisionKind = Literal["held", "drift_detected", "retrain_started", "retrain_resumed", "candidate_evaluated", "shadow", "promoted", "kept", "rolled_back", "error"]

class RetrainTriggers(TypedDict, total=False):
    """What triggers a retrain; each trigger is off unless set, at least one must be."""

    accuracy_floor: float | None
    relative_drop: float | None
    drift_window: int | None
    new_labels: int | None
    schedule_secs: float | None
    window: int
    new_rows: int | None
    metric: Literal["loss", "perplexity"] | None
    metric_limit: float | None

class RetrainGuards(TypedDict, total=False):
    """What holds a trigger back."""

    min_samples: int
    consecutive_breaches: int
    cooldown_secs: float
    daily_cap: int | None

class RetrainAction(TypedDict, total=False):
    """The retraining job (a classifier refit on replayed old rows plus labelled predictions)."""

    config: ClassifierConfig | None
    replay_fraction: float
    lm_method: Literal["lora", "continue"] | None
    lora: LoraConfig | None
    max_steps: int | None
    learning_rate: float | None

class GatePolicy(TypedDict, total=False):
    """How a candidate is gated against production on the same evaluation set."""

    mode: PromotionMode
    metric: GateMetric | None
    floor: float | None
    margin: float
    dataset: str | None
    holdout_fraction: float
    retention_versions: int | None
    retention_datasets: builtins.list[str]
    retention_tolerance: float

class RetrainPolicy(TypedDict, total=False):
    """A monitor's policy (`Monitors.create`, `Monitor.set_policy`); every field has a default
    except that at least one trigger must be set. Unknown keys raise InvalidConfigError."""

    triggers: RetrainTriggers
    guards: RetrainGuards
    action: RetrainAction
    gate: GatePolicy

class TickReport(TypedDict):
    """What one `Monitor.tick` did."""

    monitor: str
    outcome: TickOutcome
    model: str | None
    realised_accuracy: float | None
    labelled: int
    trigger: str | None
    reason: str
    job_id: str | None
    candidate: str | None
    at: str
    window_metric: float | None

class MonitorRecord(TypedDict):
    """A monitor as stored in the catalog (its policy, every field filled in, and its state)."""

    id: str
    name: str
    model_name: str
    policy: RetrainPolicy
    consecutive_breaches: int
    last_retrain_at: str | None
    retrains_today: int
    current_job_id: str | None
    candidate_id: str | None
    eval_dataset_id: str | None
    last_tick: TickReport | None
    created_at: str
    updated_at: str

class MonitorFeed(TypedDict):
    """A dataset fed to a language model's monitor (`Monitor.feed`)."""

    id: int
    dataset_id: str
    dataset: str
    rows: int
    fed_at: str
    job_id: str | None

class MonitorDecision(TypedDict):
    """One row of a monitor's decision trail."""

    id: int
    monitor_id: str
    kind: DecisionKind
    model_id: str | None
    job_id: str | None
    candidate_id: str | None
    trigger: str | None
    reason: str
    details: dict[str, Any]
    at: str

@final
class Monitors:
    """The retraining monitors of a home (`home.monitors()`)."""

    def create(self, model_name: str, policy: RetrainPolicy | Mapping[str, Any], *, name: str | None = None) -> Monitor:
        """A monitor of `model_name`'s production classifier. A bad policy raises
        InvalidConfigError naming the field (`guards.min_samples`)."""
    def get(self, name: str) -> Monitor: ...
    def list(self) -> builtins.list[MonitorRecord]: ...
    def delete(self, name: str) -> None: ...

@final
class Monitor:
    """One monitor: `tick()` runs one pass (GIL released), `spawn()` ticks in the background."""

    @property
    def name(self) -> str: ...
    def record(self) -> MonitorRecord: ...
    def decisions(self) -> builtins.list[MonitorDecision]: ...
    def set_policy(self, policy: RetrainPolicy | Mapping[str, Any]) -> MonitorRecord: ...
    def feed(self, dataset: str) -> MonitorFeed:
        """Feeds a dataset to a language model's monitor (its next retrain takes it)."""
    def feeds(self) -> builtins.list[MonitorFeed]: ...
    def tick(
        self,
        *,
        on_event: OnEvent | None = None,
        run_jobs: bool | None = None,
        cancel: CancelToken | None = None,
    ) -> TickReport: ...
    def approve(self, reason: str | None = None, *, on_event: OnEvent | None = None) -> AliasMove: ...
    def rollback(self, reason: str | None = None, *, on_event: OnEvent | None = None) -> AliasMove: ...
    def spawn(self, interval_secs: float, on_event: OnEvent | None = None) -> MonitorHandle:
        """Ticks every `interval_secs` on a background thread; `on_event` is called from
        that thread. Keep the handle: dropping it stops the monitor."""

@final
class MonitorHandle:
    """A monitor ticking on a background thread (a context manager)."""

    def stop(self) -> None: ...
    def cancel(self) -> None: ...
    @property
    def running(self) -> bool: ...
    @property
    def ticks(self) -> int: ...
    @property
    def last_error(self) -> _ErrorInfo | None: ...
    def __enter__(self) -> MonitorHandle: ...
    def __exit__(self, *args: object) -> bool: ...

# ---------------------------------------------------------------- the command line

def cli_main(argv: builtins.list[str]) -> int:
    """Runs the `anneal` command line with `argv` (without the program name); returns the exit code."""
    ...

# ---------------------------------------------------------------- toy data (anneal.shapes)

class ShapesScore(TypedDict):
    """Shares of images whose dominant colour, shape, and both match their prompt."""
    images: int
    color: float
    shape: float
    both: float

def shapes_write_imagefolder(dir: str | os.PathLike[str], n: int = 480, size: int = 32, seed: int = 0) -> None: ...
def shapes_score(images: builtins.list[Any], prompts: builtins.list[str]) -> float: ...
def shapes_evaluate(images: builtins.list[Any], prompts: builtins.list[str]) -> ShapesScore: ...
def shapes_chance() -> ShapesScore: ...

class ShapesRecommended(TypedDict):
    """The `tiny-shapes` preset's recommended training and sampling settings."""
    learning_rate: float
    warmup_steps: int
    schedule: Schedule
    steps: int
    batch_size: int
    snr_gamma: float | None
    train_text_encoder: bool
    scheduler: str
    inference_steps: int
    guidance_scale: float
    caption_dropout: float
    resolution: int

def shapes_recommended() -> ShapesRecommended: ...
def shapes_prompts() -> builtins.list[str]: ...
def shapes_grid(rows: builtins.list[builtins.list[Any]], scale: int = 1) -> bytes: ...

# ---------------------------------------------------------------- webhooks (home.webhooks())

WebhookFormat = Literal["json", "discord", "slack"]
DeliveryStatus = Literal["pending", "delivered", "failed"]

class Webhook(TypedDict):
    id: str
    url: str
    format: WebhookFormat
    secret: str
    events: builtins.list[str]
    timeout_ms: int
    max_attempts: int
    retry_base_ms: int
    retry_max_ms: int
    created_at: str

class Delivery(TypedDict):
    id: str
    webhook_id: str
    event_type: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: str
    last_status: int | None
    last_error: str | None
    body: str
    created_at: str
    delivered_at: str | None

class DeliveryReport(TypedDict):
    attempted: int
    delivered: int
    retried: int
    failed: int

@final
class Webhooks:
    """The webhooks of a home and their outbox: signed (Standard Webhooks), retried,
    delivered at least once and deduplicated by `webhook-id`."""

    def add(
        self,
        url: str,
        *,
        format: WebhookFormat | None = None,
        secret: str | None = None,
        events: builtins.list[str] | None = None,
        timeout_ms: int | None = None,
        max_attempts: int | None = None,
        retry_base_ms: int | None = None,
        retry_max_ms: int | None = None,
    ) -> Webhook: ...
    def list(self) -> builtins.list[Webhook]: ...
    def get(self, id: str) -> Webhook: ...
    def remove(self, id: str) -> None: ...
    def enqueue(self, event: Event | Mapping[str, Any]) -> builtins.list[str]:
        """Adds the event to the outbox of every webhook that wants it; returns the
        delivery ids. `on_event=webhooks.enqueue` routes a call's events here."""
    def deliver_due(self, now: float | datetime.datetime | None = None) -> DeliveryReport: ...
    def spawn(self, interval_ms: int = 1000) -> Deliverer: ...
    def deliveries(
        self,
        *,
        webhook_id: str | None = None,
        status: DeliveryStatus | None = None,
        limit: int | None = None,
    ) -> builtins.list[Delivery]: ...
    def delivery(self, id: str) -> Delivery: ...
    def retry_failed(self, webhook_id: str | None = None) -> int: ...

@final
class Deliverer:
    """The background deliverer of `Webhooks.spawn` (a context manager)."""

    def stop(self) -> None: ...
    def cancel(self) -> None: ...
    @property
    def running(self) -> bool: ...
    @property
    def last_error(self) -> _ErrorInfo | None: ...
    def __enter__(self) -> Deliverer: ...
    def __exit__(self, *args: object) -> bool: ...

def verify_signature(
    secret: str,
    id: str,
    timestamp: str | int,
    body: bytes | str,
    signature: str,
    tolerance_ms: int = 300000,
) -> None:
    """Verifies a delivery from its `webhook-id`, `webhook-timestamp` and
    `webhook-signature` headers and raw body; raises InvalidDataError (field
    `webhook-signature` or `webhook-timestamp`) when it does not verify."""

# ---------------------------------------------------------------- promotions, alias history

AliasAction = Literal["set", "remove", "promote", "rollback", "delete", "backfill"]

class AliasChange(TypedDict):
    id: int
    name: str
    alias: str
    model_id: str | None
    version: int | None
    previous_id: str | None
    previous_version: int | None
    action: AliasAction
    reason: str | None
    at: str

class AliasMove(TypedDict):
    production: str
    previous: str | None
    changes: builtins.list[AliasChange]

# ---------------------------------------------------------------- stats (home.stats())

ActivityKind = Literal["dataset_created", "model_registered", "job_created", "job_finished", "generation", "alias_changed"]

class DurationStats(TypedDict):
    count: int
    mean_s: float | None
    p50_s: float | None
    p95_s: float | None
    min_s: float | None
    max_s: float | None

class JobStats(TypedDict):
    total: int
    pending: int
    running: int
    completed: int
    failed: int
    cancelled: int
    interrupted: int
    duration: DurationStats

class Activity(TypedDict):
    kind: ActivityKind
    id: str
    name: str
    at: str
    detail: str | None

class PresetUsage(TypedDict):
    preset: str
    models: int
    jobs: int

class MethodUsage(TypedDict):
    method: str
    jobs: int
    completed: int

class ModelGenerations(TypedDict):
    model_id: str
    name: str | None
    version: int | None
    calls: int
    texts: int
    images: int
    scores: int
    generated_tokens: int
    last_at: str | None

class AliasStats(TypedDict):
    promotions: int
    rollbacks: int
    changes: int

class ProductionModel(TypedDict):
    name: str
    model_id: str
    version: int
    since: str | None
    latest_evaluation: dict[str, Any] | None
    latest_drift: dict[str, Any] | None

class ModelCount(TypedDict):
    model_id: str
    name: str | None
    version: int | None
    count: int

class MonitoringStats(TypedDict):
    production: builtins.list[ProductionModel]
    predictions: builtins.list[ModelCount]
    retrains: int

class HomeStats(TypedDict):
    at: str
    since: str | None
    jobs: JobStats
    recent: builtins.list[Activity]
    presets: builtins.list[PresetUsage]
    methods: builtins.list[MethodUsage]
    generations: builtins.list[ModelGenerations]
    models_by_kind: dict[str, int]
    datasets_by_format: dict[str, int]
    aliases: AliasStats
    monitoring: MonitoringStats

# ---------------------------------------------------------------- synthetic data

class GenerationConfig(TypedDict, total=False):
    max_new_tokens: int | None
    temperature: float | None
    top_k: int | None
    top_p: float | None
    min_p: float | None
    repetition_penalty: float | None
    seed: int | None
    stop: str | builtins.list[str] | None
    ignore_eos: bool | None
    adapter: str | None

class DatasetLineage(TypedDict):
    model: str
    model_ref: str
    generation: GenerationConfig
    model_defaults: GenerationConfig
    prompts: int

ScenarioDriftKind = Literal["covariate", "label", "concept"]

class ScenarioDrift(TypedDict, total=False):
    kind: ScenarioDriftKind
    start: int
    magnitude: float
    scale: float
    columns: builtins.list[str]

class SyntheticScenario(TypedDict):
    columns: builtins.list[str]
    rows: builtins.list[dict[str, Any]]
    labels: builtins.list[int]
    probabilities: builtins.list[builtins.list[float]]

def synthetic_scenario(
    *,
    rows: int | None = None,
    numeric: int | None = None,
    categorical: int | None = None,
    categories: int | None = None,
    classes: int | None = None,
    separation: float | None = None,
    seed: int | None = None,
    drift: builtins.list[ScenarioDrift] | None = None,
) -> SyntheticScenario:
    """A seeded tabular classification scenario (numeric x0.., categorical c0..,
    labels 0..classes) with optional covariate, label or concept drift."""

def write_synthetic_scenario(
    path: StrPath,
    *,
    rows: int | None = None,
    numeric: int | None = None,
    categorical: int | None = None,
    categories: int | None = None,
    classes: int | None = None,
    separation: float | None = None,
    seed: int | None = None,
    drift: builtins.list[ScenarioDrift] | None = None,
) -> None:
    """Writes the scenario as JSON lines (features + `label`), atomically."""
