//! Home: one directory holding the catalog and every stored file.
//!
//! ```text
//! <home>/
//!   anneal.db            SQLite catalog (WAL)
//!   datasets/<sha256>/   records.jsonl + meta.json
//!   models/<id>/         config.json, weights, tokenizer
//!   jobs/<id>/           checkpoints, logs
//! ```

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::catalog::{Catalog, SCHEMA_VERSION};
use crate::continual::{Continual, Monitors, Predictor};
use crate::data::DatasetStore;
use crate::error::{Error, IoResultExt, Result};
use crate::generation::Generator;
use crate::images::ImageGenerator;
use crate::models::memory::default_memory_limit;
use crate::notify::Webhooks;
use crate::registry::ModelRegistry;
use crate::store::Store;
use crate::tokens::Tokens;
use crate::training::TrainingEngine;
use crate::types::{
    GeneratorOptions, HomeOptions, HomeStats, ImageGeneratorOptions, JobStatus, ModelRef, MonitoringStats,
    PredictorOptions, StatsOptions,
};

/// Leftovers of interrupted writes are removed when older than this (younger ones may
/// belong to another process that is still working).
const SWEEP_AGE: Duration = Duration::from_secs(3600);

/// An opened home directory. Cheap to clone; `Send + Sync`; hands out the APIs.
#[derive(Clone)]
pub struct Home {
    inner: Arc<Store>,
}

impl Home {
    /// Opens the home at `dir`, creating it (and migrating its catalog) if needed.
    /// A home written by a newer anneal is refused with `incompatible_home` and left
    /// untouched.
    pub fn open(dir: impl AsRef<Path>) -> Result<Home> {
        Self::open_with(dir, &HomeOptions::default())
    }

    /// [`Home::open`] with options (the memory limit).
    pub fn open_with(dir: impl AsRef<Path>, options: &HomeOptions) -> Result<Home> {
        let dir = dir.as_ref();
        crate::util::check_path("home", dir)?;
        let memory_limit = match options.memory_limit {
            Some(0) => return Err(Error::config("memory_limit", "must be at least 1 byte")),
            Some(n) => n,
            None => default_memory_limit(),
        };
        if dir.exists() && !dir.is_dir() {
            return Err(Error::config("home", format!("{} exists and is not a directory", dir.display())));
        }
        fs::create_dir_all(dir).with_path(dir)?;
        let root = fs::canonicalize(dir).with_path(dir)?;
        let catalog = Catalog::open(&root.join("anneal.db"))?;
        for sub in ["datasets", "models", "jobs"] {
            let p = root.join(sub);
            fs::create_dir_all(&p).with_path(&p)?;
        }
        let home = Home { inner: Arc::new(Store { root, catalog, memory_limit }) };
        home.datasets().sweep(SWEEP_AGE)?;
        home.models().sweep(SWEEP_AGE)?;
        home.training().sweep(SWEEP_AGE)?;
        Ok(home)
    }

    /// The home directory (absolute).
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The most memory, in bytes, one training run or generation request may plan to
    /// use ([`HomeOptions::memory_limit`]).
    pub fn memory_limit(&self) -> u64 {
        self.inner.memory_limit
    }

    /// The catalog's schema version (`PRAGMA user_version`).
    pub fn schema_version(&self) -> Result<i64> {
        self.inner.catalog.schema_version()
    }

    /// The schema version this build of anneal writes.
    pub fn supported_schema_version() -> i64 {
        SCHEMA_VERSION
    }

    /// The dataset store of this home.
    pub fn datasets(&self) -> DatasetStore {
        DatasetStore::new(self.inner.clone())
    }

    /// The model registry of this home.
    pub fn models(&self) -> ModelRegistry {
        ModelRegistry::new(self.inner.clone())
    }

    /// The training engine of this home.
    pub fn training(&self) -> TrainingEngine {
        TrainingEngine::new(self.inner.clone())
    }

    /// The webhooks of this home and their outbox: registered receivers are shared by
    /// every process that opens the home, so a monitor here enqueues and a deliverer
    /// there sends.
    pub fn webhooks(&self) -> Webhooks {
        Webhooks::new(self.inner.clone())
    }

    /// The bearer tokens of this home (`anneal serve` checks requests against them).
    pub fn tokens(&self) -> Tokens {
        Tokens::new(self.inner.clone())
    }

    /// Loads `model` for generation ([`Generator::load`]).
    pub fn generator(&self, model: impl Into<ModelRef>, options: &GeneratorOptions) -> Result<Generator> {
        Generator::load(&self.models(), model, options)
    }

    /// Loads a registered classifier once to serve predictions, each logged in the
    /// catalog ([`Predictor`]).
    pub fn predictor(&self, model: impl Into<ModelRef>, options: &PredictorOptions) -> Result<Predictor> {
        Predictor::load(&self.models(), model, options)
    }

    /// Labels, realised accuracy, evaluations and drift checks of this home's models.
    pub fn continual(&self) -> Continual {
        Continual::new(self.inner.clone())
    }

    /// Retraining monitors of this home's production classifiers ([`Monitors`]).
    pub fn monitors(&self) -> Monitors {
        Monitors::new(self.inner.clone())
    }

    /// Loads a stable-diffusion `model` for text-to-image ([`ImageGenerator::load`]).
    pub fn image_generator(
        &self,
        model: impl Into<ModelRef>,
        options: &ImageGeneratorOptions,
    ) -> Result<ImageGenerator> {
        ImageGenerator::load(&self.models(), model, options)
    }
}

impl Home {
    /// Statistics of this home, each a query on the catalog's rows at the time of the
    /// call (no counter is kept beside them): jobs by status (`interrupted` as
    /// [`TrainingEngine::job`] reports it) and durations, recent activity, presets and
    /// methods by use, generations per model version, models by kind, datasets by
    /// format, promotions and rollbacks. See [`HomeStats`] for each figure's definition
    /// and [`StatsOptions`] for `since` and `recent`.
    pub fn stats(&self, options: &StatsOptions) -> Result<HomeStats> {
        use crate::catalog::stats as sql;
        let since = options.checked_since()?;
        let since = since.as_deref();
        let at = crate::util::now();
        // One snapshot: the figures agree with each other.
        let (mut jobs, running, mut stats) = self.inner.catalog.snapshot(|c| {
            let stats = HomeStats {
                at,
                since: since.map(str::to_string),
                jobs: Default::default(),
                recent: sql::recent(c, since, options.recent)?,
                presets: sql::presets(c, since)?,
                methods: sql::methods(c, since)?,
                generations: sql::generations(c, since)?,
                models_by_kind: sql::models_by_kind(c)?,
                datasets_by_format: sql::datasets_by_format(c)?,
                aliases: sql::aliases(c, since)?,
                monitoring: MonitoringStats {
                    production: sql::production(c)?,
                    predictions: sql::predictions(c, since)?,
                    retrains: sql::retrains(c, since)?,
                },
            };
            Ok((sql::jobs(c, since)?, sql::running_jobs(c, since)?, stats))
        })?;
        // Rows stored as running whose runner is gone read as the engine reports them.
        let engine = self.training();
        for id in running {
            let status = match engine.job(id.as_str()) {
                Ok(rec) => rec.status,
                Err(crate::error::Error::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            };
            if status == JobStatus::Running {
                continue;
            }
            jobs.running = jobs.running.saturating_sub(1);
            match status {
                JobStatus::Interrupted => jobs.interrupted += 1,
                JobStatus::Completed => jobs.completed += 1,
                JobStatus::Failed => jobs.failed += 1,
                JobStatus::Cancelled => jobs.cancelled += 1,
                JobStatus::Pending => jobs.pending += 1,
                JobStatus::Running => {}
            }
        }
        stats.jobs = jobs;
        Ok(stats)
    }
}

impl std::fmt::Debug for Home {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Home").field("root", &self.inner.root).finish()
    }
}
