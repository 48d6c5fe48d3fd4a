//! `TrainingEngine`: create, run, resume, watch and cancel training jobs.
//!
//! Specs are objects with camelCase keys (`maxSteps`, `batchSize`, `method: { lora: {
//! targetModules } }`), built by the core in JavaScript's spelling
//! (`options_from_json_spelled`) and validated by `create_job`, so defaults and
//! validation stay in the core. `train` / `run` / `resume` return Promises
//! and run on the libuv pool; `onEvent` gets `job_started`, `step` (at most every 100 ms),
//! `eval`, `checkpoint`, `log`, then `job_finished`. A `CancelToken` stops a run at its
//! next step: it writes a checkpoint, ends `cancelled` (resumable) and the Promise rejects
//! with code `cancelled`. Catalog reads and `createJob` / `cancel` are synchronous.

use napi::bindgen_prelude::{AsyncTask, Buffer, Unknown};
use napi::Env;
use napi_derive::napi;
use serde_json::Value;

use anneal::{CurveOptions, EventSink, Fanout, TerminalSink};

use crate::conv::{self, js, options, JsJson};
use crate::errors;
use crate::events::{arg, LongTask};

/// The options of `train` / `run` / `resume` besides `onEvent`, `cancel` and `signal`:
/// `progress` (a bar on a TTY, lines every few seconds otherwise, on stderr) and the
/// curve sinks (`tensorboard`, `mlflow`, `mlflowExperiment`), checked by the core.
fn train_options(json: Value) -> anneal::Result<(bool, CurveOptions)> {
    let mut map = match json {
        Value::Object(m) => m,
        _ => Default::default(),
    };
    let progress = match map.remove("progress") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => b,
        Some(other) => return Err(anneal::Error::config("progress", format!("expected true or false, got {other}"))),
    };
    let curves: CurveOptions = options!(Value::Object(map)).map_err(|e| match e {
        anneal::Error::InvalidConfig { field, reason } if reason.starts_with("unknown option") => anneal::Error::config(
            field.clone(),
            format!(
                "unknown option `{field}` (expected one of: onEvent, cancel, signal, progress, tensorboard, mlflow, mlflowExperiment)"
            ),
        ),
        o => o,
    })?;
    Ok((progress, curves))
}

/// The caller's sink behind the progress display and the curve sinks (which see every
/// step; `sink` gets its throttled share).
fn with_curves<'a>(sink: &'a mut dyn EventSink, progress: bool, curves: Fanout<'static>) -> Fanout<'a> {
    let mut all = Fanout::new().with(curves);
    if progress {
        all.push(TerminalSink::new());
    }
    all.with(move |e: &anneal::Event| sink.on_event(e))
}

/// `PlotOptions` from `{ width, height, title }` (the rest of the plot options).
fn plot_options(options: Option<Unknown<'_>>) -> anneal::Result<(Option<String>, anneal::PlotOptions)> {
    let mut map = match conv::plain(options)? {
        Value::Object(m) => m,
        _ => Default::default(),
    };
    let path = match map.remove("path") {
        None | Some(Value::Null) => None,
        Some(Value::String(p)) => Some(p),
        Some(other) => return Err(anneal::Error::config("path", format!("expected a string, got {other}"))),
    };
    Ok((path, options!(Value::Object(map))?))
}

/// A JS spec object as the core's `TrainSpec` (camelCase keys at any depth: `method: {
/// lora: { targetModules } }`); `create_job` validates it.
fn train_spec(spec: Unknown<'_>) -> anneal::Result<anneal::TrainSpec> {
    options!(conv::plain(Some(spec))?)
}

/// Creates, runs, watches and resumes training jobs (`home.training()`).
#[napi]
pub struct TrainingEngine {
    pub(crate) inner: anneal::TrainingEngine,
}

impl TrainingEngine {
    /// `run` or `resume` as a Promise.
    fn execute(&self, job_id: Unknown<'_>, options: Option<Unknown<'_>>, resume: bool) -> AsyncTask<LongTask> {
        let id = anneal::JobId(arg!(conv::string(job_id, "jobId")));
        let engine = self.inner.clone();
        LongTask::spawn(options, true, move |json, sink, cancel| {
            let (progress, curves) = train_options(json)?;
            let curves = if curves.is_empty() { Fanout::new() } else { curves.sinks(&engine.job(&id)?.spec)? };
            let mut sink = with_curves(sink, progress, curves);
            let report =
                if resume { engine.resume(&id, &mut sink, cancel) } else { engine.run(&id, &mut sink, cancel) };
            js!(report.map_err(|e| engine.explain(&id, e))?)
        })
    }
}

#[napi]
impl TrainingEngine {
    /// Validates the spec and stores a pending job. Throws `invalid_config` naming a bad
    /// field.
    #[napi(catch_unwind, ts_return_type = "JobRecord")]
    pub fn create_job(&self, env: Env, #[napi(ts_arg_type = "TrainSpec")] spec: Unknown<'_>) -> napi::Result<JsJson> {
        errors::json(&env, || js!(self.inner.create_job(&train_spec(spec)?)?))
    }

    /// `createJob` + `run`. Resolves with the report; rejects with a coded error (a bad
    /// spec: `invalid_config`; a cancelled run: `cancelled`, with `jobId` and a message
    /// saying how to resume it). With `ifExists: 'reuse'`, a job of the same spec is
    /// reused: its report when it completed, resumed when it stopped, run when pending.
    #[napi(catch_unwind, ts_return_type = "Promise<TrainReport>")]
    pub fn train(
        &self,
        #[napi(ts_arg_type = "TrainSpec")] spec: Unknown<'_>,
        #[napi(ts_arg_type = "TrainCallOptions")] options: Option<Unknown<'_>>,
    ) -> AsyncTask<LongTask> {
        let spec = arg!(train_spec(spec));
        let engine = self.inner.clone();
        LongTask::spawn(options, true, move |json, sink, cancel| {
            // Bad options fail before a job is created.
            let (progress, curves) = train_options(json)?;
            let curves = curves.sinks(&spec)?;
            let job = engine.create_job(&spec)?;
            let mut sink = with_curves(sink, progress, curves);
            js!(engine.complete(&job.id, &mut sink, cancel).map_err(|e| engine.explain(&job.id, e))?)
        })
    }

    /// Runs a pending job to the end.
    #[napi(catch_unwind, ts_return_type = "Promise<TrainReport>")]
    pub fn run(
        &self,
        #[napi(ts_arg_type = "string")] job_id: Unknown<'_>,
        #[napi(ts_arg_type = "TrainCallOptions")] options: Option<Unknown<'_>>,
    ) -> AsyncTask<LongTask> {
        self.execute(job_id, options, false)
    }

    /// Continues a cancelled, failed or interrupted job from its last checkpoint.
    #[napi(catch_unwind, ts_return_type = "Promise<TrainReport>")]
    pub fn resume(
        &self,
        #[napi(ts_arg_type = "string")] job_id: Unknown<'_>,
        #[napi(ts_arg_type = "TrainCallOptions")] options: Option<Unknown<'_>>,
    ) -> AsyncTask<LongTask> {
        self.execute(job_id, options, true)
    }

    /// The job's loss curves as a PNG file in a Buffer: training loss per step, eval
    /// loss at each evaluation, the learning rate below. `path` also writes it there
    /// (atomically). Works while the job runs. Throws `not_found` for an unknown job,
    /// `invalid_config` naming `width` / `height` for a size too small.
    #[napi(catch_unwind)]
    pub fn plot(
        &self,
        env: Env,
        #[napi(ts_arg_type = "string")] job_id: Unknown<'_>,
        #[napi(ts_arg_type = "PlotOptions & { path?: string }")] options: Option<Unknown<'_>>,
    ) -> napi::Result<Buffer> {
        let png = errors::sync(&env, || {
            let id = anneal::JobId(conv::string(job_id, "jobId")?);
            let (path, opts) = plot_options(options)?;
            match path {
                Some(p) => self.inner.plot_to(&id, p, &opts),
                None => self.inner.plot(&id, &opts),
            }
        })?;
        Ok(Buffer::from(png))
    }

    /// A job by id (`interrupted` when its runner died).
    #[napi(catch_unwind, ts_return_type = "JobRecord")]
    pub fn job(&self, env: Env, #[napi(ts_arg_type = "string")] job_id: Unknown<'_>) -> napi::Result<JsJson> {
        errors::json(&env, || js!(self.inner.job(conv::string(job_id, "jobId")?)?))
    }

    /// Jobs matching every given filter field, oldest first.
    #[napi(catch_unwind, ts_return_type = "JobRecord[]")]
    pub fn jobs(
        &self,
        env: Env,
        #[napi(ts_arg_type = "JobFilter")] filter: Option<Unknown<'_>>,
    ) -> napi::Result<JsJson> {
        errors::json(&env, || {
            let filter: anneal::JobFilter = options!(conv::plain(filter)?)?;
            js!(self.inner.jobs(&filter)?)
        })
    }

    /// The job's log lines, oldest first.
    #[napi(catch_unwind, ts_return_type = "JobLog[]")]
    pub fn logs(&self, env: Env, #[napi(ts_arg_type = "string")] job_id: Unknown<'_>) -> napi::Result<JsJson> {
        errors::json(&env, || js!(self.inner.logs(conv::string(job_id, "jobId")?)?))
    }

    /// The job's metrics time series (train steps and evals), by step.
    #[napi(catch_unwind, ts_return_type = "MetricPoint[]")]
    pub fn metrics(&self, env: Env, #[napi(ts_arg_type = "string")] job_id: Unknown<'_>) -> napi::Result<JsJson> {
        errors::json(&env, || js!(self.inner.metrics(conv::string(job_id, "jobId")?)?))
    }

    /// Asks a job to stop, from any process (a flag in the catalog): a pending job is
    /// cancelled at once, a running one checkpoints and ends `cancelled`.
    #[napi(catch_unwind, ts_return_type = "JobRecord")]
    pub fn cancel(&self, env: Env, #[napi(ts_arg_type = "string")] job_id: Unknown<'_>) -> napi::Result<JsJson> {
        errors::json(&env, || js!(self.inner.cancel(conv::string(job_id, "jobId")?)?))
    }
}
