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

mod catalog;
mod data;
mod error;
pub mod events;
mod generation;
mod home;
pub mod lora;
pub mod models;
mod registry;
pub mod tokenizer;
mod training;
mod util;

pub use data::{
    DatasetFormat, DatasetId, DatasetRecord, DatasetSplit, DatasetStats, DatasetStore, FieldStats, ImportOptions,
    LengthBucket, OnDuplicate, SourceFormat, TxtMode, CHAT_ROLES,
};
pub use error::{Error, ErrorKind, IoResultExt, Location, Result, StorageError};
pub use events::{
    CancelToken, ErrorInfo, Event, EventSink, FinishStatus, JsonLinesSink, NoopSink, RecordingSink, TerminalSink,
    Throttle,
};
pub use generation::{
    FinishReason, Generation, GenerationConfig, GenerationFilter, GenerationRecord, Generator, GeneratorOptions,
    ModelUsage, Prompt, Score, StreamChunk, Timings, TokenStream, DEFAULT_MAX_NEW_TOKENS,
};
pub use home::Home;
pub use lora::LoraConfig;
pub use models::presets::Preset;
pub use models::{
    causal_lm_loss, load_model, Activation, Family, ForwardMode, KvCache, LoadOptions, Model, ModelConfig, ModelSource,
    RopeScaling,
};
pub use registry::{
    ModelFile, ModelFilter, ModelId, ModelKind, ModelRecord, ModelRef, ModelRegistry, PresetOptions, RegisterOptions,
    Storage, SUPPORTED_MODEL_TYPES,
};
pub use tokenizer::{ChatMessage, SpecialToken, Tokenizer};
pub use training::{
    AdamW, JobFilter, JobHandle, JobId, JobLog, JobRecord, JobStatus, Method, MetricPoint, Schedule, TrainReport,
    TrainSpec, TrainingEngine, HEARTBEAT_STALE_SECS,
};
pub use util::options_from_json;
