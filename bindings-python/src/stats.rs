//! `Home.stats`, the registry's promotion and alias history calls, and
//! `DatasetStore.generate` / `lineage`: the thin wrappers behind the methods of
//! `home.rs`, `registry.rs` and `dataset.rs`. Results are plain dicts in the core's
//! serde form; the GIL is released while the core works.

use pyo3::prelude::*;

use anneal::{GenerateDatasetOptions, PromoteOptions, RollbackOptions, StatsOptions};

use crate::conv::Options;
use crate::dataset::PyDatasetRecord;
use crate::errors::{to_pyerr, EnterCore};
use crate::events::{self, PyCancelToken};
use crate::notify::plain;

/// A time argument given as text (RFC 3339) or as a `datetime` (its `isoformat()`; a
/// naive one is read as UTC).
pub(crate) fn time_text<'py>(t: Option<Bound<'py, PyAny>>) -> PyResult<Option<Bound<'py, PyAny>>> {
    match t {
        Some(t) if !t.is_none() && t.hasattr("isoformat")? => Ok(Some(t.call_method0("isoformat")?)),
        other => Ok(other),
    }
}

/// `Home.stats(since=, recent=)`.
pub(crate) fn stats<'py>(
    py: Python<'py>,
    home: &anneal::Home,
    since: Option<Bound<'py, PyAny>>,
    recent: Option<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let value =
        Options::default().set("since", time_text(since)?.as_ref())?.set("recent", recent.as_ref())?.into_value();
    let opts: StatsOptions = anneal::options_from_json(value).map_err(|e| to_pyerr(py, e))?;
    plain!(py, py.enter_core(|| home.stats(&opts))?)
}

/// `ModelRegistry.promote(model, reason=)`.
pub(crate) fn promote<'py>(
    py: Python<'py>,
    reg: &anneal::ModelRegistry,
    model: String,
    reason: Option<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let value = Options::default().set("reason", reason.as_ref())?.into_value();
    let opts: PromoteOptions = anneal::options_from_json(value).map_err(|e| to_pyerr(py, e))?;
    plain!(py, py.enter_core(|| reg.promote(model, &opts))?)
}

/// `ModelRegistry.rollback(name, reason=)`.
pub(crate) fn rollback<'py>(
    py: Python<'py>,
    reg: &anneal::ModelRegistry,
    name: String,
    reason: Option<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let value = Options::default().set("reason", reason.as_ref())?.into_value();
    let opts: RollbackOptions = anneal::options_from_json(value).map_err(|e| to_pyerr(py, e))?;
    plain!(py, py.enter_core(|| reg.rollback(&name, &opts))?)
}

/// `ModelRegistry.alias_history(name, alias=None)`.
pub(crate) fn alias_history<'py>(
    py: Python<'py>,
    reg: &anneal::ModelRegistry,
    name: String,
    alias: Option<String>,
) -> PyResult<Bound<'py, PyAny>> {
    plain!(py, py.enter_core(|| reg.alias_history(&name, alias.as_deref()))?)
}

/// `ModelRegistry.alias_at(name, alias, at)`.
pub(crate) fn alias_at<'py>(
    py: Python<'py>,
    reg: &anneal::ModelRegistry,
    name: String,
    alias: String,
    at: Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let at: String = time_text(Some(at))?.map(|t| t.extract()).transpose()?.unwrap_or_default();
    plain!(py, py.enter_core(|| reg.alias_at(&name, &alias, &at))?)
}

/// `DatasetStore.generate(model, prompts, ...)`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn generate(
    py: Python<'_>,
    store: &anneal::DatasetStore,
    model: String,
    prompts: Vec<String>,
    name: Option<Bound<'_, PyAny>>,
    generation: Option<Bound<'_, PyAny>>,
    batch_size: Option<Bound<'_, PyAny>>,
    on_duplicate: Option<Bound<'_, PyAny>>,
    on_event: Option<Bound<'_, PyAny>>,
    cancel: Option<Bound<'_, PyCancelToken>>,
) -> PyResult<PyDatasetRecord> {
    let value = Options::default()
        .set("name", name.as_ref())?
        .set("generation", generation.as_ref())?
        .set("batch_size", batch_size.as_ref())?
        .set("on_duplicate", on_duplicate.as_ref())?
        .into_value();
    let opts: GenerateDatasetOptions = anneal::options_from_json(value).map_err(|e| to_pyerr(py, e))?;
    let (store, cancel) = (store.clone(), events::token(cancel.as_ref()));
    events::run(py, events::callback(on_event)?, move |sink| store.generate_with(model, &prompts, &opts, sink, &cancel))
        .map(Into::into)
}

/// `DatasetStore.lineage(id_or_name)`.
pub(crate) fn lineage<'py>(
    py: Python<'py>,
    store: &anneal::DatasetStore,
    id_or_name: String,
) -> PyResult<Bound<'py, PyAny>> {
    plain!(py, py.enter_core(|| store.lineage(id_or_name))?)
}
