//! The training loop: real forward, backward and AdamW steps, with live state in the
//! catalog, events, evaluation, early stopping, checkpoints, cancellation and resume.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::checkpoint::{self, TrainerState};
use super::data;
use super::optim::{clip_grad_norm, lr_at, AdamW};
use super::trainee::{LmTrainee, Trainee};
use super::{effective, now_ms, TrainingEngine};
use crate::catalog::jobs::{self as sql, Progress};
use crate::data::for_each_record;
use crate::error::{Error, ErrorKind, IoResultExt, Location, Result, StorageError};
use crate::events::{CancelToken, EventSink};
use crate::types::{
    ErrorInfo, Event, Family, FinishStatus, JobId, JobLog, JobRecord, JobStatus, Lineage, MetricKind, MetricPoint,
    ModelId, ModelRecord, TrainMetrics, TrainReport, TrainSpec,
};
use crate::util::{self, StagingDir};

mod classifier;

/// At most this often the live state goes to the catalog (lifecycle writes always do).
const CATALOG_WRITE_INTERVAL: Duration = Duration::from_millis(250);
/// The heartbeat is refreshed this often by a side thread, even during long steps.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// Waits before retrying the catalog write that records how a run ended.
const END_RETRIES: [Duration; 3] = [Duration::from_millis(100), Duration::from_millis(300), Duration::from_millis(900)];
/// Where a run keeps its end when the catalog refuses to record it (`jobs/<id>/`).
pub(crate) const FAILURE_FILE: &str = "failure.json";

/// Jobs running in this process.
static ACTIVE: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

pub(crate) fn is_active(id: &JobId) -> bool {
    ACTIVE.lock().map(|s| s.contains(&id.0)).unwrap_or(false)
}

struct ActiveGuard(String);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        if let Ok(mut s) = ACTIVE.lock() {
            s.remove(&self.0);
        }
    }
}

/// Claims the job, runs it, records the outcome and emits `job_finished` last.
pub(crate) fn execute(
    engine: &TrainingEngine,
    id: &JobId,
    resume: bool,
    sink: &mut dyn EventSink,
    cancel: &CancelToken,
) -> Result<TrainReport> {
    let _guard = ActiveGuard::claim(id)?;
    let _malloc = util::AllocatorTuning::acquire();
    let lease = util::new_id("lease");
    let job = claim(engine, id, resume, &lease)?;
    let mut run = Run {
        engine,
        job,
        lease: lease.clone(),
        sink,
        last_write: None,
        logs: Vec::new(),
        metrics: Vec::new(),
        checkpoint_rel: None,
        image: None,
        last: None,
    };
    let result = {
        let _beat = Heartbeat::start(engine, id, &lease);
        run.train(cancel, resume)
    };
    let (status, error, model) = match &result {
        Ok(r) => (JobStatus::Completed, None, Some(r.model.clone())),
        Err(Error::Cancelled) => (JobStatus::Cancelled, None, None),
        Err(e) => (JobStatus::Failed, Some(ErrorInfo::from(e)), None),
    };
    run.record_end(status, error.as_ref(), model.as_ref());
    let finished = Event::JobFinished {
        job_id: id.0.clone(),
        status: match status {
            JobStatus::Completed => FinishStatus::Completed,
            JobStatus::Cancelled => FinishStatus::Cancelled,
            _ => FinishStatus::Failed,
        },
        model_id: model.map(|m| m.0),
        error,
    };
    // The run's own outcome is what the caller gets: a failure to record its end was
    // retried, kept in failure.json and logged; a completed run was recorded as such in
    // the transaction that registered its model.
    let _ = run.sink.on_event(&finished);
    result
}

impl ActiveGuard {
    /// Marks the job as running in this process; refuses a second runner here.
    fn claim(id: &JobId) -> Result<Self> {
        let mut active = ACTIVE.lock().map_err(|_| Error::Internal("job registry lock poisoned".into()))?;
        if !active.insert(id.0.clone()) {
            return Err(Error::InUse { what: "job", id: id.0.clone(), reason: "it is running in this process".into() });
        }
        Ok(ActiveGuard(id.0.clone()))
    }
}

/// Marks the job running in the catalog, if its state allows this kind of start.
fn claim(engine: &TrainingEngine, id: &JobId, resume: bool, lease: &str) -> Result<JobRecord> {
    // The end of an earlier run kept in failure.json goes to the catalog first (the
    // caller holds this process's claim on the job, so it is not active elsewhere here).
    if let Ok(rec) = engine.store.catalog.read(|c| sql::get(c, &id.0)) {
        settle(engine, effective(rec, false), false);
    }
    let now = util::now();
    let rec = engine.store.catalog.write(|tx| {
        let rec = effective(sql::get(tx, &id.0)?, false);
        let ok = match rec.status {
            JobStatus::Pending => true,
            JobStatus::Failed | JobStatus::Cancelled | JobStatus::Interrupted => resume,
            _ => false,
        };
        if !ok {
            let hint = if rec.status == JobStatus::Running {
                "it is running in another process"
            } else if resume {
                "only cancelled, failed or interrupted jobs resume"
            } else {
                "run takes a pending job; use resume to continue it"
            };
            return Err(Error::InUse { what: "job", id: id.0.clone(), reason: format!("{}: {hint}", rec.status) });
        }
        sql::claim(tx, &id.0, std::process::id(), lease, now_ms(), &now)?;
        Ok(rec)
    })?;
    // Any file left now is stale (an earlier lease): only this run can write a valid one.
    let _ = std::fs::remove_file(engine.job_dir(id).join(FAILURE_FILE));
    Ok(rec)
}

/// The end of a run that the catalog refused to record, kept in `jobs/<id>/failure.json`
/// until the next open of the home (or read of the job) writes it to the catalog.
#[derive(Debug, Serialize, Deserialize)]
struct KeptEnd {
    /// The run's lease: the end applies only while the job is still running under it.
    lease: String,
    status: JobStatus,
    error: Option<ErrorInfo>,
    at: String,
    last: Option<LastStep>,
    checkpoint: Option<String>,
    logs: Vec<JobLog>,
    metrics: Vec<MetricPoint>,
}

impl KeptEnd {
    /// `rec` as it reads once this end is recorded.
    fn overlay(self, mut rec: JobRecord) -> JobRecord {
        rec.status = self.status;
        rec.error = self.error;
        rec.runner_pid = None;
        rec.finished_at = Some(self.at.clone());
        rec.updated_at = self.at;
        if let Some(l) = self.last {
            (rec.progress, rec.epoch, rec.step, rec.total_steps, rec.tokens) =
                (l.progress, l.epoch, l.step, l.total, l.tokens);
            rec.loss = l.loss;
            rec.eval_loss = l.eval_loss.or(rec.eval_loss);
        }
        rec.checkpoint = self.checkpoint.or(rec.checkpoint);
        rec
    }
}

/// `rec` (as [`effective`] reports it) with the end its run kept in failure.json: written
/// to the catalog now when possible (the file is then removed), else reported as if it
/// were. Jobs without such a file, ended ones and ones `active` here are returned as they are.
pub(crate) fn settle(engine: &TrainingEngine, rec: JobRecord, active: bool) -> JobRecord {
    if active || !matches!(rec.status, JobStatus::Running | JobStatus::Interrupted) {
        return rec;
    }
    let path = engine.job_dir(&rec.id).join(FAILURE_FILE);
    let Some(end) = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice::<KeptEnd>(&b).ok()) else {
        return rec;
    };
    let id = rec.id.0.clone();
    // A file of an earlier lease is stale (the next claim removes it).
    if !engine.store.catalog.read(|c| sql::running_under(c, &id, &end.lease)).unwrap_or(false) {
        return rec;
    }
    let applied = engine.store.catalog.write(|tx| {
        if !sql::running_under(tx, &id, &end.lease)? {
            return Ok(false);
        }
        let progress = end.last.map(|l| l.progress(end.checkpoint.as_deref()));
        let end_of_run = (end.status, end.error.as_ref(), None);
        write_run(tx, &id, &end.logs, &end.metrics, progress.as_ref(), Some(end_of_run), &end.at)?;
        Ok(true)
    });
    match applied {
        Ok(true) => {
            let _ = std::fs::remove_file(&path);
            match engine.store.catalog.read(|c| sql::get(c, &id)) {
                Ok(r) => effective(r, false),
                Err(_) => end.overlay(rec),
            }
        }
        Ok(false) => rec,
        Err(_) => end.overlay(rec),
    }
}

/// Records the ends kept in failure.json by runs of `ids` (when the home is opened).
pub(crate) fn settle_kept(engine: &TrainingEngine, ids: &std::collections::HashSet<String>) {
    for id in ids {
        let id = JobId(id.clone());
        if !engine.job_dir(&id).join(FAILURE_FILE).is_file() {
            continue;
        }
        if let Ok(rec) = engine.store.catalog.read(|c| sql::get(c, &id.0)) {
            let active = is_active(&id);
            settle(engine, effective(rec, active), active);
        }
    }
}

/// The catalog error of a failpoint in a catalog write (as SQLite reports a full disk).
fn storage_failure(e: std::io::Error) -> Error {
    Error::Storage(StorageError(format!("disk I/O error: {e}")))
}

/// The writes of a runner, in one transaction the caller opened and checked the lease
/// of: buffered logs and metrics, `progress`, and the final status when the run `end`s.
/// Failpoint `catalog.job_end` (the write of an end).
fn write_run(
    tx: &crate::catalog::Conn,
    id: &str,
    logs: &[JobLog],
    metrics: &[MetricPoint],
    progress: Option<&Progress<'_>>,
    end: Option<(JobStatus, Option<&ErrorInfo>, Option<&ModelId>)>,
    now: &str,
) -> Result<()> {
    sql::add_logs(tx, id, logs)?;
    sql::add_metrics(tx, id, metrics)?;
    if let Some(p) = progress {
        sql::update_progress(tx, id, p, now_ms(), now)?;
    }
    match end {
        Some((status, error, model)) => {
            util::failpoint("catalog.job_end").map_err(storage_failure)?;
            sql::finish(tx, id, status, error, model.map(|m| m.as_str()), now)
        }
        None => Ok(()),
    }
}

/// Refreshes the job's heartbeat from a side thread (even during long steps) until dropped.
struct Heartbeat {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Heartbeat {
    fn start(engine: &TrainingEngine, id: &JobId, lease: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (engine, id, lease, flag) = (engine.clone(), id.0.clone(), lease.to_string(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("anneal-heartbeat".into())
            .spawn(move || {
                while !flag.load(Ordering::SeqCst) {
                    std::thread::park_timeout(HEARTBEAT_INTERVAL);
                    if flag.load(Ordering::SeqCst) {
                        break;
                    }
                    let _ = engine.store.catalog.write(|tx| sql::heartbeat(tx, &id, &lease, now_ms()));
                }
            })
            .ok();
        Heartbeat { stop, thread }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

struct Run<'a> {
    engine: &'a TrainingEngine,
    job: JobRecord,
    /// This run's hold on the job: every write checks it.
    lease: String,
    sink: &'a mut dyn EventSink,
    last_write: Option<Instant>,
    logs: Vec<JobLog>,
    metrics: Vec<MetricPoint>,
    checkpoint_rel: Option<String>,
    /// The latest validation image (absolute path), for step events and the job row.
    image: Option<PathBuf>,
    /// The state after the last step: written on finish even if the throttle skipped it.
    last: Option<LastStep>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct LastStep {
    progress: f64,
    epoch: u32,
    step: u64,
    total: u64,
    tokens: u64,
    loss: Option<f64>,
    eval_loss: Option<f64>,
}

impl LastStep {
    /// The catalog's progress row for this step.
    fn progress<'a>(&self, checkpoint: Option<&'a str>) -> Progress<'a> {
        Progress {
            progress: self.progress,
            epoch: self.epoch,
            step: self.step,
            total_steps: self.total,
            tokens: self.tokens,
            loss: self.loss,
            eval_loss: self.eval_loss,
            lr: None,
            tokens_per_sec: None,
            sample: None,
            checkpoint,
            image: None,
        }
    }
}

impl Run<'_> {
    fn emit(&mut self, e: Event) -> Result<()> {
        self.sink.on_event(&e)
    }

    fn push_log(&mut self, level: &str, message: String) {
        self.logs.push(JobLog { at: util::now(), level: level.into(), message });
    }

    fn log(&mut self, level: &str, message: String) -> Result<()> {
        self.push_log(level, message.clone());
        self.emit(Event::Log { job_id: self.job.id.0.clone(), level: level.into(), message })
    }

    fn write_due(&self) -> bool {
        self.last_write.is_none_or(|t| t.elapsed() >= CATALOG_WRITE_INTERVAL)
    }

    /// Writes live progress, buffered logs and metrics (one transaction).
    fn write_live(&mut self, p: &Progress<'_>) -> Result<()> {
        self.flush(Some(p), None)?;
        self.last_write = Some(Instant::now());
        Ok(())
    }

    /// Writes the end of the run: buffered logs and metrics, the last progress of a run
    /// that did not complete, and the final status (one transaction). A catalog that
    /// refuses the write (a full disk under it) is retried with backoff; if it still
    /// refuses, the end of a run that did not complete is kept in `jobs/<id>/failure.json`
    /// for the next open of the home (or read of the job) to record. Never fails: the
    /// caller gets the run's own outcome, and the sink a log line about the recording.
    fn record_end(&mut self, status: JobStatus, error: Option<&ErrorInfo>, model: Option<&ModelId>) {
        if let Some(e) = error {
            self.push_log("error", e.message.clone());
        }
        let ck = self.checkpoint_rel.clone();
        let last = self.last.filter(|_| status != JobStatus::Completed);
        let mut retries = END_RETRIES.iter();
        let failure = loop {
            let progress = last.map(|l| l.progress(ck.as_deref()));
            match self.flush(progress.as_ref(), Some((status, error, model))) {
                Ok(()) => return,
                Err(e) if e.kind() == ErrorKind::Storage => match retries.next() {
                    Some(wait) => std::thread::sleep(*wait),
                    None => break e,
                },
                Err(e) => break e,
            }
        };
        // A runner that lost its job records nothing; a completed one is recorded already.
        if matches!(failure, Error::InUse { .. }) {
            return;
        }
        let message = if status == JobStatus::Completed {
            format!("the last log lines of this run could not be written to the catalog: {failure}")
        } else {
            match self.keep_end(status, error, last, &failure) {
                Ok(path) => format!(
                    "the end of this run could not be written to the catalog ({failure}); it is kept in {} and \
                     recorded when the home is next opened or the job read",
                    path.display()
                ),
                Err(e) => format!(
                    "the end of this run could not be written to the catalog ({failure}) nor kept in a file ({e}); \
                     the job will read as interrupted"
                ),
            }
        };
        let _ = self.emit(Event::Log { job_id: self.job.id.0.clone(), level: "error".into(), message });
    }

    /// Writes failure.json (atomically) with the end of the run and its unwritten logs
    /// and metrics.
    fn keep_end(
        &mut self,
        status: JobStatus,
        error: Option<&ErrorInfo>,
        last: Option<LastStep>,
        failure: &Error,
    ) -> Result<PathBuf> {
        let dir = self.engine.job_dir(&self.job.id);
        std::fs::create_dir_all(&dir).with_path(&dir)?;
        let path = dir.join(FAILURE_FILE);
        self.push_log(
            "warn",
            format!(
                "the end of this run could not be written to the catalog ({failure}); recorded from {FAILURE_FILE}"
            ),
        );
        let end = KeptEnd {
            lease: self.lease.clone(),
            status,
            error: error.cloned(),
            at: util::now(),
            last,
            checkpoint: self.checkpoint_rel.clone(),
            logs: std::mem::take(&mut self.logs),
            metrics: std::mem::take(&mut self.metrics),
        };
        let bytes = serde_json::to_vec_pretty(&end).map_err(|e| Error::Internal(e.to_string()))?;
        util::write_atomic(&path, &bytes)?;
        Ok(path)
    }

    /// One transaction under the run's lease: buffered logs and metrics, `progress`,
    /// and the final status when the run `end`s. The logs and metrics stay buffered
    /// when the write fails.
    fn flush(
        &mut self,
        progress: Option<&Progress<'_>>,
        end: Option<(JobStatus, Option<&ErrorInfo>, Option<&ModelId>)>,
    ) -> Result<()> {
        let id = self.job.id.0.clone();
        let logs = std::mem::take(&mut self.logs);
        let metrics = std::mem::take(&mut self.metrics);
        let now = util::now();
        let lease = &self.lease;
        let written = self.engine.store.catalog.write(|tx| {
            sql::check_lease(tx, &id, lease)?;
            write_run(tx, &id, &logs, &metrics, progress, end, &now)
        });
        if written.is_err() {
            self.logs = logs;
            self.metrics = metrics;
        }
        written
    }

    fn check_cancel(&self, cancel: &CancelToken) -> Result<bool> {
        Ok(cancel.is_cancelled() || self.engine.store.catalog.read(|c| sql::cancel_requested(c, &self.job.id.0))?)
    }

    /// The base model and what trains on it, with its data prepared (from the
    /// checkpoint's weights when resuming).
    fn load_trainee(&self, checkpoint: Option<&Path>, cancel: &CancelToken) -> Result<(ModelRecord, Box<dyn Trainee>)> {
        let spec = &self.job.spec;
        let base_id = self.job.base_model_id.clone().ok_or_else(|| Error::NotFound {
            what: "model",
            id: format!("{} (the job's base model was deleted)", spec.base),
        })?;
        let base = self.engine.registry().get(&base_id).map_err(|e| match e {
            Error::NotFound { .. } => Error::NotFound { what: "model", id: format!("{base_id} (base model deleted)") },
            o => o,
        })?;
        // Again in this process: its home may have a lower memory limit than the creator's.
        super::check_fits(spec, &base, &[], self.engine.store.memory_limit)?;
        let store = self.engine.datasets();
        let ds_id = self.job.dataset_id.clone().ok_or_else(|| Error::NotFound {
            what: "dataset",
            id: format!("{} (the job's dataset was deleted)", spec.dataset),
        })?;
        let ds = store.get(ds_id)?;
        let read = |path: &std::path::Path| -> Result<Vec<Value>> {
            let mut v = Vec::new();
            for_each_record(path, |r| {
                v.push(r);
                Ok(true)
            })?;
            Ok(v)
        };
        let records = read(&ds.path)?;
        let (train_recs, eval_recs, eval_ds) = match (spec.eval_fraction, &self.job.eval_dataset_id) {
            (Some(f), _) => {
                let mask = data::eval_mask(records.len(), f, spec.seed)?;
                let (mut t, mut e) = (Vec::new(), Vec::new());
                for (r, is_eval) in records.into_iter().zip(mask) {
                    if is_eval {
                        e.push(r)
                    } else {
                        t.push(r)
                    }
                }
                (t, e, ds.clone())
            }
            (None, Some(eid)) => {
                let eds = store.get(eid.clone())?;
                let e = read(&eds.path)?;
                (records, e, eds)
            }
            (None, None) => (records, Vec::new(), ds.clone()),
        };
        let trainee: Box<dyn Trainee> = match base.family {
            Family::Tabular => {
                return Err(Error::config("base", format!("{} is a tabular classifier, not a base", base.reference())))
            }
            Family::StableDiffusion => Box::new(super::diffusion::DiffusionTrainee::load(
                spec,
                &base,
                (&ds, &train_recs),
                (&eval_ds, &eval_recs),
                checkpoint,
                &super::diffusion::RunEnv {
                    job_dir: &self.engine.job_dir(&self.job.id),
                    datasets: &store,
                    cancel,
                    memory_limit: self.engine.store.memory_limit,
                },
            )?),
            Family::Gpt2 | Family::Llama => {
                // The weights to start from: the checkpoint when resuming, else the
                // adapter a continued LoRA run starts from.
                let init = self.engine.init_adapter(spec, &base)?;
                Box::new(LmTrainee::load(
                    spec,
                    &base,
                    (ds.format, &train_recs, &Location::file(&ds.path)),
                    (eval_ds.format, &eval_recs, &Location::file(&ds.path)),
                    checkpoint.or(init.as_ref().map(|a| a.path.as_path())),
                )?)
            }
        };
        Ok((base, trainee))
    }

    fn train(&mut self, cancel: &CancelToken, resume: bool) -> Result<TrainReport> {
        if let crate::types::Method::Classifier(cfg) = &self.job.spec.method {
            let cfg = cfg.clone();
            return self.train_classifier(&cfg, cancel);
        }
        let mut sess = self.prepare(resume, cancel)?;
        let mut stopped_early = false;
        'epochs: while sess.s.step < sess.total {
            let batches = sess.model.epoch_batches(sess.spec.seed, sess.s.epoch, sess.spec.batch_size);
            while (sess.s.batch_in_epoch as usize) < batches.len() && sess.s.step < sess.total {
                if self.check_cancel(cancel)? {
                    self.save_checkpoint(&mut sess)?;
                    self.log("info", format!("cancelled at step {}", sess.s.step))?;
                    let ck = self.checkpoint_rel.clone();
                    self.write_live(&snapshot(&sess.s, sess.total, ck.as_deref()))?;
                    return Err(Error::Cancelled);
                }
                let from = sess.s.batch_in_epoch as usize;
                let to = (from + sess.spec.grad_accum).min(batches.len());
                let done = optimiser_step(&mut sess, &batches[from..to])?;
                if sess.model.render_due(sess.s.step, sess.total) {
                    self.render(&mut sess, cancel)?;
                }
                sess.s.batch_in_epoch = to as u64;
                if self.after_step(&mut sess, &done, batches[from][0])? {
                    stopped_early = true;
                    break 'epochs;
                }
            }
            if sess.s.batch_in_epoch as usize >= batches.len() {
                sess.s.epoch += 1;
                sess.s.batch_in_epoch = 0;
            }
        }
        self.finish_run(sess, stopped_early)
    }

    /// Loads the inputs, the model (from the last checkpoint when resuming) and the
    /// optimiser; emits `job_started` (also when loading fails) and the first log line.
    fn prepare(&mut self, resume: bool, cancel: &CancelToken) -> Result<Session> {
        let spec = self.job.spec.clone();
        let job_dir = self.engine.job_dir(&self.job.id);
        let ckpt = if resume { checkpoint::list(&job_dir).pop() } else { None };
        let loaded = ckpt.as_ref().map(|(_, p)| checkpoint::read_state(p)).transpose().and_then(|state| {
            let (base, model) = self.load_trainee(ckpt.as_ref().map(|(_, p)| p.as_path()), cancel)?;
            Ok((state, base, model))
        });
        let (state, base, model) = match loaded {
            Ok(l) => l,
            Err(e) => {
                // job_started is emitted before any failure, so the contract holds.
                self.emit(Event::JobStarted { job_id: self.job.id.0.clone(), total_steps: 0, epochs: spec.epochs })?;
                return Err(e);
            }
        };
        let mut opt = AdamW::new(
            model.named_trainable_vars(),
            spec.adam_beta1,
            spec.adam_beta2,
            spec.adam_eps,
            spec.weight_decay,
        )?;
        if let (Some((_, p)), Some(st)) = (&ckpt, &state) {
            checkpoint::load_optimizer(p, &mut opt, st.optimizer_step)?;
            self.checkpoint_rel = Some(rel(&self.engine.store.root, p));
        }
        let (total, epochs) = plan(&spec, model.epoch_batches(spec.seed, 0, spec.batch_size).len())?;
        let s = state.unwrap_or_else(|| TrainerState::start(&spec));
        self.emit(Event::JobStarted { job_id: self.job.id.0.clone(), total_steps: total, epochs })?;
        let what = match &ckpt {
            Some((step, _)) => format!("resuming at step {step}"),
            None if resume => "resuming from the start (no checkpoint)".to_string(),
            None => "starting".to_string(),
        };
        self.log(
            "info",
            format!(
                "{what}: {} {} on {} {unit} ({} eval), {} trainable parameters, {total} steps",
                spec.method.as_str(),
                base.reference(),
                model.num_train(),
                model.num_eval(),
                model.num_trainable_params(),
                unit = model.unit(),
            ),
        )?;
        self.write_live(&snapshot(&s, total, None))?;
        Ok(Session {
            elapsed_before: s.elapsed_s,
            started: Instant::now(),
            spec,
            job_dir,
            base,
            model,
            opt,
            total,
            s,
            last_eval_step: None,
        })
    }

    /// Reports a finished step: the `step` event, its metrics point, evaluation and
    /// checkpoint when due, the live state in the catalog. Returns whether early
    /// stopping triggered.
    fn after_step(&mut self, sess: &mut Session, done: &StepDone, first_example: usize) -> Result<bool> {
        let (s, total) = (&sess.s, sess.total);
        let due = self.write_due() || s.step == total;
        let sample = if due { sess.model.sample(first_example) } else { None };
        let progress = snapshot(s, total, None).progress;
        self.emit(Event::Step {
            job_id: self.job.id.0.clone(),
            epoch: s.epoch + 1,
            step: s.step,
            total_steps: total,
            loss: done.loss,
            lr: done.lr,
            tokens_per_sec: done.tokens_per_sec,
            progress,
            sample: sample.clone(),
            image: self.image.as_ref().map(|p| p.display().to_string()),
        })?;
        self.last = Some(LastStep {
            progress,
            epoch: s.epoch + 1,
            step: s.step,
            total,
            tokens: s.tokens,
            loss: s.loss,
            eval_loss: s.eval_loss,
        });
        self.metrics.push(MetricPoint {
            kind: MetricKind::Train,
            step: s.step,
            epoch: s.epoch + 1,
            loss: done.loss,
            lr: Some(done.lr),
            tokens_per_sec: Some(done.tokens_per_sec),
            at: util::now(),
        });
        let (mut force, mut stop) = (false, false);
        if sess.model.num_eval() > 0 && sess.spec.eval_every.is_some_and(|k| sess.s.step.is_multiple_of(k)) {
            sess.last_eval_step = Some(sess.s.step);
            force = true;
            stop = self.run_eval(sess)?;
        }
        if sess.spec.checkpoint_every.is_some_and(|k| sess.s.step.is_multiple_of(k)) && sess.s.step < total {
            self.save_checkpoint(sess)?;
            force = true;
        }
        if due || force {
            let ck = self.checkpoint_rel.clone();
            self.write_live(&Progress {
                lr: Some(done.lr),
                tokens_per_sec: Some(done.tokens_per_sec),
                sample: sample.as_deref(),
                ..snapshot(&sess.s, total, ck.as_deref())
            })?;
        }
        Ok(stop)
    }

    /// The last evaluation, then the trained weights registered with their lineage.
    fn finish_run(&mut self, mut sess: Session, stopped_early: bool) -> Result<TrainReport> {
        if stopped_early {
            let why = format!(
                "early stopping at step {}: eval loss did not improve for {} evaluations",
                sess.s.step, sess.s.evals_without_improvement
            );
            self.log("info", why)?;
        } else if sess.model.num_eval() > 0 && sess.last_eval_step != Some(sess.s.step) {
            self.run_eval(&mut sess)?;
        }
        let Session { spec, base, model, s, started, elapsed_before, total, .. } = sess;
        let job_id = self.job.id.clone();
        let registry = self.engine.registry();
        let mut staging = StagingDir::new(&registry.staging_root())?;
        model.save_output(staging.path())?;
        let name = match &spec.output_name {
            Some(n) => n.clone(),
            None => default_name(&base.name, spec.method.as_str(), &job_id),
        };
        let duration_s = elapsed_before + started.elapsed().as_secs_f64();
        let lineage = Lineage {
            base: Some(base.id.clone()),
            base_ref: Some(base.reference()),
            dataset: self.job.dataset_id.clone(),
            eval_dataset: self.job.eval_dataset_id.clone(),
            job: Some(job_id.clone()),
            spec: Some(spec.clone()),
            metrics: Some(TrainMetrics {
                final_loss: s.loss,
                eval_loss: s.eval_loss,
                best_eval_loss: s.best_eval_loss,
                steps: s.step,
                tokens: s.tokens,
                duration_s,
                ..Default::default()
            }),
            ..Default::default()
        };
        let complete = |tx: &crate::catalog::Conn, rec: &ModelRecord| {
            sql::check_lease(tx, &job_id.0, &self.lease)?;
            sql::finish(tx, &job_id.0, JobStatus::Completed, None, Some(rec.id.as_str()), &util::now())?;
            util::failpoint("register.before_commit").map_err(storage_failure)
        };
        let rec =
            registry.register_trained(&mut staging, &name, &base, format!("job:{}", job_id.0), lineage, &complete)?;
        // Only `abort` means something here: the run is complete whatever follows.
        let _ = util::failpoint("register.after_commit");
        // The job is complete from here on (same transaction as the registration): what
        // follows is reporting, and its failure must not turn the job back into one to rerun.
        let _ = self.log("info", format!("registered {} ({}) as {}", rec.reference(), rec.kind.as_str(), rec.id));
        let ck = self.checkpoint_rel.clone();
        let last = Progress { progress: 1.0, epoch: s.epoch.max(1), ..snapshot(&s, total, ck.as_deref()) };
        let _ = self.write_live(&last);
        Ok(TrainReport {
            job_id,
            model: rec.id.clone(),
            model_id: rec.id,
            final_loss: s.loss.unwrap_or(f64::NAN),
            eval_loss: s.eval_loss,
            steps: s.step,
            tokens: s.tokens,
            duration_s,
        })
    }

    /// Renders the trainee's validation output for the current step (image models:
    /// the validation prompts with a fixed seed) and points the job row at it.
    fn render(&mut self, sess: &mut Session, cancel: &CancelToken) -> Result<()> {
        let step = sess.s.step;
        let Some(path) = sess.model.render(step, &sess.job_dir.join("samples"), cancel)? else { return Ok(()) };
        let image = rel(&self.engine.store.root, &path);
        self.log("info", format!("validation image at step {step}: {image}"))?;
        let ck = self.checkpoint_rel.clone();
        self.write_live(&Progress { image: Some(&image), ..snapshot(&sess.s, sess.total, ck.as_deref()) })?;
        self.image = Some(path);
        Ok(())
    }

    /// Evaluates, emits `eval`, and returns whether early stopping triggers.
    fn run_eval(&mut self, sess: &mut Session) -> Result<bool> {
        let loss = sess.model.eval_loss(sess.spec.batch_size)?;
        if !loss.is_finite() {
            return Err(Error::Compute(format!("eval loss is {loss}: training diverged (try a lower learning_rate)")));
        }
        let s = &mut sess.s;
        s.eval_loss = Some(loss);
        if s.best_eval_loss.is_none_or(|b| loss < b) {
            s.best_eval_loss = Some(loss);
            s.evals_without_improvement = 0;
        } else {
            s.evals_without_improvement += 1;
        }
        let mut metrics = BTreeMap::new();
        metrics.insert("eval_loss".to_string(), loss);
        metrics.insert("eval_perplexity".to_string(), loss.exp());
        self.metrics.push(MetricPoint {
            kind: MetricKind::Eval,
            step: s.step,
            epoch: s.epoch + 1,
            loss,
            lr: None,
            tokens_per_sec: None,
            at: util::now(),
        });
        let (step, patience) = (s.step, s.evals_without_improvement);
        self.emit(Event::Eval { job_id: self.job.id.0.clone(), step, metrics })?;
        Ok(sess.spec.early_stopping_patience.is_some_and(|p| patience >= p))
    }

    /// Writes a checkpoint of the session (weights, optimiser, counters) and emits
    /// `checkpoint`. Nothing to save before the first step.
    fn save_checkpoint(&mut self, sess: &mut Session) -> Result<()> {
        if sess.s.step == 0 {
            return Ok(());
        }
        sess.s.elapsed_s = sess.elapsed_before + sess.started.elapsed().as_secs_f64();
        let model = &sess.model;
        let save = |dir: &Path| model.save_checkpoint(dir);
        let path = checkpoint::write(&sess.job_dir, &save, &sess.opt, &sess.s, sess.spec.keep_last_checkpoints)?;
        self.checkpoint_rel = Some(rel(&self.engine.store.root, &path));
        self.emit(Event::Checkpoint {
            job_id: self.job.id.0.clone(),
            step: sess.s.step,
            path: path.display().to_string(),
        })
    }
}

/// Everything a run works with once prepared.
struct Session {
    spec: TrainSpec,
    job_dir: PathBuf,
    base: ModelRecord,
    model: Box<dyn Trainee>,
    opt: AdamW,
    /// Optimiser steps of the whole run.
    total: u64,
    /// Counters, data position and metrics (what a checkpoint saves).
    s: TrainerState,
    /// When this process started the run, and the time spent by earlier runs of it.
    started: Instant,
    elapsed_before: f64,
    last_eval_step: Option<u64>,
}

/// What one optimiser step did.
struct StepDone {
    loss: f64,
    lr: f64,
    tokens_per_sec: f64,
}

/// Total optimiser steps and epochs of a run whose epochs have `batches` micro-batches.
fn plan(spec: &TrainSpec, batches: usize) -> Result<(u64, u32)> {
    let batches = batches as u64;
    let steps_per_epoch = batches.div_ceil(spec.grad_accum as u64);
    let total = match spec.max_steps {
        Some(m) => m,
        None => u64::from(spec.epochs).checked_mul(steps_per_epoch).ok_or_else(|| {
            Error::config("epochs", format!("{} epochs of {steps_per_epoch} steps is too many", spec.epochs))
        })?,
    };
    let epochs = match spec.max_steps {
        Some(m) => u32::try_from(m.div_ceil(steps_per_epoch.max(1)))
            .map_err(|_| Error::config("max_steps", format!("{m} steps would take more than 2^32 epochs")))?,
        None => spec.epochs,
    };
    Ok((total, epochs))
}

/// One optimiser step over the micro-batches `micro` (gradient accumulation,
/// clipping, the learning-rate schedule). Diverging losses or gradients stop the run.
fn optimiser_step(sess: &mut Session, micro: &[Vec<usize>]) -> Result<StepDone> {
    util::on_compute_pool(|| optimiser_step_here(sess, micro))
}

fn optimiser_step_here(sess: &mut Session, micro: &[Vec<usize>]) -> Result<StepDone> {
    let t0 = Instant::now();
    let step = sess.s.step + 1;
    let diverged = |what: &str, v: f64| {
        Error::Compute(format!("{what} is {v} at step {step}: training diverged (try a lower learning_rate)"))
    };
    let mut grads: Vec<Option<Tensor>> = vec![None; sess.opt.params().len()];
    let (mut loss_sum, mut toks) = (0f64, 0usize);
    for (i, mb) in micro.iter().enumerate() {
        let (lv, real, gs) = sess.model.loss_and_backward(mb, step, i, 1.0 / micro.len() as f64)?;
        if !lv.is_finite() {
            return Err(diverged("loss", lv));
        }
        loss_sum += lv;
        toks += real;
        for (slot, (_, var)) in grads.iter_mut().zip(sess.opt.params()) {
            if let Some(g) = gs.get(var) {
                *slot = Some(match slot.take() {
                    Some(acc) => (acc + g)?,
                    None => g.clone(),
                });
            }
        }
    }
    let norm = clip_grad_norm(&mut grads, sess.spec.max_grad_norm)?;
    if !norm.is_finite() {
        return Err(diverged("gradient norm", norm));
    }
    let spec = &sess.spec;
    let lr = lr_at(spec.schedule, spec.learning_rate, spec.warmup_steps, sess.total, sess.s.step);
    sess.opt.step(&grads, lr)?;
    let s = &mut sess.s;
    s.step = step;
    s.tokens += toks as u64;
    s.optimizer_step = sess.opt.t;
    let loss = loss_sum / micro.len() as f64;
    s.loss = Some(loss);
    Ok(StepDone { loss, lr, tokens_per_sec: toks as f64 / t0.elapsed().as_secs_f64().max(1e-9) })
}

fn rel(root: &Path, p: &Path) -> String {
    p.strip_prefix(root).unwrap_or(p).display().to_string()
}

/// `<base>-<method>-<yyyymmdd-hhmmss>-<job8>`.
fn default_name(base: &str, method: &str, job: &JobId) -> String {
    let ts: String = util::now().chars().filter(|c| c.is_ascii_digit()).take(14).collect();
    let (date, time) = ts.split_at(ts.len().min(8));
    let short: String = job.0.trim_start_matches("job_").chars().take(8).collect();
    let base = base.replace('/', "-");
    format!("{base}-{method}-{date}-{time}-{short}")
}

/// The live state of `s` for the catalog (no per-step figures: callers add them).
fn snapshot<'a>(s: &TrainerState, total: u64, checkpoint: Option<&'a str>) -> Progress<'a> {
    Progress {
        progress: s.step as f64 / total.max(1) as f64,
        epoch: s.epoch + 1,
        step: s.step,
        total_steps: total,
        tokens: s.tokens,
        loss: s.loss,
        eval_loss: s.eval_loss,
        lr: None,
        tokens_per_sec: None,
        sample: None,
        checkpoint,
        image: None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_plan_never_truncates() {
        let spec = TrainSpec { batch_size: 2, grad_accum: 1, epochs: 3, ..Default::default() };
        // 5 examples in batches of 2: 3 micro-batches an epoch.
        assert_eq!(plan(&spec, 3).unwrap(), (9, 3));
        let spec = TrainSpec { max_steps: Some(7), ..spec };
        assert_eq!(plan(&spec, 3).unwrap(), (7, 3));
        // More epochs than a u32 holds: an error naming the field, not a wrapped count.
        let spec = TrainSpec { max_steps: Some(1 << 40), batch_size: 1, ..spec };
        assert!(plan(&spec, 1).unwrap_err().to_string().contains("max_steps"));
        let spec = TrainSpec { max_steps: None, epochs: u32::MAX, batch_size: 1, ..spec };
        assert_eq!(plan(&spec, 1).unwrap().0, u64::from(u32::MAX));
    }
}
