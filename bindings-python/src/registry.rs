//! `ModelRegistry` and its records.

use std::path::PathBuf;

use pyo3::prelude::*;

use anneal::{ExportFormat, ExportOptions, ImportBundleOptions, ModelFilter, ModelId, PresetOptions, RegisterOptions};

use crate::conv::{q, Options};
use crate::errors::{to_pyerr, EnterCore};
use crate::events::{self, PyCancelToken};
use crate::records::record_class;

record_class! {
    /// One stored file of a model.
    PyModelFile = "ModelFile"(anneal::ModelFile) {
        fields: [name, bytes, sha256],
        repr: [name, bytes],
        eq: PartialEq,
    }
}

record_class! {
    /// A built-in model configuration for `ModelRegistry.create_preset`.
    PyPreset = "Preset"(anneal::Preset) {
        fields: [
            name,
            description,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            max_position_embeddings,
        ],
        repr: [name, description],
    }
}

record_class! {
    /// A registered model (a catalog row).
    PyModelRecord = "ModelRecord"(anneal::ModelRecord) {
        fields: [
            id,
            name,
            version,
            /// `base`, `full` or `lora`.
            kind,
            family,
            architecture,
            model_type,
            parent_id,
            params,
            dtype,
            bytes,
            sha256,
            /// `copy` or `reference`.
            storage,
            path,
            files,
            tokenizer,
            source,
            task,
            tags,
            lineage,
            config,
            created_at,
            aliases,
        ],
        repr: [id, name, version, kind, family],
        eq: PartialEq,
        extra: {
            /// `name@version`.
            fn reference(&self) -> String {
                self.inner.reference()
            }
        },
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
    /// `if_exists`: `"new_version"` (default), `"reuse"` (the same files under the name
    /// are returned) or `"error"`.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (path, *, name=None, storage=None, parent=None, task=None, tags=None, if_exists=None,
                        on_event=None, cancel=None))]
    fn register_dir(
        &self,
        py: Python<'_>,
        path: PathBuf,
        name: Option<Bound<'_, PyAny>>,
        storage: Option<Bound<'_, PyAny>>,
        parent: Option<Bound<'_, PyAny>>,
        task: Option<Bound<'_, PyAny>>,
        tags: Option<Bound<'_, PyAny>>,
        if_exists: Option<Bound<'_, PyAny>>,
        on_event: Option<Bound<'_, PyAny>>,
        cancel: Option<Bound<'_, PyCancelToken>>,
    ) -> PyResult<PyModelRecord> {
        let value = Options::default()
            .set("name", name.as_ref())?
            .set("storage", storage.as_ref())?
            .set("parent", parent.as_ref())?
            .set("task", task.as_ref())?
            .set("tags", tags.as_ref())?
            .set("if_exists", if_exists.as_ref())?
            .into_value();
        let opts: RegisterOptions = anneal::options_from_json(value).map_err(|e| to_pyerr(py, e))?;
        let (reg, cancel) = (self.inner.clone(), events::token(cancel.as_ref()));
        events::run(py, events::callback(on_event)?, move |sink| reg.register_dir_with(&path, &opts, sink, &cancel))
            .map(Into::into)
    }

    /// Registers a GGUF model file (llama, mistral, qwen2, gpt2; f32 / f16 / bf16 /
    /// q8_0 / 4-bit tensors), copied into the home with a derived config.json and tokenizer.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (path, *, name=None, storage=None, parent=None, task=None, tags=None, on_event=None,
                        cancel=None))]
    fn register_file(
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
        events::run(py, events::callback(on_event)?, move |sink| reg.register_file_with(&path, &opts, sink, &cancel))
            .map(Into::into)
    }

    /// Creates a base model from a built-in preset (random weights from `seed`).
    /// `if_exists`: `"new_version"` (default), `"reuse"` (the version of `name` from the
    /// same preset and seed is returned) or `"error"`.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (preset, *, name=None, seed=None, task=None, tags=None, if_exists=None))]
    fn create_preset(
        &self,
        py: Python<'_>,
        preset: String,
        name: Option<Bound<'_, PyAny>>,
        seed: Option<Bound<'_, PyAny>>,
        task: Option<Bound<'_, PyAny>>,
        tags: Option<Bound<'_, PyAny>>,
        if_exists: Option<Bound<'_, PyAny>>,
    ) -> PyResult<PyModelRecord> {
        let value = Options::default()
            .set("name", name.as_ref())?
            .set("seed", seed.as_ref())?
            .set("task", task.as_ref())?
            .set("tags", tags.as_ref())?
            .set("if_exists", if_exists.as_ref())?
            .into_value();
        let opts: PresetOptions = anneal::options_from_json(value).map_err(|e| to_pyerr(py, e))?;
        py.enter_core(|| self.inner.create_preset(&preset, &opts)).map(Into::into)
    }

    /// The built-in presets.
    #[staticmethod]
    fn presets() -> Vec<PyPreset> {
        anneal::ModelRegistry::presets().iter().map(|p| p.clone().into()).collect()
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
    #[pyo3(signature = (model, *, force=None))]
    fn delete(&self, py: Python<'_>, model: String, force: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let o = crate::conv::delete_options(py, force.as_ref())?;
        py.enter_core(|| self.inner.delete(model, o.force))
    }

    /// Recorded generation and scoring calls, newest first.
    #[pyo3(signature = (*, model=None, kind=None, limit=None))]
    fn generations(
        &self,
        py: Python<'_>,
        model: Option<Bound<'_, PyAny>>,
        kind: Option<Bound<'_, PyAny>>,
        limit: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Vec<crate::generation::PyGenerationRecord>> {
        let value = Options::default()
            .set("model", model.as_ref())?
            .set("kind", kind.as_ref())?
            .set("limit", limit.as_ref())?
            .into_value();
        let filter: anneal::GenerationFilter = anneal::options_from_json(value).map_err(|e| to_pyerr(py, e))?;
        crate::generation::generations(py, &self.inner, filter)
    }

    /// Usage totals of a model, from the catalog.
    fn usage(&self, py: Python<'_>, model: String) -> PyResult<crate::generation::PyModelUsage> {
        crate::generation::usage(py, &self.inner, model)
    }

    /// Makes `model` the production model of its name in one transaction:
    /// `production` moves to it, the model it replaces to `previous`, and `candidate`
    /// is removed if it pointed at it. Returns `{production, previous, changes}`.
    #[pyo3(signature = (model, *, reason=None))]
    fn promote<'py>(
        &self,
        py: Python<'py>,
        model: String,
        reason: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        crate::stats::promote(py, &self.inner, model, reason)
    }

    /// Moves `production` of model name `name` back to `previous` (NotFoundError when
    /// there is no `previous`). Returns `{production, previous, changes}`.
    #[pyo3(signature = (name, *, reason=None))]
    fn rollback<'py>(
        &self,
        py: Python<'py>,
        name: String,
        reason: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        crate::stats::rollback(py, &self.inner, name, reason)
    }

    /// Changes of the aliases of `name` (of `alias` only, when given), newest first.
    #[pyo3(signature = (name, alias=None))]
    fn alias_history<'py>(&self, py: Python<'py>, name: String, alias: Option<String>) -> PyResult<Bound<'py, PyAny>> {
        crate::stats::alias_history(py, &self.inner, name, alias)
    }

    /// The change of `name@alias` in effect at `at` (RFC 3339 text or a datetime), or
    /// None when the alias was not set then.
    fn alias_at<'py>(
        &self,
        py: Python<'py>,
        name: String,
        alias: String,
        at: Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        crate::stats::alias_at(py, &self.inner, name, alias, at)
    }

    /// Writes `model` out of the home: `format` is `"hf"` (a Hugging Face directory; an
    /// adapter merged into its base), `"peft"` (an adapter directory) or `"bundle"` (one
    /// ZIP that `import_bundle` restores elsewhere). Returns `{model, format, path,
    /// files: [{path, bytes, sha256}]}`. An existing `dest` is AlreadyExistsError unless
    /// `overwrite=True`.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (model, format, dest, *, overwrite=None, max_shard_bytes=None, base_model=None,
                        quantization=None, merge=None, name=None, on_event=None, cancel=None))]
    fn export<'py>(
        &self,
        py: Python<'py>,
        model: String,
        format: String,
        dest: PathBuf,
        overwrite: Option<Bound<'py, PyAny>>,
        max_shard_bytes: Option<Bound<'py, PyAny>>,
        base_model: Option<Bound<'py, PyAny>>,
        quantization: Option<Bound<'py, PyAny>>,
        merge: Option<Bound<'py, PyAny>>,
        name: Option<Bound<'py, PyAny>>,
        on_event: Option<Bound<'py, PyAny>>,
        cancel: Option<Bound<'py, PyCancelToken>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let format: ExportFormat = format.parse().map_err(|e| to_pyerr(py, e))?;
        let value = Options::default()
            .set("overwrite", overwrite.as_ref())?
            .set("max_shard_bytes", max_shard_bytes.as_ref())?
            .set("base_model", base_model.as_ref())?
            .set("quantization", quantization.as_ref())?
            .set("merge", merge.as_ref())?
            .set("name", name.as_ref())?
            .into_value();
        let opts: ExportOptions = anneal::options_from_json(value).map_err(|e| to_pyerr(py, e))?;
        let (reg, cancel) = (self.inner.clone(), events::token(cancel.as_ref()));
        let report = events::run(py, events::callback(on_event)?, move |sink| {
            reg.export_with(model, format, &dest, &opts, sink, &cancel)
        })?;
        crate::conv::json_to_py(py, serde_json::to_value(&report))
    }

    /// Restores a bundle written by `export(model, "bundle", path)`: its models (an
    /// adapter's base first) under the ids they had, with the same content; returns the
    /// bundle's model. A tampered or truncated bundle is InvalidDataError naming the entry.
    #[pyo3(signature = (path, *, name=None, on_event=None, cancel=None))]
    fn import_bundle(
        &self,
        py: Python<'_>,
        path: PathBuf,
        name: Option<Bound<'_, PyAny>>,
        on_event: Option<Bound<'_, PyAny>>,
        cancel: Option<Bound<'_, PyCancelToken>>,
    ) -> PyResult<PyModelRecord> {
        let value = Options::default().set("name", name.as_ref())?.into_value();
        let opts: ImportBundleOptions = anneal::options_from_json(value).map_err(|e| to_pyerr(py, e))?;
        let (reg, cancel) = (self.inner.clone(), events::token(cancel.as_ref()));
        events::run(py, events::callback(on_event)?, move |sink| reg.import_bundle_with(&path, &opts, sink, &cancel))
            .map(Into::into)
    }

    fn __repr__(&self) -> String {
        format!("ModelRegistry(home={})", q(&self.root))
    }
}
