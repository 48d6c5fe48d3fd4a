//! `Home`: opens a directory and hands out the APIs.

use std::path::PathBuf;

use pyo3::prelude::*;

use crate::continual::{PyContinual, PyPredictor};
use crate::conv::{q, Options};
use crate::dataset::PyDatasetStore;
use crate::errors::to_pyerr;
use crate::errors::EnterCore;
use crate::generation::PyGenerator;
use crate::registry::PyModelRegistry;
use crate::training::PyTrainingEngine;

/// An opened home directory: the catalog and every stored file.
#[pyclass(name = "Home", module = "anneal", frozen)]
pub struct PyHome {
    inner: anneal::Home,
}

#[pymethods]
impl PyHome {
    /// Not a constructor: a home is opened (created when missing) with `Home.open(path)`.
    #[new]
    #[pyo3(signature = (*args, **kwargs))]
    fn new(args: &Bound<'_, pyo3::types::PyTuple>, kwargs: Option<&Bound<'_, pyo3::types::PyDict>>) -> PyResult<Self> {
        let _ = (args, kwargs);
        Err(pyo3::exceptions::PyTypeError::new_err(
            "anneal.Home() is not how a home is made: use anneal.Home.open(path) (it creates the directory when missing)",
        ))
    }

    /// Opens the home at `path`, creating or migrating it. A home written by a newer
    /// anneal raises `IncompatibleHomeError` and is left untouched. `memory_limit`:
    /// the most bytes one training run or generation request may plan to use (default:
    /// 80% of the machine's memory); bigger requests raise `InvalidConfigError`.
    #[staticmethod]
    #[pyo3(signature = (path, *, memory_limit=None))]
    fn open(py: Python<'_>, path: PathBuf, memory_limit: Option<Bound<'_, PyAny>>) -> PyResult<Self> {
        let value = Options::default().set("memory_limit", memory_limit.as_ref())?.into_value();
        let opts: anneal::HomeOptions = anneal::options_from_json(value).map_err(|e| to_pyerr(py, e))?;
        py.enter_core(|| anneal::Home::open_with(&path, &opts)).map(|inner| Self { inner })
    }

    /// The most bytes one training run or generation request may plan to use.
    #[getter]
    fn memory_limit(&self) -> u64 {
        self.inner.memory_limit()
    }

    /// The home directory (absolute).
    #[getter]
    fn root(&self) -> String {
        self.inner.root().display().to_string()
    }

    /// The catalog's schema version.
    fn schema_version(&self, py: Python<'_>) -> PyResult<i64> {
        py.enter_core(|| self.inner.schema_version())
    }

    /// The schema version this build of anneal writes.
    #[staticmethod]
    fn supported_schema_version() -> i64 {
        anneal::Home::supported_schema_version()
    }

    /// The webhooks of this home and their outbox (see `Webhooks`).
    fn webhooks(&self) -> crate::notify::PyWebhooks {
        crate::notify::PyWebhooks { inner: self.inner.webhooks(), root: self.root() }
    }

    /// Statistics of this home, read from the catalog now: jobs by status and their
    /// durations, recent activity, preset / method / generation use, inventories,
    /// alias changes and production models. `since` (RFC 3339 text or a datetime;
    /// naive is UTC) limits what happened to what happened since; `recent` is the
    /// number of activity entries (default 20).
    #[pyo3(signature = (*, since=None, recent=None))]
    fn stats<'py>(
        &self,
        py: Python<'py>,
        since: Option<Bound<'py, PyAny>>,
        recent: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        crate::stats::stats(py, &self.inner, since, recent)
    }

    /// The dataset store of this home.
    fn datasets(&self) -> PyDatasetStore {
        PyDatasetStore { inner: self.inner.datasets(), root: self.root() }
    }

    /// The model registry of this home.
    fn models(&self) -> PyModelRegistry {
        PyModelRegistry { inner: self.inner.models(), root: self.root() }
    }

    /// The training engine of this home.
    fn training(&self) -> PyTrainingEngine {
        PyTrainingEngine { inner: self.inner.training(), root: self.root() }
    }

    /// Loads a registered model for generation (see `Generator`); the GIL is released
    /// while the weights load.
    #[pyo3(signature = (model, *, merge_adapter=None, dtype=None, record=None, quantize=None))]
    fn generator(
        &self,
        py: Python<'_>,
        model: String,
        merge_adapter: Option<Bound<'_, PyAny>>,
        dtype: Option<Bound<'_, PyAny>>,
        record: Option<Bound<'_, PyAny>>,
        quantize: Option<Bound<'_, PyAny>>,
    ) -> PyResult<PyGenerator> {
        PyGenerator::open(
            py,
            &self.inner.models(),
            model,
            merge_adapter.as_ref(),
            dtype.as_ref(),
            record.as_ref(),
            quantize.as_ref(),
        )
    }

    /// Loads a registered stable-diffusion model for text-to-image (see
    /// `ImageGenerator`); the GIL is released while the weights load.
    #[pyo3(signature = (model, *, merge_adapter=None, record=None))]
    fn image_generator(
        &self,
        py: Python<'_>,
        model: String,
        merge_adapter: Option<Bound<'_, PyAny>>,
        record: Option<Bound<'_, PyAny>>,
    ) -> PyResult<crate::images::PyImageGenerator> {
        crate::images::PyImageGenerator::open(py, &self.inner.models(), model, merge_adapter.as_ref(), record.as_ref())
    }

    /// Loads a registered classifier to serve it (see `Predictor`); the GIL is released
    /// while it loads. `log_features` (default True): log each row's features, else
    /// only their sha256; `max_rows` / `max_age_days`: retention of logged predictions.
    #[pyo3(signature = (model, *, log_features=None, max_rows=None, max_age_days=None))]
    fn predictor(
        &self,
        py: Python<'_>,
        model: String,
        log_features: Option<Bound<'_, PyAny>>,
        max_rows: Option<Bound<'_, PyAny>>,
        max_age_days: Option<Bound<'_, PyAny>>,
    ) -> PyResult<PyPredictor> {
        PyPredictor::open(py, &self.inner, model, log_features.as_ref(), max_rows.as_ref(), max_age_days.as_ref())
    }

    /// Labels, realised accuracy, evaluations and drift checks of this home's models.
    fn continual(&self) -> PyContinual {
        PyContinual { inner: self.inner.continual() }
    }

    /// Retraining monitors of this home's production classifiers (see `Monitors`).
    fn monitors(&self) -> crate::monitor::PyMonitors {
        crate::monitor::PyMonitors { inner: self.inner.monitors(), root: self.root() }
    }

    fn __repr__(&self) -> String {
        format!("Home({})", q(&self.root()))
    }
}
