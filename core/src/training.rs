//! TrainingEngine: jobs, the training loop, AdamW + schedule, checkpoints, resume,
//! cancellation (in-process and from another process through the catalog).
//!
//! ```no_run
//! # fn main() -> anneal::Result<()> {
//! use anneal::{CancelToken, Home, Method, TerminalSink, TrainSpec};
//! let home = Home::open("./anneal-home")?;
//! let engine = home.training();
//! let job = engine.create_job(&TrainSpec { base: "nano".into(), dataset: "support".into(),
//!                                          method: Method::Full, ..Default::default() })?;
//! let report = engine.run(&job.id, &mut TerminalSink::new(), &CancelToken::new())?;
//! println!("{} loss {:.3}", report.model, report.final_loss);
//! # Ok(()) }
//! ```
//!
//! Events of a run, in order: `job_started`, then `step` / `eval` / `checkpoint` /
//! `log`, then `job_finished` (always last, also on failure and cancellation).

mod checkpoint;
mod data;
mod optim;
mod runner;
mod spec;

use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub use optim::AdamW;
pub use spec::{Method, Schedule, TrainSpec};

use crate::catalog::jobs as sql;
use crate::data::{DatasetId, DatasetStore};
use crate::error::{Error, Result};
use crate::events::{CancelToken, ErrorInfo, Event, EventSink};
use crate::home::HomeInner;
use crate::registry::{ModelId, ModelRegistry};
use crate::util;

/// A running job whose heartbeat is older than this is reported `interrupted`.
pub const HEARTBEAT_STALE_SECS: u64 = 30;

/// A job id, e.g. `job_3f2a9c0d1b7e4a56`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub String);

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl From<&str> for JobId {
    fn from(s: &str) -> Self {
        JobId(s.to_string())
    }
}
impl From<String> for JobId {
    fn from(s: String) -> Self {
        JobId(s)
    }
}
impl From<&JobId> for JobId {
    fn from(id: &JobId) -> Self {
        id.clone()
    }
}

/// A job's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Pending,
    Running,
    Completed,
    Failed,
    Cancelled,
    /// Stored as running, but its process is gone (stale heartbeat): resumable.
    Interrupted,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Running => "running",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
            JobStatus::Interrupted => "interrupted",
        }
    }
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "pending" => JobStatus::Pending,
            "running" => JobStatus::Running,
            "completed" => JobStatus::Completed,
            "failed" => JobStatus::Failed,
            "cancelled" => JobStatus::Cancelled,
            "interrupted" => JobStatus::Interrupted,
            o => return Err(Error::config("status", format!("unknown job status `{o}`"))),
        })
    }
    /// Whether [`TrainingEngine::resume`] accepts a job in this state.
    pub fn is_resumable(self) -> bool {
        matches!(self, JobStatus::Failed | JobStatus::Cancelled | JobStatus::Interrupted | JobStatus::Pending)
    }
}

/// A training job (a catalog row), with its live progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: JobId,
    pub status: JobStatus,
    /// `None` once the base model was deleted (forced).
    pub base_model_id: Option<ModelId>,
    pub dataset_id: Option<DatasetId>,
    pub eval_dataset_id: Option<DatasetId>,
    pub output_model_id: Option<ModelId>,
    pub spec: TrainSpec,
    pub progress: f64,
    pub epoch: u32,
    pub step: u64,
    pub total_steps: u64,
    pub tokens: u64,
    pub loss: Option<f64>,
    pub eval_loss: Option<f64>,
    pub lr: Option<f64>,
    pub tokens_per_sec: Option<f64>,
    /// A preview of the sequence being trained on.
    pub sample: Option<String>,
    /// Unix milliseconds of the runner's last sign of life.
    pub heartbeat_at: Option<i64>,
    pub runner_pid: Option<u32>,
    pub cancel_requested: bool,
    pub error: Option<ErrorInfo>,
    /// The latest checkpoint directory, relative to the home.
    pub checkpoint: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

/// Filters for [`TrainingEngine::jobs`]; every set field must match.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobFilter {
    /// Status as reported (so `interrupted` finds stale running jobs).
    pub status: Option<JobStatus>,
    pub base_model: Option<ModelId>,
    pub dataset: Option<DatasetId>,
}

/// A log line of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobLog {
    pub at: String,
    pub level: String,
    pub message: String,
}

/// One point of a job's metrics time series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricPoint {
    /// `train` (an optimiser step) or `eval`.
    pub kind: String,
    pub step: u64,
    pub epoch: u32,
    /// Training loss of the step, or the eval loss.
    pub loss: f64,
    pub lr: Option<f64>,
    pub tokens_per_sec: Option<f64>,
    pub at: String,
}

/// The result of a successful run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    pub job_id: JobId,
    /// The registered output model.
    pub model: ModelId,
    /// Loss of the last optimiser step.
    pub final_loss: f64,
    /// Last eval loss, when there was eval data.
    pub eval_loss: Option<f64>,
    pub steps: u64,
    /// Real (non-padding) tokens trained on.
    pub tokens: u64,
    pub duration_s: f64,
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Whether process `pid` is alive (Linux: /proc; elsewhere assume it is).
fn pid_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    if cfg!(target_os = "linux") {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
    } else {
        true
    }
}

/// Reports `interrupted` for a running job whose heartbeat is stale or whose process is gone.
/// (A job running in this process is never interrupted.)
fn effective(mut rec: JobRecord, active: bool) -> JobRecord {
    if rec.status == JobStatus::Running && !active {
        let stale = rec.heartbeat_at.is_none_or(|h| now_ms() - h > (HEARTBEAT_STALE_SECS * 1000) as i64);
        let dead = rec.runner_pid.is_some_and(|p| p != std::process::id() && !pid_alive(p));
        if stale || dead {
            rec.status = JobStatus::Interrupted;
        }
    }
    rec
}

/// Creates, runs, watches and resumes training jobs. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct TrainingEngine {
    home: Arc<HomeInner>,
}

impl TrainingEngine {
    pub(crate) fn new(home: Arc<HomeInner>) -> Self {
        Self { home }
    }

    pub(crate) fn registry(&self) -> ModelRegistry {
        ModelRegistry::new(self.home.clone())
    }

    pub(crate) fn datasets(&self) -> DatasetStore {
        DatasetStore::new(self.home.clone())
    }

    pub(crate) fn job_dir(&self, id: &JobId) -> PathBuf {
        self.home.root.join("jobs").join(&id.0)
    }

    /// Validates `spec`, resolves its base model and datasets, and stores a pending job.
    pub fn create_job(&self, spec: &TrainSpec) -> Result<JobRecord> {
        spec.validate()?;
        let base = self.registry().resolve(&spec.base).map_err(|e| match e {
            Error::NotFound { .. } => Error::config("base", format!("model `{}` is not registered", spec.base)),
            o => o,
        })?;
        let ds = self.datasets();
        fn not_found<'a>(field: &'static str, id: &'a DatasetId) -> impl FnOnce(Error) -> Error + 'a {
            move |e: Error| match e {
                Error::NotFound { .. } => Error::config(field, format!("dataset `{id}` does not exist")),
                o => o,
            }
        }
        let dataset = ds.get(&spec.dataset).map_err(not_found("dataset", &spec.dataset))?;
        let eval = match &spec.eval_dataset {
            Some(e) => Some(ds.get(e).map_err(not_found("eval_dataset", e))?),
            None => None,
        };
        let now = util::now();
        let rec = JobRecord {
            id: JobId(util::new_id("job")),
            status: JobStatus::Pending,
            base_model_id: Some(base.id),
            dataset_id: Some(dataset.id),
            eval_dataset_id: eval.map(|e| e.id),
            output_model_id: None,
            spec: spec.clone(),
            progress: 0.0,
            epoch: 0,
            step: 0,
            total_steps: 0,
            tokens: 0,
            loss: None,
            eval_loss: None,
            lr: None,
            tokens_per_sec: None,
            sample: None,
            heartbeat_at: None,
            runner_pid: None,
            cancel_requested: false,
            error: None,
            checkpoint: None,
            created_at: now.clone(),
            updated_at: now,
            started_at: None,
            finished_at: None,
        };
        self.home.catalog.write(|tx| sql::insert(tx, &rec))?;
        Ok(rec)
    }

    /// A job by id, with `interrupted` reported for a dead runner.
    pub fn job(&self, id: impl Into<JobId>) -> Result<JobRecord> {
        let id = id.into();
        let rec = self.home.catalog.read(|c| sql::get(c, &id.0))?;
        Ok(effective(rec, runner::is_active(&id)))
    }

    /// Jobs matching `filter`, oldest first.
    pub fn jobs(&self, filter: &JobFilter) -> Result<Vec<JobRecord>> {
        let all = self.home.catalog.read(|c| sql::list(c, filter))?;
        Ok(all
            .into_iter()
            .map(|r| {
                let active = runner::is_active(&r.id);
                effective(r, active)
            })
            .filter(|r| filter.status.is_none_or(|s| s == r.status))
            .collect())
    }

    /// The job's log lines, oldest first.
    pub fn logs(&self, id: impl Into<JobId>) -> Result<Vec<JobLog>> {
        let id = id.into();
        self.home.catalog.read(|c| {
            sql::get(c, &id.0)?;
            sql::logs(c, &id.0)
        })
    }

    /// The job's metrics time series (train steps and evals), by step.
    pub fn metrics(&self, id: impl Into<JobId>) -> Result<Vec<MetricPoint>> {
        let id = id.into();
        self.home.catalog.read(|c| {
            sql::get(c, &id.0)?;
            sql::metrics(c, &id.0)
        })
    }

    /// Asks a job to stop. Works from any process: the runner polls the flag every
    /// step, writes a checkpoint and ends `cancelled` (resumable). A pending job is
    /// cancelled at once.
    pub fn cancel(&self, id: impl Into<JobId>) -> Result<JobRecord> {
        let id = id.into();
        let now = util::now();
        self.home.catalog.write(|tx| {
            let rec = sql::get(tx, &id.0)?;
            match rec.status {
                JobStatus::Pending => sql::finish(tx, &id.0, JobStatus::Cancelled, None, None, &now),
                JobStatus::Running => sql::request_cancel(tx, &id.0, &now),
                _ => Ok(()),
            }
        })?;
        self.job(&id)
    }

    /// Runs a pending job to the end on this thread. Emits `job_started` first and
    /// `job_finished` last; returns the report or the error that ended the job.
    pub fn run(&self, id: &JobId, sink: &mut dyn EventSink, cancel: &CancelToken) -> Result<TrainReport> {
        runner::execute(self, id, false, sink, cancel)
    }

    /// Continues a cancelled, failed or interrupted job from its last checkpoint (from
    /// the start when it has none): same data order, optimiser state and counters.
    pub fn resume(&self, id: &JobId, sink: &mut dyn EventSink, cancel: &CancelToken) -> Result<TrainReport> {
        runner::execute(self, id, true, sink, cancel)
    }

    /// Runs (or, for a resumable job that already started, resumes) the job on a
    /// background thread.
    pub fn spawn(&self, id: &JobId) -> Result<JobHandle> {
        let rec = self.job(id)?;
        let resume = rec.status != JobStatus::Pending;
        if !rec.status.is_resumable() {
            return Err(Error::config("job", format!("job {id} is {}, it cannot run", rec.status.as_str())));
        }
        let (tx, rx) = mpsc::channel();
        let cancel = CancelToken::new();
        let engine = self.clone();
        let job_id = id.clone();
        let token = cancel.clone();
        let thread = std::thread::Builder::new()
            .name(format!("anneal-{}", id.0))
            .spawn(move || {
                let mut sink = ChannelSink(tx);
                runner::execute(&engine, &job_id, resume, &mut sink, &token)
            })
            .map_err(|e| Error::Internal(format!("cannot start a training thread: {e}")))?;
        Ok(JobHandle { job_id: id.clone(), cancel, thread: Some(thread), events: rx })
    }
}

/// Forwards events to a channel; a dropped receiver is not an error.
struct ChannelSink(mpsc::Sender<Event>);

impl EventSink for ChannelSink {
    fn on_event(&mut self, event: &Event) -> Result<()> {
        let _ = self.0.send(event.clone());
        Ok(())
    }
}

/// A job running on a background thread ([`TrainingEngine::spawn`]).
pub struct JobHandle {
    job_id: JobId,
    cancel: CancelToken,
    thread: Option<JoinHandle<Result<TrainReport>>>,
    events: mpsc::Receiver<Event>,
}

impl JobHandle {
    pub fn job_id(&self) -> &JobId {
        &self.job_id
    }
    /// Asks the job to stop at the next step (it ends `cancelled`, resumable).
    pub fn cancel(&self) {
        self.cancel.cancel()
    }
    /// The job's events, in order; the channel closes after `job_finished`.
    pub fn events(&self) -> &mpsc::Receiver<Event> {
        &self.events
    }
    /// Whether the thread has finished.
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }
    /// Blocks until the job ends.
    pub fn wait(mut self) -> Result<TrainReport> {
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| Error::Internal("the training thread panicked".into()))?,
            None => Err(Error::Internal("job handle already waited on".into())),
        }
    }
}
