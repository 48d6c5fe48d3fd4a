//! `anneal.synthetic_scenario` and `anneal.write_synthetic_scenario`: the core's seeded
//! tabular scenarios with drift (`anneal::tabular::synthetic`), generated with the GIL
//! released. Options are the core's `ScenarioOptions` as keyword arguments.

use std::path::PathBuf;

use pyo3::prelude::*;
use serde_json::{json, Value};

use anneal::tabular::synthetic;
use anneal::ScenarioOptions;

use crate::conv::{self, Options};
use crate::errors::{to_pyerr, EnterCore};

#[allow(clippy::too_many_arguments)]
fn scenario_options(
    py: Python<'_>,
    rows: Option<Bound<'_, PyAny>>,
    numeric: Option<Bound<'_, PyAny>>,
    categorical: Option<Bound<'_, PyAny>>,
    categories: Option<Bound<'_, PyAny>>,
    classes: Option<Bound<'_, PyAny>>,
    separation: Option<Bound<'_, PyAny>>,
    seed: Option<Bound<'_, PyAny>>,
    drift: Option<Bound<'_, PyAny>>,
) -> PyResult<ScenarioOptions> {
    let value = Options::default()
        .set("rows", rows.as_ref())?
        .set("numeric", numeric.as_ref())?
        .set("categorical", categorical.as_ref())?
        .set("categories", categories.as_ref())?
        .set("classes", classes.as_ref())?
        .set("separation", separation.as_ref())?
        .set("seed", seed.as_ref())?
        .set("drift", drift.as_ref())?
        .into_value();
    anneal::options_from_json(value).map_err(|e| to_pyerr(py, e))
}

/// Generates a seeded tabular classification scenario: `{"columns": [...], "rows":
/// [{x0.., c0..}], "labels": [...], "probabilities": [[...]]}` (features, the class of
/// each row, and each row's true class probabilities). Same options, same rows.
#[allow(clippy::too_many_arguments)]
#[pyfunction]
#[pyo3(signature = (*, rows=None, numeric=None, categorical=None, categories=None, classes=None,
                    separation=None, seed=None, drift=None))]
pub fn synthetic_scenario<'py>(
    py: Python<'py>,
    rows: Option<Bound<'_, PyAny>>,
    numeric: Option<Bound<'_, PyAny>>,
    categorical: Option<Bound<'_, PyAny>>,
    categories: Option<Bound<'_, PyAny>>,
    classes: Option<Bound<'_, PyAny>>,
    separation: Option<Bound<'_, PyAny>>,
    seed: Option<Bound<'_, PyAny>>,
    drift: Option<Bound<'_, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let opts = scenario_options(py, rows, numeric, categorical, categories, classes, separation, seed, drift)?;
    let value: Value = py.enter_core(move || {
        let data = synthetic::generate(&opts)?;
        Ok(json!({
            "columns": data.columns,
            "rows": data.rows,
            "labels": data.labels,
            "probabilities": data.probabilities,
        }))
    })?;
    conv::to_py(py, &value)
}

/// Generates a scenario (same options as `synthetic_scenario`) and writes it to `path`
/// as JSON lines, each row with its class under `label`: a file `import_file` stores as
/// a `tabular` dataset. Atomic: the file holds every row or is left as it was.
#[allow(clippy::too_many_arguments)]
#[pyfunction]
#[pyo3(signature = (path, *, rows=None, numeric=None, categorical=None, categories=None, classes=None,
                    separation=None, seed=None, drift=None))]
pub fn write_synthetic_scenario(
    py: Python<'_>,
    path: PathBuf,
    rows: Option<Bound<'_, PyAny>>,
    numeric: Option<Bound<'_, PyAny>>,
    categorical: Option<Bound<'_, PyAny>>,
    categories: Option<Bound<'_, PyAny>>,
    classes: Option<Bound<'_, PyAny>>,
    separation: Option<Bound<'_, PyAny>>,
    seed: Option<Bound<'_, PyAny>>,
    drift: Option<Bound<'_, PyAny>>,
) -> PyResult<()> {
    let opts = scenario_options(py, rows, numeric, categorical, categories, classes, separation, seed, drift)?;
    py.enter_core(move || synthetic::generate(&opts)?.write_jsonl(&path))
}

/// The two functions.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(synthetic_scenario, m)?)?;
    m.add_function(wrap_pyfunction!(write_synthetic_scenario, m)?)
}
