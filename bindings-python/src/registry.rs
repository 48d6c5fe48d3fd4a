//! `ModelRegistry` and its records.

use std::path::PathBuf;

use pyo3::prelude::*;

use anneal::{ModelFilter, ModelId, PresetOptions, RegisterOptions};

use crate::conv::Options;
use crate::dataset::{json_to_py, q};
use crate::errors::{to_pyerr, EnterCore};
use crate::events::{self, PyCancelToken};

/// One stored file of a model.
#[pyclass(name = "ModelFile", module = "anneal", frozen)]
#[derive(Clone)]
pub struct PyModelFile {
    inner: anneal::ModelFile,
}

#[pymethods]
impl PyModelFile {
    #[getter]
    fn name(&self) -> &str {
        &self.inner.name
    }
    #[getter]
    fn bytes(&self) -> u64 {
        self.inner.bytes
    }
    #[getter]
    fn sha256(&self) -> &str {
        &self.inner.sha256
    }
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        json_to_py(py, serde_json::to_value(&self.inner))
    }
    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other.cast::<Self>().is_ok_and(|o| o.get().inner == self.inner)
    }
    fn __repr__(&self) -> String {
        format!("ModelFile(name={}, bytes={})", q(&self.inner.name), self.inner.bytes)
    }
}

/// A built-in model configuration for `ModelRegistry.create_preset`.
#[pyclass(name = "Preset", module = "anneal", frozen)]
pub struct PyPreset {
    inner: anneal::Preset,
}

#[pymethods]
impl PyPreset {
    #[getter]
    fn name(&self) -> &'static str {
        self.inner.name
    }
    #[getter]
    fn description(&self) -> &'static str {
        self.inner.description
    }
    #[getter]
    fn hidden_size(&self) -> usize {
        self.inner.hidden_size
    }
    #[getter]
    fn intermediate_size(&self) -> usize {
        self.inner.intermediate_size
    }
    #[getter]
    fn num_hidden_layers(&self) -> usize {
        self.inner.num_hidden_layers
    }
    #[getter]
    fn num_attention_heads(&self) -> usize {
        self.inner.num_attention_heads
    }
    #[getter]
    fn num_key_value_heads(&self) -> usize {
        self.inner.num_key_value_heads
    }
    #[getter]
    fn max_position_embeddings(&self) -> usize {
        self.inner.max_position_embeddings
    }
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        json_to_py(py, serde_json::to_value(&self.inner))
    }
    fn __repr__(&self) -> String {
        format!("Preset(name={}, description={})", q(self.inner.name), q(self.inner.description))
    }
}

/// A registered model (a catalog row).
#[pyclass(name = "ModelRecord", module = "anneal", frozen)]
pub struct PyModelRecord {
    inner: anneal::ModelRecord,
}

impl From<anneal::ModelRecord> for PyModelRecord {
    fn from(inner: anneal::ModelRecord) -> Self {
        Self { inner }
    }
}

#[pymethods]
impl PyModelRecord {
    #[getter]
    fn id(&self) -> &str {
        &self.inner.id.0
    }
    #[getter]
    fn name(&self) -> &str {
        &self.inner.name
    }
    #[getter]
    fn version(&self) -> u32 {
        self.inner.version
    }
    /// `base`, `full` or `lora`.
    #[getter]
    fn kind(&self) -> &'static str {
        self.inner.kind.as_str()
    }
    #[getter]
    fn family(&self) -> &str {
        &self.inner.family
    }
    #[getter]
    fn architecture(&self) -> &str {
        &self.inner.architecture
    }
    #[getter]
    fn model_type(&self) -> &str {
        &self.inner.model_type
    }
    #[getter]
    fn parent_id(&self) -> Option<&str> {
        self.inner.parent_id.as_ref().map(|p| p.0.as_str())
    }
    #[getter]
    fn params(&self) -> u64 {
        self.inner.params
    }
    #[getter]
    fn dtype(&self) -> &str {
        &self.inner.dtype
    }
    #[getter]
    fn bytes(&self) -> u64 {
        self.inner.bytes
    }
    #[getter]
    fn sha256(&self) -> &str {
        &self.inner.sha256
    }
    /// `copy` or `reference`.
    #[getter]
    fn storage(&self) -> &'static str {
        self.inner.storage.as_str()
    }
    #[getter]
    fn path(&self) -> String {
        self.inner.path.display().to_string()
    }
    #[getter]
    fn files(&self) -> Vec<PyModelFile> {
        self.inner.files.iter().map(|f| PyModelFile { inner: f.clone() }).collect()
    }
    #[getter]
    fn tokenizer(&self) -> Option<&str> {
        self.inner.tokenizer.as_deref()
    }
    #[getter]
    fn source(&self) -> &str {
        &self.inner.source
    }
    #[getter]
    fn task(&self) -> Option<&str> {
        self.inner.task.as_deref()
    }
    #[getter]
    fn tags(&self) -> Vec<String> {
        self.inner.tags.clone()
    }
    #[getter]
    fn lineage<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        crate::conv::to_py(py, &self.inner.lineage)
    }
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        crate::conv::to_py(py, &self.inner.config)
    }
    #[getter]
    fn created_at(&self) -> &str {
        &self.inner.created_at
    }
    #[getter]
    fn aliases(&self) -> Vec<String> {
        self.inner.aliases.clone()
    }
    /// `name@version`.
    fn reference(&self) -> String {
        self.inner.reference()
    }
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        json_to_py(py, serde_json::to_value(&self.inner))
    }
    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other.cast::<Self>().is_ok_and(|o| o.get().inner == self.inner)
    }
    fn __repr__(&self) -> String {
        let r = &self.inner;
        format!(
            "ModelRecord(id={}, name={}, version={}, kind={}, family={})",
            q(&r.id.0),
            q(&r.name),
            r.version,
            q(r.kind.as_str()),
            q(&r.family)
        )
    }
}

/// Registers, names, versions and serves models.
#[pyclass(name = "ModelRegistry", module = "anneal", frozen)]
pub struct PyModelRegistry {
    pub inner: anneal::ModelRegistry,
    pub root: String,
}

#[pymethods]
impl PyModelRegistry {
    /// Registers a local Hugging Face model directory or a PEFT LoRA adapter directory.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (path, *, name=None, storage=None, parent=None, task=None, tags=None, on_event=None,
                        cancel=None))]
    fn register_dir(
        &self,
        py: Python<'_>,
        path: PathBuf,
        name: Option<Bound<'_, PyAny>>,
        storage: Option<Bound<'_, PyAny>>,
        parent: Option<Bound<'_, PyAny>>,
        task: Option<Bound<'_, PyAny>>,
        tags: Option<Bound<'_, PyAny>>,
        on_event: Option<Bound<'_, PyAny>>,
        cancel: Option<Bound<'_, PyCancelToken>>,
    ) -> PyResult<PyModelRecord> {
        let value = Options::default()
            .set("name", name.as_ref())?
            .set("storage", storage.as_ref())?
            .set("parent", parent.as_ref())?
            .set("task", task.as_ref())?
            .set("tags", tags.as_ref())?
            .into_value();
        let opts: RegisterOptions = anneal::options_from_json(value).map_err(|e| to_pyerr(py, e))?;
        let (reg, cancel) = (self.inner.clone(), events::token(cancel.as_ref()));
        events::run(py, events::callback(on_event)?, move |sink| reg.register_dir_with(&path, &opts, sink, &cancel))
            .map(Into::into)
    }

    /// Creates a base model from a built-in preset (random weights from `seed`).
    #[pyo3(signature = (preset, *, name=None, seed=None, task=None, tags=None))]
    fn create_preset(
        &self,
        py: Python<'_>,
        preset: String,
        name: Option<Bound<'_, PyAny>>,
        seed: Option<Bound<'_, PyAny>>,
        task: Option<Bound<'_, PyAny>>,
        tags: Option<Bound<'_, PyAny>>,
    ) -> PyResult<PyModelRecord> {
        let value = Options::default()
            .set("name", name.as_ref())?
            .set("seed", seed.as_ref())?
            .set("task", task.as_ref())?
            .set("tags", tags.as_ref())?
            .into_value();
        let opts: PresetOptions = anneal::options_from_json(value).map_err(|e| to_pyerr(py, e))?;
        py.enter_core(|| self.inner.create_preset(&preset, &opts)).map(Into::into)
    }

    /// The built-in presets.
    #[staticmethod]
    fn presets() -> Vec<PyPreset> {
        anneal::ModelRegistry::presets().iter().map(|p| PyPreset { inner: p.clone() }).collect()
    }

    /// A model by id.
    fn get(&self, py: Python<'_>, id: String) -> PyResult<PyModelRecord> {
        py.enter_core(|| self.inner.get(&ModelId(id))).map(Into::into)
    }

    /// Resolves an id, `name` (latest version), `name@3`, `name@latest` or `name@alias`.
    #[pyo3(signature = (reference, /))]
    fn resolve(&self, py: Python<'_>, reference: String) -> PyResult<PyModelRecord> {
        py.enter_core(|| self.inner.resolve(reference)).map(Into::into)
    }

    /// Models matching every given filter, by name then version.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (*, kind=None, family=None, task=None, name=None, tag=None, parent=None))]
    fn list(
        &self,
        py: Python<'_>,
        kind: Option<Bound<'_, PyAny>>,
        family: Option<Bound<'_, PyAny>>,
        task: Option<Bound<'_, PyAny>>,
        name: Option<Bound<'_, PyAny>>,
        tag: Option<Bound<'_, PyAny>>,
        parent: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Vec<PyModelRecord>> {
        let value = Options::default()
            .set("kind", kind.as_ref())?
            .set("family", family.as_ref())?
            .set("task", task.as_ref())?
            .set("name", name.as_ref())?
            .set("tag", tag.as_ref())?
            .set("parent", parent.as_ref())?
            .into_value();
        let filter: ModelFilter = anneal::options_from_json(value).map_err(|e| to_pyerr(py, e))?;
        Ok(py.enter_core(|| self.inner.list(&filter))?.into_iter().map(Into::into).collect())
    }

    /// Points `name@alias` at the model (creating or moving the alias atomically).
    fn set_alias(&self, py: Python<'_>, model: String, alias: String) -> PyResult<PyModelRecord> {
        py.enter_core(|| self.inner.set_alias(model, &alias)).map(Into::into)
    }

    /// Removes `name@alias`.
    fn remove_alias(&self, py: Python<'_>, name: String, alias: String) -> PyResult<()> {
        py.enter_core(|| self.inner.remove_alias(&name, &alias))
    }

    /// Deletes a model (refuses while an adapter or a job needs it, unless `force`).
    #[pyo3(signature = (model, *, force=false))]
    fn delete(&self, py: Python<'_>, model: String, force: bool) -> PyResult<()> {
        py.enter_core(|| self.inner.delete(model, force))
    }

    /// Recorded generation and scoring calls, newest first.
    #[pyo3(signature = (*, model=None, kind=None, limit=None))]
    fn generations(
        &self,
        py: Python<'_>,
        model: Option<String>,
        kind: Option<String>,
        limit: Option<usize>,
    ) -> PyResult<Vec<crate::generation::PyGenerationRecord>> {
        crate::generation::generations(py, &self.inner, model, kind, limit)
    }

    /// Usage totals of a model, from the catalog.
    fn usage(&self, py: Python<'_>, model: String) -> PyResult<crate::generation::PyModelUsage> {
        crate::generation::usage(py, &self.inner, model)
    }

    fn __repr__(&self) -> String {
        format!("ModelRegistry(home={})", q(&self.root))
    }
}
