//! `Home`: one directory holding the catalog and every stored file.

use napi::bindgen_prelude::Unknown;
use napi::Env;
use napi_derive::napi;

use crate::conv::{self, options};
use crate::dataset::DatasetStore;
use crate::errors;
use crate::registry::ModelRegistry;
use crate::training::TrainingEngine;

/// An opened home directory (`Home.open(dir)`); hands out the `DatasetStore`, the
/// `ModelRegistry` and the `TrainingEngine`. Several processes may open the same home at once.
#[napi]
pub struct Home {
    pub(crate) inner: anneal::Home,
}

#[napi]
impl Home {
    /// Not a constructor: a home is opened (created when missing) with `Home.open(dir)`.
    #[napi(constructor, ts_args_type = "_useHomeOpen: never")]
    pub fn new() -> napi::Result<Self> {
        Err(napi::Error::new(
            napi::Status::InvalidArg,
            "new Home() is not how a home is made: use Home.open(dir) (it creates the directory when missing)",
        ))
    }

    /// Opens the home at `dir`, creating it and migrating its catalog if needed.
    /// A home written by a newer anneal is refused (code `incompatible_home`) and left
    /// untouched. Synchronous: it only opens SQLite.
    /// `options.memoryLimit`: the most bytes one training run or generation request may
    /// plan to use (default: 80% of the machine's memory).
    #[napi(factory, catch_unwind)]
    pub fn open(
        env: Env,
        #[napi(ts_arg_type = "string")] dir: Unknown<'_>,
        #[napi(ts_arg_type = "HomeOptions")] options: Option<Unknown<'_>>,
    ) -> napi::Result<Self> {
        errors::sync(&env, || {
            let dir = conv::string(dir, "dir")?;
            let opts: anneal::HomeOptions = options!(conv::plain(options)?)?;
            Ok(Self { inner: anneal::Home::open_with(dir, &opts)? })
        })
    }

    /// The most bytes one training run or generation request may plan to use.
    #[napi(getter, catch_unwind)]
    pub fn memory_limit(&self) -> f64 {
        self.inner.memory_limit() as f64
    }

    /// The home directory (absolute).
    #[napi(getter, catch_unwind)]
    pub fn root(&self) -> String {
        self.inner.root().display().to_string()
    }

    /// The catalog's schema version.
    #[napi(catch_unwind)]
    pub fn schema_version(&self, env: Env) -> napi::Result<i64> {
        errors::sync(&env, || self.inner.schema_version())
    }

    /// The schema version this build of anneal writes.
    #[napi(catch_unwind)]
    pub fn supported_schema_version() -> i64 {
        anneal::Home::supported_schema_version()
    }

    /// The dataset store of this home.
    #[napi(catch_unwind)]
    pub fn datasets(&self) -> DatasetStore {
        DatasetStore { inner: self.inner.datasets() }
    }

    /// The model registry of this home.
    #[napi(catch_unwind)]
    pub fn models(&self) -> ModelRegistry {
        ModelRegistry { inner: self.inner.models() }
    }

    /// The training engine of this home.
    #[napi(catch_unwind)]
    pub fn training(&self) -> TrainingEngine {
        TrainingEngine { inner: self.inner.training() }
    }

    /// Loads a registered model (id or reference) for generation, off the event loop.
    /// Options: `mergeAdapter` (default true), `dtype` (`f32`, `bf16`, `f16`), `record`
    /// (default true), `quantize` (`q8_0` or `bf16`, with `dtype` `f32`).
    #[napi(catch_unwind, ts_return_type = "Promise<Generator>")]
    pub fn generator(
        &self,
        #[napi(ts_arg_type = "string")] model: Unknown<'_>,
        #[napi(ts_arg_type = "GeneratorOptions")] options: Option<Unknown<'_>>,
    ) -> napi::bindgen_prelude::AsyncTask<crate::generation::LoadGenerator> {
        crate::generation::LoadGenerator::spawn(self.inner.models(), model, options)
    }

    /// Loads a registered classifier to serve it, off the event loop. Options:
    /// `logFeatures` (default true: log each row's features, else only their sha256),
    /// `maxRows` / `maxAgeDays` (retention of logged predictions).
    #[napi(catch_unwind, ts_return_type = "Promise<Predictor>")]
    pub fn predictor(
        &self,
        #[napi(ts_arg_type = "string")] model: Unknown<'_>,
        #[napi(ts_arg_type = "PredictorOptions")] options: Option<Unknown<'_>>,
    ) -> napi::bindgen_prelude::AsyncTask<crate::continual::LoadPredictor> {
        crate::continual::LoadPredictor::spawn(self.inner.clone(), model, options)
    }

    /// Labels, realised accuracy, evaluations and drift checks of this home's models.
    #[napi(catch_unwind)]
    pub fn continual(&self) -> crate::continual::Continual {
        crate::continual::Continual { inner: self.inner.continual() }
    }

    /// Loads a registered stable-diffusion model (a base, a full fine-tune or a LoRA)
    /// for text-to-image, off the event loop. Options: `mergeAdapter` (default false: a
    /// LoRA stays a separate adapter that requests may switch), `record` (default true).
    #[napi(catch_unwind, ts_return_type = "Promise<ImageGenerator>")]
    pub fn image_generator(
        &self,
        #[napi(ts_arg_type = "string")] model: Unknown<'_>,
        #[napi(ts_arg_type = "ImageGeneratorOptions")] options: Option<Unknown<'_>>,
    ) -> napi::bindgen_prelude::AsyncTask<crate::images::LoadImageGenerator> {
        crate::images::LoadImageGenerator::spawn(self.inner.models(), model, options)
    }
}
