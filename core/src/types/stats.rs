//! Statistics of a home ([`crate::Home::stats`]): every figure is a query on the
//! catalog's rows at the time of the call, never a counter kept beside them.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ids::ModelId;
use super::names::named_enum;
use crate::error::{Error, Result};

/// Default of [`StatsOptions::recent`].
pub const DEFAULT_RECENT: usize = 20;
/// Most activity entries one call returns.
pub const MAX_RECENT: usize = 10_000;

/// Options of [`crate::Home::stats`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct StatsOptions {
    /// Only what happened at or after this time (RFC 3339): jobs created, jobs finished
    /// (durations), generation calls, alias changes, activity. Inventories (models by
    /// kind, datasets by format) are what the home holds now. Default: everything.
    pub since: Option<String>,
    /// Entries of [`HomeStats::recent`]. Default 20, at most 10 000.
    pub recent: usize,
}

impl Default for StatsOptions {
    fn default() -> Self {
        Self { since: None, recent: DEFAULT_RECENT }
    }
}

impl StatsOptions {
    /// Checks ranges; `since` in the catalog's form (UTC, milliseconds).
    pub(crate) fn checked_since(&self) -> Result<Option<String>> {
        if self.recent > MAX_RECENT {
            return Err(Error::config("recent", format!("must be at most {MAX_RECENT}, got {}", self.recent)));
        }
        self.since.as_deref().map(|s| super::alias::catalog_time("since", s)).transpose()
    }
}

/// Everything [`crate::Home::stats`] reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HomeStats {
    /// When the figures were read (RFC 3339, UTC).
    pub at: String,
    /// [`StatsOptions::since`] as applied (UTC, milliseconds).
    pub since: Option<String>,
    pub jobs: JobStats,
    /// The latest events across datasets, models, jobs, generation calls and alias
    /// changes, newest first.
    pub recent: Vec<Activity>,
    /// Presets by use, most used first.
    pub presets: Vec<PresetUsage>,
    /// Training methods by use, most used first.
    pub methods: Vec<MethodUsage>,
    /// Generation calls per model version, most generations first.
    pub generations: Vec<ModelGenerations>,
    /// Registered models per kind (`base`, `full`, `lora`, ...).
    pub models_by_kind: BTreeMap<String, u64>,
    /// Stored datasets per format (`text`, `completion`, `tabular`, ...).
    pub datasets_by_format: BTreeMap<String, u64>,
    pub aliases: AliasStats,
    /// Continual learning: the production models, predictions, evaluations, drift and
    /// retraining. EXTENSION POINT: see [`MonitoringStats`].
    pub monitoring: MonitoringStats,
}

/// Training jobs (created since [`StatsOptions::since`]) by status, and durations.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobStats {
    pub total: u64,
    pub pending: u64,
    /// Running with a live runner.
    pub running: u64,
    pub completed: u64,
    pub failed: u64,
    pub cancelled: u64,
    /// Stored as running, but the runner is gone (stale heartbeat or dead process):
    /// as [`crate::TrainingEngine::job`] reports them.
    pub interrupted: u64,
    /// Durations of completed jobs (finished since `since`).
    pub duration: DurationStats,
}

/// Durations of completed jobs: `finished_at - started_at`, in seconds. `started_at` is
/// the first start, so a resumed job's time includes its pauses. Percentiles are
/// nearest-rank: the value at rank ceil(p/100 * count) of the sorted durations.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DurationStats {
    /// Jobs measured.
    pub count: u64,
    pub mean_s: Option<f64>,
    pub p50_s: Option<f64>,
    pub p95_s: Option<f64>,
    pub min_s: Option<f64>,
    pub max_s: Option<f64>,
}

named_enum! {
    /// What happened, in [`HomeStats::recent`].
    pub enum ActivityKind("activity kind") {
        /// A dataset was stored (import, split, generate). `detail`: its format.
        DatasetCreated = "dataset_created",
        /// A model was registered (directory, preset, training). `detail`: its kind.
        ModelRegistered = "model_registered",
        /// A training job was created. `name`: its base (`name@version`); `detail`: its
        /// method.
        JobCreated = "job_created",
        /// A training job ended. `name`: its output model (or base); `detail`: its status.
        JobFinished = "job_finished",
        /// A generation or scoring call. `name`: the model; `detail`: the call's kind.
        Generation = "generation",
        /// An alias changed. `id`: the model it points at (or pointed at, when removed);
        /// `name`: `name@alias`; `detail`: the action.
        AliasChanged = "alias_changed",
    }
}

/// One event of [`HomeStats::recent`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Activity {
    pub kind: ActivityKind,
    /// The id of what it happened to (dataset, model, job, generation, model).
    pub id: String,
    /// A readable name: dataset name, `name@version`, ...
    pub name: String,
    pub at: String,
    pub detail: Option<String>,
}

/// How much a preset was used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PresetUsage {
    pub preset: String,
    /// Models created from it (`create_preset`, all time).
    pub models: u64,
    /// Training jobs (created since `since`) whose base descends from it: the preset
    /// model itself or a model trained from it, at any depth.
    pub jobs: u64,
}

/// How much a training method was used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MethodUsage {
    /// `full` or `lora`.
    pub method: String,
    /// Jobs created since `since`.
    pub jobs: u64,
    /// Of those, completed.
    pub completed: u64,
}

/// Generation calls of one model version (since `since`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ModelGenerations {
    pub model_id: ModelId,
    /// `None` once the model is deleted (its usage rows stay).
    pub name: Option<String>,
    pub version: Option<u32>,
    /// Recorded calls of any kind.
    pub calls: u64,
    /// Texts generated (a batch counts each prompt).
    pub texts: u64,
    /// Images generated (prompts x images per prompt).
    pub images: u64,
    /// Scoring calls.
    pub scores: u64,
    pub generated_tokens: u64,
    pub last_at: Option<String>,
}

/// Alias changes (since `since`), from the alias history.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AliasStats {
    /// Promotions that moved `production` ([`crate::ModelRegistry::promote`]).
    pub promotions: u64,
    /// Rollbacks ([`crate::ModelRegistry::rollback`]).
    pub rollbacks: u64,
    /// Every recorded alias change (history rows), the backfill included.
    pub changes: u64,
}

/// Continual-learning figures.
///
/// Continual learning figures, each a query on the catalog at the call: the
/// production models with their newest evaluation and drift check, predictions per
/// model version and retrains started by monitors.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MonitoringStats {
    /// Each model name's production model (the `production` alias), by name.
    pub production: Vec<ProductionModel>,
    /// Logged predictions per model version (since `since`), most first.
    pub predictions: Vec<ModelCount>,
    /// Retraining jobs started by monitors (since `since`): their `retrain_started`
    /// decisions.
    pub retrains: u64,
}

/// The production model of one model name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProductionModel {
    pub name: String,
    pub model_id: ModelId,
    pub version: u32,
    /// When `production` last moved to it (from the alias history).
    pub since: Option<String>,
    /// Its newest evaluation (an [`crate::EvaluationRecord`] as JSON), on any dataset.
    pub latest_evaluation: Option<Value>,
    /// Its newest drift check (a [`crate::DriftCheck`] as JSON).
    pub latest_drift: Option<Value>,
}

/// A count per model version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ModelCount {
    pub model_id: ModelId,
    pub name: Option<String>,
    pub version: Option<u32>,
    pub count: u64,
}
