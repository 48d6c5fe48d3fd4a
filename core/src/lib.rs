//! anneal: import datasets, register models, fine-tune them (full or LoRA) and
//! generate, all in one home directory, on candle.
//!
//! ```no_run
//! # fn main() -> anneal::Result<()> {
//! use anneal::{Home, ImportOptions, PresetOptions};
//! let home = Home::open("./anneal-home")?;
//! let ds = home.datasets().import_file("data/train.jsonl", &ImportOptions::default())?;
//! let model = home.models().create_preset("nano", &PresetOptions::default())?;
//! println!("{} records ({:?}); model {} with {} parameters", ds.num_records, ds.format, model.reference(), model.params);
//! # Ok(()) }
//! ```
//!
//! The model layer: load a registered model, attach a LoRA adapter, take a training
//! step, and save the adapter in PEFT's layout.
//!
//! ```no_run
//! # fn main() -> anneal::Result<()> {
//! use anneal::{load_model, ForwardMode, Home, LoadOptions, LoraConfig, Tokenizer};
//! use candle_nn::Optimizer;
//! let home = Home::open("./anneal-home")?;
//! let rec = home.models().create_preset("nano", &Default::default())?;
//! let tok = Tokenizer::load(&rec)?;
//! let mut model = load_model(&rec, &LoadOptions::default())?;
//! model.add_lora(&LoraConfig::default(), 0)?;
//! let ids = tok.encode("hello world", false)?;
//! let x = candle_core::Tensor::new(ids.as_slice(), model.device())?.unsqueeze(0)?;
//! let labels = x.to_dtype(candle_core::DType::I64)?;
//! let mut opt = candle_nn::AdamW::new(model.trainable_vars(), candle_nn::ParamsAdamW::default())?;
//! let loss = model.loss(&x, &labels, ForwardMode::Train)?;
//! opt.backward_step(&loss)?;
//! model.save_adapter("./my-adapter")?;
//! let reply = model.greedy(&ids, 16, tok.eos_token_ids(), ForwardMode::Infer)?;
//! println!("{}", tok.decode(&reply, true)?);
//! # Ok(()) }
//! ```

// Layers (a module uses only modules of its own layer or below; `tests/layers.rs`
// in this crate enforces it by reading the `crate::` paths of every file):
//   L0  error, util, types, plot      plain data: no candle, no SQL; PNG charts
//   L1  catalog, events, models,      SQL rows <-> types; sinks and cancel; tensors,
//       tokenizer, store, diffusion,  LoRA and kernels; tokenizers; the shared Store;
//       tabular, notify, gguf,        UNet, VAE, CLIP text encoder, schedulers;
//                                     tabular profiles, drift statistics, detectors;
//                                     webhooks: outbox, signing, delivery; GGUF files
//       tokens                        and GGML quantizers; bearer tokens (hashed)
//   L2  data, registry, training,     the APIs, each on an Arc<Store>
//       generation, images,           (continual: predictors, labels, evaluations,
//       continual                     drift checks)
//   L3  home                          opens a directory, hands the APIs out

// L0
mod error;
pub mod plot;
pub mod types;
mod util;
// L1
mod catalog;
pub mod diffusion;
pub mod events;
pub mod gguf;
pub mod models;
pub mod notify;
mod store;
pub mod tabular;
pub mod tokenizer;
mod tokens;
// L2
mod continual;
mod data;
mod generation;
mod images;
mod registry;
mod training;
// L3
mod home;

pub use continual::{
    event_color, timeline_chart, version_color, Continual, Monitor, MonitorHandle, Monitors, Predictor,
};
pub use data::DatasetStore;
pub use error::{Error, ErrorKind, IoResultExt, Location, Result, StorageError};
pub use events::{
    CancelToken, CurveOptions, EventSink, Fanout, JsonLinesSink, MlflowSink, NoopSink, RecordingSink, TensorBoardSink,
    TerminalSink, Throttle,
};
pub use generation::{Generator, TokenStream};
pub use home::Home;
pub use images::{GeneratedPng, ImageGeneration, ImageGenerator};
pub use models::memory::{default_memory_limit, machine_memory};
pub use models::presets::Preset;
pub use models::{
    causal_lm_loss, load_model, Activation, ForwardMode, KvCache, LoadOptions, Model, ModelConfig, ModelSource,
    RopeScaling,
};
pub use notify::{verify_signature, Deliverer, WebhookSink, Webhooks};
pub use registry::{ModelRegistry, SUPPORTED_MODEL_TYPES};
pub use tokenizer::{SpecialToken, Tokenizer};
pub use tokens::Tokens;
pub use training::{AdamW, JobHandle, TrainingEngine};
pub use types::{
    options_from_json, options_from_json_spelled, to_json_spelled, ChatMessage, DatasetFormat, DatasetId,
    DatasetRecord, DatasetSplit, DatasetStats, DeleteOptions, ErrorInfo, Event, ExportFormat, ExportOptions,
    ExportReport, ExportedFile, Family, FieldStats, FinishReason, FinishStatus, GateVerdict, Generation,
    GenerationConfig, GenerationFilter, GenerationId, GenerationKind, GenerationRecord, GeneratorOptions, GgufType,
    HomeOptions, IfExists, ImageAdapter, ImageCrop, ImageGeneratorOptions, ImageRequest, ImageTrainOptions,
    ImportBundleOptions, ImportOptions, JobFilter, JobId, JobLog, JobRecord, JobStatus, LengthBucket, Lineage,
    LoraConfig, Method, MetricKind, MetricPoint, MixedPrecision, ModelFile, ModelFilter, ModelId, ModelKind,
    ModelRecord, ModelRef, ModelUsage, OnDuplicate, PresetOptions, Prompt, RegisterOptions, Schedule, Score,
    ScoreOptions, SourceFormat, Spelling, SplitOptions, Storage, StreamChunk, Timings, TrainMetrics, TrainReport,
    TrainSpec, TxtMode, CHAT_ROLES, DEFAULT_MAX_NEW_TOKENS, HEARTBEAT_STALE_SECS,
};
pub use types::{
    AccuracyOptions, ClassWeighting, ClassifierConfig, ClassifierModel, ClassifierOptimizer, DriftCheck, DriftCheckId,
    DriftWindow, EvaluationId, EvaluationRecord, LearnLineage, LearnOptions, LossDrift, Prediction, PredictionFilter,
    PredictionId, PredictionRecord, PredictorOptions, RealisedAccuracy,
};
pub use types::{
    AccuracyPoint, DriftPoint, EvaluationPoint, PlotOptions, Timeline, TimelineEvent, TimelineEventKind,
    TimelineOptions, VersionAccuracy,
};
pub use types::{
    Activity, ActivityKind, AliasAction, AliasChange, AliasMove, AliasStats, DatasetLineage, DurationStats,
    GenerateDatasetOptions, HomeStats, JobStats, MethodUsage, ModelCount, ModelGenerations, MonitoringStats,
    PresetUsage, ProductionModel, PromoteOptions, RollbackOptions, ScenarioDrift, ScenarioDriftKind, ScenarioOptions,
    StatsOptions,
};
pub use types::{
    DecisionKind, GatePolicy, LmRetrainMethod, MonitorDecision, MonitorFeed, MonitorOptions, MonitorRecord,
    PromotionMode, RetrainAction, RetrainGuards, RetrainPolicy, RetrainTriggers, TickOptions, TickOutcome, TickReport,
};
pub use types::{Delivery, DeliveryFilter, DeliveryReport, DeliveryStatus, Webhook, WebhookFormat, WebhookOptions};
pub use types::{ImageImportOptions, ImageLayout, ImageStats, SizeStats};
pub use types::{NewToken, TokenOptions, TokenRecord, TokenScope};
pub use util::{keep_candle_ops_on_calling_thread, on_compute_pool, AllocatorTuning, CANDLE_THREADS_VAR};

/// The matrix kernels, for the benches crate's microbenchmarks; not part of the API.
#[doc(hidden)]
pub mod bench_kernels {
    use crate::models::{bgemm, sgemm};

    /// `out[m, n] = a[m, k] x b[k, n]` (row-major; `bt`: `b` given as `[n, k]`): f32, or
    /// with `bf16` multiplies in bf16 and sums in f32 (mixed precision's kernel).
    pub fn matmul(
        (m, n, k): (usize, usize, usize),
        (a, b, bt): (&[f32], &[f32], bool),
        bf16: bool,
        out: &mut [f32],
    ) -> crate::Result<()> {
        let rhs = if bt { sgemm::Mat::transposed(b, 0, k) } else { sgemm::Mat::rows(b, 0, n) };
        let dst = sgemm::Dst { data: out, offset: 0, rs: n, accumulate: false };
        let gemm: sgemm::Gemm = if bf16 { bgemm::matmul } else { sgemm::matmul };
        Ok(gemm((m, n, k), dst, sgemm::Mat::rows(a, 0, k), rhs, m > 1)?)
    }

    /// A weight `[out, in]` quantized to q8_0 for [`q8_matmul`].
    pub struct Q8(crate::models::gemv::Q8Weight);

    /// `w` (`[out, in]` row-major, `in` a multiple of 32) in q8_0.
    pub fn q8_weight(out_f: usize, in_f: usize, w: &[f32]) -> crate::Result<Q8> {
        Ok(Q8(crate::models::gemv::Q8Weight::from_f32(out_f, in_f, w)?))
    }

    /// `x W^T` for `x` `[n, in]` through the decoding path's q8_0 product (the inputs
    /// quantized too): `[n, out]` row-major.
    pub fn q8_matmul(w: &Q8, x: &[f32], n: usize) -> crate::Result<Vec<f32>> {
        let (in_f, _) = w.0.features();
        let x = candle_core::Tensor::from_slice(x, (n, in_f), &candle_core::Device::Cpu)?;
        Ok(w.0.matmul(&x, None)?.flatten_all()?.to_vec1()?)
    }
}
