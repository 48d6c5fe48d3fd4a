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

use napi::bindgen_prelude::{AsyncTask, Unknown};
use napi::Env;
use napi_derive::napi;

use crate::conv::{self, js, options, JsJson};
use crate::errors;
use crate::events::{arg, LongTask};

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
            conv::fields(json, &[])?;
            let report = if resume { engine.resume(&id, sink, cancel) } else { engine.run(&id, sink, cancel) };
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
        #[napi(ts_arg_type = "CallOptions")] options: Option<Unknown<'_>>,
    ) -> AsyncTask<LongTask> {
        let spec = arg!(train_spec(spec));
        let engine = self.inner.clone();
        LongTask::spawn(options, true, move |json, sink, cancel| {
            conv::fields(json, &[])?;
            let job = engine.create_job(&spec)?;
            js!(engine.complete(&job.id, sink, cancel).map_err(|e| engine.explain(&job.id, e))?)
        })
    }

    /// Runs a pending job to the end.
    #[napi(catch_unwind, ts_return_type = "Promise<TrainReport>")]
    pub fn run(
        &self,
        #[napi(ts_arg_type = "string")] job_id: Unknown<'_>,
        #[napi(ts_arg_type = "CallOptions")] options: Option<Unknown<'_>>,
    ) -> AsyncTask<LongTask> {
        self.execute(job_id, options, false)
    }

    /// Continues a cancelled, failed or interrupted job from its last checkpoint.
    #[napi(catch_unwind, ts_return_type = "Promise<TrainReport>")]
    pub fn resume(
        &self,
        #[napi(ts_arg_type = "string")] job_id: Unknown<'_>,
        #[napi(ts_arg_type = "CallOptions")] options: Option<Unknown<'_>>,
    ) -> AsyncTask<LongTask> {
        self.execute(job_id, options, true)
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
