"""Type stubs of the native module `anneal._anneal` (re-exported by `anneal`)."""

import builtins
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Literal, TypedDict, final

__version__: str

StrPath = str | os.PathLike[str]
DatasetFormat = Literal["text", "completion", "instruction", "chat", "tabular"]
SourceFormat = Literal["jsonl", "ndjson", "json", "csv", "tsv", "txt", "text"]
TxtMode = Literal["lines", "document"]
OnDuplicate = Literal["error", "reuse"]
ModelKind = Literal["base", "full", "lora"]
Storage = Literal["copy", "reference"]

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

Event = TaskStartedEvent | TaskProgressEvent | TaskFinishedEvent | dict[str, Any]
"""Events are dicts with a `type` key (`task_started`, `task_progress`, `task_finished`, ...)."""

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
    def open(path: StrPath) -> Home: ...
    @property
    def root(self) -> str: ...
    def schema_version(self) -> int: ...
    @staticmethod
    def supported_schema_version() -> int: ...
    def datasets(self) -> DatasetStore: ...
    def models(self) -> ModelRegistry: ...

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
        seed: int = 0,
        names: tuple[str, str] | None = None,
    ) -> DatasetSplit: ...
    def delete(self, id_or_name: str, *, force: bool = False) -> None: ...

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
    def delete(self, model: str, *, force: bool = False) -> None: ...
