//! Layer 0: the data anneal's APIs take and return: ids, enums (each with one name
//! table), records, specs, options, filters and event payloads. No candle, no SQL:
//! the catalog maps these to rows, the models layer never sees them but for
//! [`Family`] and [`LoraConfig`], and the bindings convert them.
//!
//! Every type here implements [`schemars::JsonSchema`]; the bindings' declarations
//! (`_anneal.pyi`, `index.d.ts`) are checked against those schemas by a test.

pub(crate) mod names;
pub mod schema;

mod alias;
mod continual;
mod dataset;
mod drift;
mod event;
mod export;
mod generation;
mod home;
mod ids;
mod images;
mod model;
mod monitor;
mod notify;
mod stats;
mod synthetic;
mod timeline;
mod token;
mod training;

pub(crate) use alias::{catalog_time, check_reason};
pub use alias::{
    AliasAction, AliasChange, AliasMove, PromoteOptions, RollbackOptions, CANDIDATE, MAX_REASON_BYTES, PREVIOUS,
    PRODUCTION,
};
pub use continual::{
    AccuracyOptions, ClassWeighting, ClassifierConfig, ClassifierModel, ClassifierOptimizer, DriftCheck, DriftWindow,
    EvaluationRecord, LearnLineage, LearnOptions, LossDrift, Prediction, PredictionFilter, PredictionRecord,
    PredictorOptions, RealisedAccuracy, MAX_LEARN_BATCH, MAX_LEARN_EPOCHS,
};
pub use dataset::{
    DatasetFormat, DatasetRecord, DatasetSplit, DatasetStats, DeleteOptions, FieldStats, ImportOptions, LengthBucket,
    OnDuplicate, SourceFormat, SplitOptions, TxtMode, CHAT_ROLES,
};
pub use dataset::{ImageImportOptions, ImageLayout, ImageStats, SizeStats};
pub use drift::{
    AdwinConfig, ChangeDirection, ColumnDrift, ColumnKind, DdmConfig, DetectorConfig, DriftOptions, DriftReport,
    DriftTest, DriftVerdict, PageHinkleyConfig,
};
pub use event::{ErrorInfo, Event, FinishStatus, GateVerdict};
pub use export::{ExportFormat, ExportOptions, ExportReport, ExportedFile, GgufType, ImportBundleOptions};
pub use generation::{
    ChatMessage, FinishReason, Generation, GenerationConfig, GenerationFilter, GenerationKind, GenerationRecord,
    GeneratorOptions, ModelUsage, Prompt, Score, ScoreOptions, StreamChunk, Timings, DEFAULT_MAX_NEW_TOKENS,
};
pub use home::HomeOptions;
pub use ids::{DatasetId, DriftCheckId, EvaluationId, GenerationId, JobId, ModelId, ModelRef, PredictionId};
pub use images::{ImageAdapter, ImageGeneratorOptions, ImageRequest};
pub use model::{
    Family, IfExists, Lineage, LoraConfig, ModelFile, ModelFilter, ModelKind, ModelRecord, PresetOptions,
    RegisterOptions, Storage, TrainMetrics,
};
pub use monitor::{
    lower_is_better, DecisionKind, GatePolicy, LmRetrainMethod, MonitorDecision, MonitorFeed, MonitorOptions,
    MonitorRecord, PromotionMode, RetrainAction, RetrainGuards, RetrainPolicy, RetrainTriggers, TickOptions,
    TickOutcome, TickReport, CLASSIFIER_METRICS, GATE_METRICS, LM_METRICS,
};
pub use notify::{Delivery, DeliveryFilter, DeliveryReport, DeliveryStatus, Webhook, WebhookFormat, WebhookOptions};
pub use schema::{options_from_json, options_from_json_spelled, to_json_spelled, Spelling};
pub use stats::{
    Activity, ActivityKind, AliasStats, DurationStats, HomeStats, JobStats, MethodUsage, ModelCount, ModelGenerations,
    MonitoringStats, PresetUsage, ProductionModel, StatsOptions, DEFAULT_RECENT, MAX_RECENT,
};
pub use synthetic::{
    DatasetLineage, GenerateDatasetOptions, ScenarioDrift, ScenarioDriftKind, ScenarioOptions, MAX_GENERATE_PROMPTS,
    MAX_SCENARIO_ROWS,
};
pub use timeline::{
    AccuracyPoint, DriftPoint, EvaluationPoint, PlotOptions, Timeline, TimelineEvent, TimelineEventKind,
    TimelineOptions, VersionAccuracy, MAX_TIMELINE_POINTS, MAX_TIMELINE_WINDOW,
};
pub use token::{NewToken, TokenOptions, TokenRecord, TokenScope};
pub use training::{
    ImageCrop, ImageTrainOptions, JobFilter, JobLog, JobRecord, JobStatus, Method, MetricKind, MetricPoint,
    MixedPrecision, Schedule, TrainReport, TrainSpec, HEARTBEAT_STALE_SECS,
};
