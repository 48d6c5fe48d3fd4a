//! `Predictor` and `Continual`: a served classifier that logs its predictions, labels
//! that arrive later, realised accuracy, evaluations and drift checks. Every call that
//! touches the catalog or the model releases the GIL. Predictions and the continual
//! records are plain dicts (the core's serde form, `snake_case`).

use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::PyBytes;
use serde_json::{Map, Value};

use anneal::types::DriftOptions;
use anneal::{
    AccuracyOptions, DriftWindow, LearnOptions, PlotOptions, PredictionFilter, PredictionId, PredictorOptions,
    TimelineOptions,
};

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

/// `window`, `since`, `until`, `max_points` as the core's `TimelineOptions`.
fn timeline_options(py: Python<'_>, values: [&Option<Bound<'_, PyAny>>; 4]) -> PyResult<TimelineOptions> {
    let mut opts = Options::default();
    for (k, v) in ["window", "since", "until", "max_points"].into_iter().zip(values) {
        opts = opts.set(k, v.as_ref())?;
    }
    anneal::options_from_json(opts.into_value()).map_err(|e| to_pyerr(py, e))
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

    /// The model name over time, from the catalog's rows (a dict): rolling realised
    /// accuracy per serving version, each version's accuracy, drift checks,
    /// evaluations, and the promotions, rollbacks, retrains and refused candidates to
    /// mark. `model_name` may be a reference (`churn@production`): its name is used.
    /// An unknown name raises `NotFoundError`; bad options `InvalidConfigError`
    /// naming the field.
    #[pyo3(signature = (model_name, *, window=None, since=None, until=None, max_points=None))]
    fn timeline<'py>(
        &self,
        py: Python<'py>,
        model_name: String,
        window: Option<Bound<'py, PyAny>>,
        since: Option<Bound<'py, PyAny>>,
        until: Option<Bound<'py, PyAny>>,
        max_points: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let opts = timeline_options(py, [&window, &since, &until, &max_points])?;
        let t = py.enter_core(|| self.inner.timeline(&model_name, &opts))?;
        plain!(py, &t)
    }

    /// Draws the timeline (accuracy per version with the monitors' floor, drift
    /// scores, promotions and rollbacks marked) and returns the PNG's bytes; with
    /// `path`, also writes them there (atomically: a reader sees the old file or the
    /// new one). Options as `timeline`, plus `width`, `height` (pixels) and `title`.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (model_name, path=None, *, window=None, since=None, until=None, max_points=None,
                        width=None, height=None, title=None))]
    fn plot_timeline<'py>(
        &self,
        py: Python<'py>,
        model_name: String,
        path: Option<PathBuf>,
        window: Option<Bound<'py, PyAny>>,
        since: Option<Bound<'py, PyAny>>,
        until: Option<Bound<'py, PyAny>>,
        max_points: Option<Bound<'py, PyAny>>,
        width: Option<Bound<'py, PyAny>>,
        height: Option<Bound<'py, PyAny>>,
        title: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let opts = timeline_options(py, [&window, &since, &until, &max_points])?;
        let value = Options::default()
            .set("width", width.as_ref())?
            .set("height", height.as_ref())?
            .set("title", title.as_ref())?
            .into_value();
        let plot: PlotOptions = anneal::options_from_json(value).map_err(|e| to_pyerr(py, e))?;
        let (_, png) = py.enter_core(|| self.inner.timeline_png(&model_name, path.as_deref(), &opts, &plot))?;
        Ok(PyBytes::new(py, &png))
    }

    /// Updates the classifier `model` with labelled `records` (dicts of column ->
    /// value with a `label`) by SGD, one step per record by default (River's
    /// `learn_one`; `batch_size` > 1: `learn_many`), and registers the result as a new
    /// version (of `output_name`, default the model's name) whose lineage names the
    /// version learned from and the records (stored with it, and their sha256). The
    /// model learned from is never changed; aliases do not move. A bad record raises
    /// `InvalidDataError` naming the 1-based record and the field; nothing is
    /// registered then.
    #[pyo3(signature = (model, records, *, epochs=None, batch_size=None, learning_rate=None, output_name=None))]
    #[allow(clippy::too_many_arguments)]
    fn learn(
        &self,
        py: Python<'_>,
        model: String,
        records: Bound<'_, PyAny>,
        epochs: Option<Bound<'_, PyAny>>,
        batch_size: Option<Bound<'_, PyAny>>,
        learning_rate: Option<Bound<'_, PyAny>>,
        output_name: Option<Bound<'_, PyAny>>,
    ) -> PyResult<PyModelRecord> {
        let value = Options::default()
            .set("epochs", epochs.as_ref())?
            .set("batch_size", batch_size.as_ref())?
            .set("learning_rate", learning_rate.as_ref())?
            .set("output_name", output_name.as_ref())?
            .into_value();
        let opts: LearnOptions = anneal::options_from_json(value).map_err(|e| to_pyerr(py, e))?;
        if records.is_instance_of::<pyo3::types::PyString>() || records.is_instance_of::<pyo3::types::PyDict>() {
            let e = anneal::Error::config("records", "expected a list of dicts (column -> value, with a `label`)");
            return Err(to_pyerr(py, e));
        }
        let mut rows = Vec::new();
        for (i, r) in records.try_iter()?.enumerate() {
            rows.push(to_json(&r?, &format!("record {}", i + 1))?);
        }
        let rec = py.enter_core(|| self.inner.learn(model, &rows, &opts))?;
        Ok(rec.into())
    }

    fn __repr__(&self) -> &'static str {
        "Continual()"
    }
}
