//! `Predictor` and `Continual`: a served classifier that logs its predictions, labels
//! that arrive later, realised accuracy, evaluations and drift checks. Every call that
//! touches the catalog or the model releases the GIL. Predictions and the continual
//! records are plain dicts (the core's serde form, `snake_case`).

use pyo3::prelude::*;
use serde_json::{Map, Value};

use anneal::types::DriftOptions;
use anneal::{AccuracyOptions, DriftWindow, PredictionFilter, PredictionId, PredictorOptions};

use crate::conv::{json_to_py, q, to_json, Options};
use crate::errors::{to_pyerr, EnterCore};
use crate::registry::PyModelRecord;

/// A core value as a plain Python object (dicts, lists): its serde form.
macro_rules! plain {
    ($py:expr, $value:expr) => {
        json_to_py($py, serde_json::to_value($value))
    };
}

/// A feature row (`{"column": value}`) as the core takes it; `record` is its 1-based
/// position, named by an `invalid_data` error when it is not a dict.
fn row(py: Python<'_>, obj: &Bound<'_, PyAny>, record: u64) -> PyResult<Map<String, Value>> {
    match to_json(obj, &format!("record {record}"))? {
        Value::Object(m) => Ok(m),
        _ => Err(to_pyerr(
            py,
            anneal::Error::data(
                anneal::Location::default().at(record),
                format!("a row is a dict of column -> value, got a {}", obj.get_type().name()?),
            ),
        )),
    }
}

/// Serves a registered classifier: `predict` / `predict_batch` answer rows and log
/// each answer in the catalog (see `Continual.label`). Thread-safe; the GIL is
/// released while it predicts.
#[pyclass(name = "Predictor", module = "anneal", frozen)]
pub struct PyPredictor {
    inner: anneal::Predictor,
}

impl PyPredictor {
    /// For `Home.predictor`.
    pub fn open(
        py: Python<'_>,
        home: &anneal::Home,
        model: String,
        log_features: Option<&Bound<'_, PyAny>>,
        max_rows: Option<&Bound<'_, PyAny>>,
        max_age_days: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let value = Options::default()
            .set("log_features", log_features)?
            .set("max_rows", max_rows)?
            .set("max_age_days", max_age_days)?
            .into_value();
        let opts: PredictorOptions = anneal::options_from_json(value).map_err(|e| to_pyerr(py, e))?;
        py.enter_core(|| home.predictor(model, &opts)).map(|inner| Self { inner })
    }
}

#[pymethods]
impl PyPredictor {
    /// Predicts one row (a dict of column -> value) and logs it. Returns a dict:
    /// `label`, `confidence`, `probabilities`, `model`, `model_id`, `prediction_id`,
    /// `unseen`. A bad row raises `InvalidDataError` naming the record (1) and the
    /// column; nothing is logged then.
    fn predict<'py>(&self, py: Python<'py>, row: Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let row = self::row(py, &row, 1)?;
        let p = py.enter_core(|| self.inner.predict(&row))?;
        plain!(py, &p)
    }

    /// Predicts rows and logs them in one transaction (all or nothing): a list of
    /// prediction dicts, in the order of `rows`. A bad row raises `InvalidDataError`
    /// naming its 1-based record and the column.
    fn predict_batch<'py>(&self, py: Python<'py>, rows: Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let mut out = Vec::new();
        for (i, r) in rows.try_iter()?.enumerate() {
            out.push(row(py, &r?, i as u64 + 1)?);
        }
        let preds = py.enter_core(|| self.inner.predict_batch(&out))?;
        plain!(py, &preds)
    }

    /// The served model's record.
    #[getter]
    fn model(&self) -> PyModelRecord {
        self.inner.model().clone().into()
    }

    /// The classes, in the order of the model's outputs.
    #[getter]
    fn classes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        plain!(py, &self.inner.classes())
    }

    fn __repr__(&self) -> String {
        format!("Predictor({})", q(&self.inner.model().reference()))
    }
}

/// Labels, realised accuracy, evaluations and drift checks of a home's models
/// (`home.continual()`). Every call releases the GIL.
#[pyclass(name = "Continual", module = "anneal", frozen)]
pub struct PyContinual {
    pub inner: anneal::Continual,
}

#[pymethods]
impl PyContinual {
    /// Records the true class `y` of a logged prediction; returns the updated
    /// prediction dict. Labelling again overwrites. An unknown id raises
    /// `NotFoundError`; a `y` that is not one of the model's classes raises
    /// `InvalidDataError` naming the field `label`.
    fn label<'py>(&self, py: Python<'py>, prediction_id: String, y: Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let y = to_json(&y, "label")?;
        let id = PredictionId(prediction_id);
        let rec = py.enter_core(|| self.inner.label(&id, &y))?;
        plain!(py, &rec)
    }

    /// A logged prediction by id.
    fn prediction<'py>(&self, py: Python<'py>, prediction_id: String) -> PyResult<Bound<'py, PyAny>> {
        let id = PredictionId(prediction_id);
        let rec = py.enter_core(|| self.inner.prediction(&id))?;
        plain!(py, &rec)
    }

    /// The model's logged predictions, newest first.
    #[pyo3(signature = (model, *, labelled=None, limit=None))]
    fn predictions<'py>(
        &self,
        py: Python<'py>,
        model: String,
        labelled: Option<Bound<'py, PyAny>>,
        limit: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let value = Options::default().set("labelled", labelled.as_ref())?.set("limit", limit.as_ref())?.into_value();
        let filter: PredictionFilter = anneal::options_from_json(value).map_err(|e| to_pyerr(py, e))?;
        let recs = py.enter_core(|| self.inner.predictions(model, &filter))?;
        plain!(py, &recs)
    }

    /// Accuracy of the model's labelled predictions (`since`: an RFC 3339 time;
    /// `last`: only the last N labelled).
    #[pyo3(signature = (model, *, since=None, last=None))]
    fn realised_accuracy<'py>(
        &self,
        py: Python<'py>,
        model: String,
        since: Option<Bound<'py, PyAny>>,
        last: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let value = Options::default().set("since", since.as_ref())?.set("last", last.as_ref())?.into_value();
        let opts: AccuracyOptions = anneal::options_from_json(value).map_err(|e| to_pyerr(py, e))?;
        let acc = py.enter_core(|| self.inner.realised_accuracy(model, &opts))?;
        plain!(py, &acc)
    }

    /// Evaluates `model` on `dataset` (id or name) and stores the result.
    fn evaluate<'py>(&self, py: Python<'py>, model: String, dataset: String) -> PyResult<Bound<'py, PyAny>> {
        let rec = py.enter_core(|| self.inner.evaluate(model, dataset))?;
        plain!(py, &rec)
    }

    /// The model's evaluations, newest first.
    fn evaluations<'py>(&self, py: Python<'py>, model: String) -> PyResult<Bound<'py, PyAny>> {
        let recs = py.enter_core(|| self.inner.evaluations(model))?;
        plain!(py, &recs)
    }

    /// Compares `window` (`{"predictions": n}`: the model's last n logged predictions,
    /// or `{"dataset": id_or_name}`) with the model's reference and stores the check.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (model, window, *, numeric_test=None, categorical_test=None, p_value=None,
                        wasserstein_threshold=None, jensen_shannon_threshold=None, min_rows=None,
                        drift_share=None))]
    fn drift<'py>(
        &self,
        py: Python<'py>,
        model: String,
        window: Bound<'py, PyAny>,
        numeric_test: Option<Bound<'py, PyAny>>,
        categorical_test: Option<Bound<'py, PyAny>>,
        p_value: Option<Bound<'py, PyAny>>,
        wasserstein_threshold: Option<Bound<'py, PyAny>>,
        jensen_shannon_threshold: Option<Bound<'py, PyAny>>,
        min_rows: Option<Bound<'py, PyAny>>,
        drift_share: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let window: DriftWindow = serde_json::from_value(to_json(&window, "window")?).map_err(|e| {
            to_pyerr(
                py,
                anneal::Error::config("window", format!("expected {{\"predictions\": n}} or {{\"dataset\": id}}: {e}")),
            )
        })?;
        let mut opts = Options::default();
        for (k, v) in [
            ("numeric_test", &numeric_test),
            ("categorical_test", &categorical_test),
            ("p_value", &p_value),
            ("wasserstein_threshold", &wasserstein_threshold),
            ("jensen_shannon_threshold", &jensen_shannon_threshold),
            ("min_rows", &min_rows),
            ("drift_share", &drift_share),
        ] {
            opts = opts.set(k, v.as_ref())?;
        }
        let opts: DriftOptions = anneal::options_from_json(opts.into_value()).map_err(|e| to_pyerr(py, e))?;
        let check = py.enter_core(|| self.inner.drift_with(model, &window, &opts))?;
        plain!(py, &check)
    }

    /// The model's drift checks, newest first.
    fn drift_checks<'py>(&self, py: Python<'py>, model: String) -> PyResult<Bound<'py, PyAny>> {
        let checks = py.enter_core(|| self.inner.drift_checks(model))?;
        plain!(py, &checks)
    }

    fn __repr__(&self) -> &'static str {
        "Continual()"
    }
}
