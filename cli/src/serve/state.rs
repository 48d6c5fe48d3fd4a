//! What every handler shares, and the one way handlers call the synchronous core.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use anneal::{Generator, GeneratorOptions, Home, JobHandle, ModelKind, ModelRecord};
use tokio::sync::{watch, Semaphore};

use super::error::{ApiError, ApiResult};
use super::metrics::Metrics;
use super::server::ServerConfig;

pub(crate) type Shared = Arc<AppState>;

pub(crate) struct AppState {
    pub(crate) home: Home,
    pub(crate) config: ServerConfig,
    pub(crate) generators: GeneratorCache,
    /// One permit per generation running (`--max-generations`).
    pub(crate) generation_permits: Arc<Semaphore>,
    pub(crate) metrics: Metrics,
    /// Jobs this server runs (created or resumed here), by id: cancelled on shutdown.
    pub(crate) jobs: Mutex<HashMap<String, JobHandle>>,
    /// Turns true when the server starts shutting down (SSE streams end on it).
    pub(crate) shutdown: watch::Receiver<bool>,
}

impl AppState {
    pub(crate) fn new(home: Home, config: ServerConfig, shutdown: watch::Receiver<bool>) -> Self {
        Self {
            generators: GeneratorCache::new(config.loaded_models.max(1)),
            generation_permits: Arc::new(Semaphore::new(config.max_generations.max(1))),
            metrics: Metrics::default(),
            jobs: Mutex::new(HashMap::new()),
            home,
            config,
            shutdown,
        }
    }

    /// The handles of the jobs this server runs.
    pub(crate) fn job_handles(&self) -> Vec<JobHandle> {
        self.jobs.lock().map(|j| j.values().cloned().collect()).unwrap_or_default()
    }
}

/// Runs a synchronous core call on tokio's blocking pool.
pub(crate) async fn blocking<T, F>(f: F) -> ApiResult<T>
where
    F: FnOnce() -> anneal::Result<T> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(ApiError::from),
        Err(e) => Err(ApiError::internal(format!("a worker thread failed: {e}"))),
    }
}

/// A loaded model ready to generate, and what a request for a reference resolves to.
#[derive(Clone)]
pub(crate) struct Loaded {
    pub(crate) generator: Arc<Generator>,
    /// The adapter the reference names (a LoRA applied per request on its base).
    pub(crate) adapter: Option<ModelRecord>,
    /// The model the reference resolved to (the adapter itself for an adapter).
    pub(crate) model: ModelRecord,
}

/// Generators kept loaded, least recently used dropped first. Keyed by the base model
/// whose weights are loaded: every adapter of a base shares one loaded model (adapters
/// are applied per request, as `GeneratorOptions::merge_adapter: false` allows).
pub(crate) struct GeneratorCache {
    capacity: usize,
    loaded: Mutex<VecDeque<(String, Arc<Generator>)>>,
    /// One load at a time: two requests for a cold model load it once.
    loading: tokio::sync::Mutex<()>,
}

impl GeneratorCache {
    fn new(capacity: usize) -> Self {
        Self { capacity, loaded: Mutex::new(VecDeque::new()), loading: tokio::sync::Mutex::new(()) }
    }

    fn cached(&self, base_id: &str) -> Option<Arc<Generator>> {
        let mut loaded = self.loaded.lock().ok()?;
        let i = loaded.iter().position(|(id, _)| id == base_id)?;
        let entry = loaded.remove(i)?;
        let g = entry.1.clone();
        loaded.push_front(entry);
        Some(g)
    }

    /// The generator for `reference` (any model reference: id, `name`, `name@3`,
    /// `name@alias`), loading its base if needed.
    pub(crate) async fn get(&self, home: &Home, reference: &str) -> ApiResult<Loaded> {
        let models = home.models();
        let r = reference.to_string();
        let (model, base) = blocking(move || {
            let model = models.resolve(r.as_str())?;
            let base = match (&model.kind, &model.parent_id) {
                (ModelKind::Lora, Some(parent)) => models.get(parent)?,
                _ => model.clone(),
            };
            Ok((model, base))
        })
        .await?;
        let adapter = (model.kind == ModelKind::Lora).then(|| model.clone());
        if let Some(generator) = self.cached(&base.id.0) {
            return Ok(Loaded { generator, adapter, model });
        }
        let _one = self.loading.lock().await;
        if let Some(generator) = self.cached(&base.id.0) {
            return Ok(Loaded { generator, adapter, model });
        }
        let h = home.clone();
        let base_id = base.id.clone();
        let generator = blocking(move || {
            let options = GeneratorOptions { merge_adapter: false, ..Default::default() };
            h.generator(&base_id, &options)
        })
        .await?;
        let generator = Arc::new(generator);
        if let Ok(mut loaded) = self.loaded.lock() {
            loaded.push_front((base.id.0.clone(), generator.clone()));
            loaded.truncate(self.capacity);
        }
        Ok(Loaded { generator, adapter, model })
    }
}

/// Resolves once the server is shutting down.
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}
