//! `Predictor` and `Continual`: a served classifier that logs its predictions, labels
//! that arrive later, realised accuracy, evaluations and drift checks. Loading,
//! `predict`, `predictBatch`, `evaluate` and `drift` run on the libuv pool (Promises);
//! the other calls read or write a few catalog rows and are synchronous, like the
//! registry's. Records are the core's, in camelCase (feature names, classes and metric
//! names are data and keep their spelling).

use std::path::PathBuf;
use std::sync::Arc;

use napi::bindgen_prelude::{AsyncTask, Buffer, Unknown, ValueType};
use napi::{Env, Task};
use napi_derive::napi;
use serde_json::{Map, Value};

use crate::conv::{self, js, options, JsJson};
use crate::errors;
use crate::events::{arg, LongTask};

/// A feature row; `record` is its 1-based position, named by `invalid_data` when it is
/// not a plain object.
fn row(v: Value, record: u64) -> anneal::Result<Map<String, Value>> {
    match v {
        Value::Object(m) => Ok(m),
        _ => Err(anneal::Error::data(anneal::Location::default().at(record), "a row is an object of column -> value")),
    }
}

/// A single row argument, as record 1.
fn one(v: Unknown<'_>) -> anneal::Result<Map<String, Value>> {
    let at = anneal::Location::default().at(1);
    let v = conv::strict_json(v)
        .map_err(|(path, reason)| anneal::Error::data(if path.is_empty() { at } else { at.field(path) }, reason))?;
    row(v, 1)
}

/// Loads a predictor on the libuv pool; resolves with the `Predictor` instance.
pub struct LoadPredictor {
    home: anneal::Home,
    model: String,
    options: Option<anneal::PredictorOptions>,
    error: Option<anneal::Error>,
}

impl LoadPredictor {
    pub(crate) fn spawn(
        home: anneal::Home,
        model: Unknown<'_>,
        options: Option<Unknown<'_>>,
    ) -> AsyncTask<LoadPredictor> {
        let parsed = conv::string(model, "model").and_then(|m| {
            let opts: anneal::PredictorOptions = options!(conv::plain(options)?)?;
            Ok((m, opts))
        });
        AsyncTask::new(match parsed {
            Ok((model, opts)) => LoadPredictor { home, model, options: Some(opts), error: None },
            Err(e) => LoadPredictor { home, model: String::new(), options: None, error: Some(e) },
        })
    }
}

impl Task for LoadPredictor {
    type Output = anneal::Predictor;
    type JsValue = Predictor;

    fn compute(&mut self) -> napi::Result<anneal::Predictor> {
        let result = match (self.error.take(), self.options.take()) {
            (Some(e), _) => Err(e),
            (None, Some(opts)) => self.home.predictor(self.model.as_str(), &opts),
            (None, None) => Err(anneal::Error::Internal("task ran twice".into())),
        };
        result.map_err(|e| {
            let out = napi::Error::from_reason(e.to_string());
            self.error = Some(e);
            out
        })
    }

    fn resolve(&mut self, _env: Env, inner: anneal::Predictor) -> napi::Result<Predictor> {
        Ok(Predictor { inner: Arc::new(inner) })
    }

    fn reject(&mut self, env: Env, err: napi::Error) -> napi::Result<Predictor> {
        match self.error.take() {
            Some(e) => Err(errors::to_js(&env, e)),
            None => Err(err),
        }
    }
}

/// Serves a registered classifier (`await home.predictor(model, options)`): every
/// answered row is logged in the catalog (see `Continual.label`).
#[napi]
pub struct Predictor {
    inner: Arc<anneal::Predictor>,
}

#[napi]
impl Predictor {
    /// Predicts one row (`{column: value}`) and logs it. Rejects with `invalid_data`
    /// naming the record (1) and the column of a bad row; nothing is logged then.
    #[napi(catch_unwind, ts_return_type = "Promise<Prediction>")]
    pub fn predict(&self, #[napi(ts_arg_type = "Record<string, unknown>")] row: Unknown<'_>) -> AsyncTask<LongTask> {
        let row = arg!(one(row));
        let p = self.inner.clone();
        LongTask::spawn(None, false, move |_, _, _| js!(p.predict(&row)?))
    }

    /// Predicts rows and logs them in one transaction (all or nothing), in the order
    /// given. A bad row rejects with `invalid_data` naming its 1-based record and column.
    #[napi(catch_unwind, ts_return_type = "Promise<Prediction[]>")]
    pub fn predict_batch(
        &self,
        #[napi(ts_arg_type = "Array<Record<string, unknown>>")] rows: Unknown<'_>,
    ) -> AsyncTask<LongTask> {
        let rows = arg!(conv::records(rows).and_then(|items| {
            items.into_iter().enumerate().map(|(i, r)| row(r?, i as u64 + 1)).collect::<anneal::Result<Vec<_>>>()
        }));
        let p = self.inner.clone();
        LongTask::spawn(None, false, move |_, _, _| js!(p.predict_batch(&rows)?))
    }

    /// The served model's record.
    #[napi(getter, catch_unwind, ts_return_type = "ModelRecord")]
    pub fn model(&self, env: Env) -> napi::Result<JsJson> {
        errors::json(&env, || js!(*self.inner.model()))
    }

    /// The classes, in the order of the model's outputs.
    #[napi(getter, catch_unwind, ts_return_type = "unknown[]")]
    pub fn classes(&self) -> JsJson {
        JsJson(Value::Array(self.inner.classes().to_vec()))
    }
}

/// Labels, realised accuracy, evaluations and drift checks of a home's models
/// (`home.continual()`).
#[napi]
pub struct Continual {
    pub(crate) inner: anneal::Continual,
}

#[napi]
impl Continual {
    /// Records the true class `y` of a logged prediction; returns the updated record.
    /// Labelling again overwrites. An unknown id throws `not_found`; a `y` that is not
    /// one of the model's classes throws `invalid_data` naming the field `label`.
    #[napi(catch_unwind, ts_return_type = "PredictionRecord")]
    pub fn label(
        &self,
        env: Env,
        #[napi(ts_arg_type = "string")] prediction_id: Unknown<'_>,
        #[napi(ts_arg_type = "unknown")] y: Unknown<'_>,
    ) -> napi::Result<JsJson> {
        errors::json(&env, || {
            let id = anneal::PredictionId(conv::string(prediction_id, "predictionId")?);
            let y = conv::json(y, "label")?;
            js!(self.inner.label(&id, &y)?)
        })
    }

    /// A logged prediction by id.
    #[napi(catch_unwind, ts_return_type = "PredictionRecord")]
    pub fn prediction(
        &self,
        env: Env,
        #[napi(ts_arg_type = "string")] prediction_id: Unknown<'_>,
    ) -> napi::Result<JsJson> {
        errors::json(&env, || {
            let id = anneal::PredictionId(conv::string(prediction_id, "predictionId")?);
            js!(self.inner.prediction(&id)?)
        })
    }

    /// The model's logged predictions, newest first.
    #[napi(catch_unwind, ts_return_type = "PredictionRecord[]")]
    pub fn predictions(
        &self,
        env: Env,
        #[napi(ts_arg_type = "string")] model: Unknown<'_>,
        #[napi(ts_arg_type = "PredictionFilter")] filter: Option<Unknown<'_>>,
    ) -> napi::Result<JsJson> {
        errors::json(&env, || {
            let model = conv::string(model, "model")?;
            let filter: anneal::PredictionFilter = options!(conv::plain(filter)?)?;
            js!(self.inner.predictions(model, &filter)?)
        })
    }

    /// Accuracy of the model's labelled predictions (`since`: an RFC 3339 time;
    /// `last`: only the last N labelled).
    #[napi(catch_unwind, ts_return_type = "RealisedAccuracy")]
    pub fn realised_accuracy(
        &self,
        env: Env,
        #[napi(ts_arg_type = "string")] model: Unknown<'_>,
        #[napi(ts_arg_type = "AccuracyOptions")] options: Option<Unknown<'_>>,
    ) -> napi::Result<JsJson> {
        errors::json(&env, || {
            let model = conv::string(model, "model")?;
            let opts: anneal::AccuracyOptions = options!(conv::plain(options)?)?;
            js!(self.inner.realised_accuracy(model, &opts)?)
        })
    }

    /// Evaluates `model` on `dataset` (id or name) and stores the result.
    #[napi(catch_unwind, ts_return_type = "Promise<EvaluationRecord>")]
    pub fn evaluate(
        &self,
        #[napi(ts_arg_type = "string")] model: Unknown<'_>,
        #[napi(ts_arg_type = "string")] dataset: Unknown<'_>,
    ) -> AsyncTask<LongTask> {
        let model = arg!(conv::string(model, "model"));
        let dataset = arg!(conv::string(dataset, "dataset"));
        let c = self.inner.clone();
        LongTask::spawn(None, false, move |_, _, _| js!(c.evaluate(model, dataset)?))
    }

    /// The model's evaluations, newest first.
    #[napi(catch_unwind, ts_return_type = "EvaluationRecord[]")]
    pub fn evaluations(&self, env: Env, #[napi(ts_arg_type = "string")] model: Unknown<'_>) -> napi::Result<JsJson> {
        errors::json(&env, || js!(self.inner.evaluations(conv::string(model, "model")?)?))
    }

    /// Compares `window` (`{predictions: n}`: the model's last n logged predictions, or
    /// `{dataset: idOrName}`) with the model's reference and stores the check.
    #[napi(catch_unwind, ts_return_type = "Promise<DriftCheck>")]
    pub fn drift(
        &self,
        #[napi(ts_arg_type = "string")] model: Unknown<'_>,
        #[napi(ts_arg_type = "DriftWindow")] window: Unknown<'_>,
        #[napi(ts_arg_type = "DriftOptions")] options: Option<Unknown<'_>>,
    ) -> AsyncTask<LongTask> {
        let model = arg!(conv::string(model, "model"));
        let window = arg!(conv::json(window, "window").and_then(|w| {
            serde_json::from_value::<anneal::DriftWindow>(w).map_err(|e| {
                anneal::Error::config("window", format!("expected {{predictions: n}} or {{dataset: id}}: {e}"))
            })
        }));
        let c = self.inner.clone();
        LongTask::spawn(options, false, move |json, _, _| {
            let opts: anneal::types::DriftOptions = options!(json)?;
            js!(c.drift_with(model, &window, &opts)?)
        })
    }

    /// The model's drift checks, newest first.
    #[napi(catch_unwind, ts_return_type = "DriftCheck[]")]
    pub fn drift_checks(&self, env: Env, #[napi(ts_arg_type = "string")] model: Unknown<'_>) -> napi::Result<JsJson> {
        errors::json(&env, || js!(self.inner.drift_checks(conv::string(model, "model")?)?))
    }

    /// The model name over time, from the catalog's rows, off the event loop: rolling
    /// realised accuracy per serving version, each version's accuracy, drift checks,
    /// evaluations, and the promotions, rollbacks, retrains and refused candidates to
    /// mark. `modelName` may be a reference (`churn@production`): its name is used. An
    /// unknown name rejects with `not_found`; bad options with `invalid_config` naming
    /// the field.
    #[napi(catch_unwind, ts_return_type = "Promise<Timeline>")]
    pub fn timeline(
        &self,
        #[napi(ts_arg_type = "string")] model_name: Unknown<'_>,
        #[napi(ts_arg_type = "TimelineOptions")] options: Option<Unknown<'_>>,
    ) -> AsyncTask<LongTask> {
        let name = arg!(conv::string(model_name, "modelName"));
        let c = self.inner.clone();
        LongTask::spawn(options, false, move |json, _, _| {
            let opts: anneal::TimelineOptions = options!(json)?;
            js!(c.timeline(&name, &opts)?)
        })
    }

    /// Draws the timeline (accuracy per version with the monitors' floor, drift scores,
    /// promotions and rollbacks marked), off the event loop, and resolves to the PNG as
    /// a Buffer; with `path`, also writes it there (atomically: a reader sees the old
    /// file or the new one). `options`: the `TimelineOptions` and the `PlotOptions`
    /// (`width`, `height`, `title`) in one object.
    #[napi(catch_unwind, ts_return_type = "Promise<Buffer>")]
    pub fn plot_timeline(
        &self,
        #[napi(ts_arg_type = "string")] model_name: Unknown<'_>,
        #[napi(ts_arg_type = "string | null")] path: Option<Unknown<'_>>,
        #[napi(ts_arg_type = "TimelineOptions & PlotOptions")] options: Option<Unknown<'_>>,
    ) -> AsyncTask<PlotTimeline> {
        let parsed = (|| {
            let name = conv::string(model_name, "modelName")?;
            let path = match path {
                Some(p) if !matches!(p.get_type(), Ok(ValueType::Null | ValueType::Undefined)) => {
                    Some(PathBuf::from(conv::string(p, "path")?))
                }
                _ => None,
            };
            let (timeline, plot) = split_plot_options(conv::plain(options)?)?;
            Ok((name, path, options!(timeline)?, options!(plot)?))
        })();
        AsyncTask::new(match parsed {
            Ok(work) => PlotTimeline { continual: self.inner.clone(), work: Some(work), error: None },
            Err(e) => PlotTimeline { continual: self.inner.clone(), work: None, error: Some(e) },
        })
    }

    /// Updates the classifier `model` with labelled `records` (`{column: value, ..,
    /// label}`) by SGD, off the event loop: one step per record by default (River's
    /// `learn_one`; `batchSize` > 1: `learn_many`). Resolves to the new version's record
    /// (of `outputName`, default the model's name), whose `lineage` names the version
    /// learned from (`base`, `baseRef`) and the records (`learned`: their count, sha256,
    /// the steps, accuracy and log-loss before and after). The model learned from is
    /// never changed; aliases do not move. A bad record rejects with `invalid_data`
    /// naming the 1-based record and the field; nothing is registered then.
    #[napi(catch_unwind, ts_return_type = "Promise<ModelRecord>")]
    pub fn learn(
        &self,
        #[napi(ts_arg_type = "string")] model: Unknown<'_>,
        #[napi(ts_arg_type = "Array<Record<string, unknown>>")] records: Unknown<'_>,
        #[napi(ts_arg_type = "LearnOptions")] options: Option<Unknown<'_>>,
    ) -> AsyncTask<LongTask> {
        let model = arg!(conv::string(model, "model"));
        let records = arg!(conv::records(records).and_then(|r| r.into_iter().collect::<anneal::Result<Vec<_>>>()));
        let c = self.inner.clone();
        LongTask::spawn(options, false, move |json, _, _| {
            let opts: anneal::LearnOptions = options!(json)?;
            js!(c.learn(model, &records, &opts)?)
        })
    }
}

/// The keys of `plotTimeline`'s options object: the timeline's, then the plot's.
const TIMELINE_KEYS: [&str; 4] = ["window", "since", "until", "maxPoints"];
const PLOT_KEYS: [&str; 3] = ["width", "height", "title"];

/// `plotTimeline`'s one options object as the `TimelineOptions` and `PlotOptions`
/// JSON; any other key is `invalid_config` naming it.
fn split_plot_options(json: Value) -> anneal::Result<(Value, Value)> {
    let (mut timeline, mut plot) = (Map::new(), Map::new());
    if let Value::Object(m) = json {
        for (k, v) in m {
            if TIMELINE_KEYS.contains(&k.as_str()) {
                timeline.insert(k, v);
            } else if PLOT_KEYS.contains(&k.as_str()) {
                plot.insert(k, v);
            } else {
                let allowed = TIMELINE_KEYS.iter().chain(&PLOT_KEYS).copied().collect::<Vec<_>>().join(", ");
                return Err(anneal::Error::config(k, format!("unknown option; expected one of {allowed}")));
            }
        }
    }
    Ok((Value::Object(timeline), Value::Object(plot)))
}

type PlotWork = (String, Option<PathBuf>, anneal::TimelineOptions, anneal::PlotOptions);

/// Renders a timeline plot on the libuv pool; resolves with the PNG as a Buffer.
pub struct PlotTimeline {
    continual: anneal::Continual,
    work: Option<PlotWork>,
    error: Option<anneal::Error>,
}

impl Task for PlotTimeline {
    type Output = Vec<u8>;
    type JsValue = Buffer;

    fn compute(&mut self) -> napi::Result<Vec<u8>> {
        let result = match (self.error.take(), self.work.take()) {
            (Some(e), _) => Err(e),
            (None, Some((name, path, opts, plot))) => {
                self.continual.timeline_png(&name, path.as_deref(), &opts, &plot).map(|(_, png)| png)
            }
            (None, None) => Err(anneal::Error::Internal("task ran twice".into())),
        };
        result.map_err(|e| {
            let out = napi::Error::from_reason(e.to_string());
            self.error = Some(e);
            out
        })
    }

    fn resolve(&mut self, _env: Env, png: Vec<u8>) -> napi::Result<Buffer> {
        Ok(Buffer::from(png))
    }

    fn reject(&mut self, env: Env, err: napi::Error) -> napi::Result<Buffer> {
        match self.error.take() {
            Some(e) => Err(errors::to_js(&env, e)),
            None => Err(err),
        }
    }
}
