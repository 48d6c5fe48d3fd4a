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
mod curves;
mod data;
mod diffusion;
mod optim;
mod runner;
mod trainee;

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use optim::AdamW;

use crate::catalog::jobs as sql;
use crate::data::DatasetStore;
use crate::error::{Error, Result};
use crate::events::{CancelToken, EventSink};
use crate::models::memory;
use crate::models::ModelConfig;
use crate::plot;
use crate::registry::ModelRegistry;
use crate::store::Store;
use crate::types::{
    DatasetFormat, DatasetId, Event, Family, IfExists, JobFilter, JobId, JobLog, JobRecord, JobStatus, LoraConfig,
    Method, MetricPoint, MixedPrecision, ModelKind, ModelRecord, PlotOptions, TrainReport, TrainSpec,
    HEARTBEAT_STALE_SECS,
};
use crate::util;

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

/// Under `rec.spec.if_exists`: the job `create_job` returns instead of storing `rec`
/// (`reuse`), or `already_exists` (`error`). See [`TrainingEngine::create_job`].
fn same_job(tx: &crate::catalog::Conn, home: &std::path::Path, rec: &JobRecord) -> Result<Option<JobRecord>> {
    let if_exists = rec.spec.if_exists;
    if if_exists == IfExists::NewVersion {
        return Ok(None);
    }
    // Compared as stored: through JSON, without `if_exists`.
    let comparable = |spec: &TrainSpec| -> Result<TrainSpec> {
        let spec = TrainSpec { if_exists: IfExists::NewVersion, ..spec.clone() };
        let json = serde_json::to_string(&spec).map_err(|e| Error::Internal(format!("spec: {e}")))?;
        serde_json::from_str(&json).map_err(|e| Error::Internal(format!("spec: {e}")))
    };
    let want = comparable(&rec.spec)?;
    let mut found = None;
    for job in sql::list(tx, &JobFilter::default())?.into_iter().rev() {
        let same_inputs = job.base_model_id == rec.base_model_id
            && job.dataset_id == rec.dataset_id
            && job.eval_dataset_id == rec.eval_dataset_id;
        let usable = match job.status {
            JobStatus::Failed => false,
            JobStatus::Completed => match &job.output_model_id {
                Some(m) => crate::catalog::models::exists(tx, &m.0)?,
                None => false,
            },
            _ => true,
        };
        if same_inputs && usable && comparable(&job.spec)? == want {
            found = Some(job);
            break;
        }
    }
    if if_exists == IfExists::Reuse {
        return Ok(found);
    }
    if let Some(job) = found {
        return Err(Error::AlreadyExists {
            what: "job",
            id: job.id.0.clone(),
            detail: format!(
                " with the same spec ({}); if_exists \"reuse\" returns it, \"new_version\" trains again",
                job.status
            ),
        });
    }
    if let Some(name) = &rec.spec.output_name {
        let filter = crate::types::ModelFilter { name: Some(name.clone()), ..Default::default() };
        if !crate::catalog::models::list(tx, home, &filter)?.is_empty() {
            return Err(Error::AlreadyExists {
                what: "model",
                id: name.clone(),
                detail: " (output_name); if_exists \"new_version\" adds a version".into(),
            });
        }
    }
    Ok(None)
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
    store: Arc<Store>,
}

impl TrainingEngine {
    pub(crate) fn new(store: Arc<Store>) -> Self {
        Self { store }
    }

    pub(crate) fn registry(&self) -> ModelRegistry {
        ModelRegistry::new(self.store.clone())
    }

    pub(crate) fn datasets(&self) -> DatasetStore {
        DatasetStore::new(self.store.clone())
    }

    pub(crate) fn job_dir(&self, id: &JobId) -> PathBuf {
        self.store.root.join("jobs").join(&id.0)
    }

    /// Records the ends that runs kept in `jobs/<id>/failure.json` (the catalog refused
    /// them), then removes leftovers older than `min_age`: folders of jobs no row refers
    /// to, and interrupted writes (`.tmp-*`) of the others: in the job folder, its
    /// checkpoints, its DreamBooth class images and its validation images.
    pub(crate) fn sweep(&self, min_age: Duration) -> Result<()> {
        let known: std::collections::HashSet<String> = self.store.catalog.read(sql::all_ids)?.into_iter().collect();
        runner::settle_kept(self, &known);
        let jobs = self.store.root.join("jobs");
        util::sweep(&jobs, min_age, |name| name.starts_with("job_") && !known.contains(name));
        for id in &known {
            util::sweep(&jobs.join(id), min_age, |_| false);
            for sub in ["checkpoints", "class_images", "samples"] {
                util::sweep(&jobs.join(id).join(sub), min_age, |_| false);
            }
        }
        Ok(())
    }

    /// Validates `spec`, resolves its base model and datasets, and stores a pending job.
    ///
    /// `spec.if_exists` decides what happens when a job with the same spec (every field
    /// but `if_exists` equal) on the same base and datasets exists and did not fail (for
    /// a completed one: its model is still registered): `new_version` stores a new job
    /// anyway, `reuse` returns that job (in whatever state it is: [`TrainingEngine::complete`]
    /// then runs, resumes or reports it), `error` refuses with `already_exists`, as it does
    /// when `output_name` is already a model's name.
    pub fn create_job(&self, spec: &TrainSpec) -> Result<JobRecord> {
        spec.validate()?;
        let classifier = matches!(spec.method, Method::Classifier(_));
        let base = if classifier {
            None
        } else {
            Some(self.registry().resolve(&spec.base).map_err(|e| match e {
                Error::NotFound { .. } => Error::config("base", format!("model `{}` is not registered", spec.base)),
                o => o,
            })?)
        };
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
        let mut formats = vec![("dataset", dataset.format)];
        formats.extend(eval.as_ref().map(|e| ("eval_dataset", e.format)));
        if let (Some(base), Some(_)) = (&base, &spec.init_adapter) {
            self.init_adapter(spec, base)?;
        }
        if let Some(base) = base.as_ref().filter(|b| matches!(b.family, Family::StableDiffusion)) {
            if spec.mixed_precision != MixedPrecision::No {
                return Err(Error::config(
                    "mixed_precision",
                    format!(
                        "{} is a Stable Diffusion pipeline: mixed precision is for language models",
                        base.reference()
                    ),
                ));
            }
        }
        match &base {
            Some(base) => check_fits(spec, base, &formats, self.store.memory_limit)?,
            None => {
                for &(field, format) in &formats {
                    if format != DatasetFormat::Tabular {
                        return Err(Error::config(
                            field,
                            format!("is a {format} dataset: a classifier trains on a tabular dataset"),
                        ));
                    }
                }
            }
        }
        let now = util::now();
        let rec = JobRecord {
            id: JobId(util::new_id("job")),
            status: JobStatus::Pending,
            base_model_id: base.map(|b| b.id),
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
            image: None,
            created_at: now.clone(),
            updated_at: now,
            started_at: None,
            finished_at: None,
        };
        let found = self.store.catalog.write(|tx| {
            // Decided in the insert's transaction: concurrent calls end as sequential ones.
            let found = same_job(tx, &self.store.root, &rec)?;
            if found.is_none() {
                sql::insert(tx, &rec)?;
            }
            Ok(found)
        })?;
        match found {
            Some(job) => self.job(&job.id),
            None => Ok(rec),
        }
    }

    /// `create_job` + [`TrainingEngine::complete`]: with `if_exists: reuse`, running the
    /// same training twice trains once.
    pub fn train(&self, spec: &TrainSpec, sink: &mut dyn EventSink, cancel: &CancelToken) -> Result<TrainReport> {
        let job = self.create_job(spec)?;
        self.complete(&job.id, sink, cancel)
    }

    /// Brings a job to its report: runs it when pending, resumes it when cancelled,
    /// failed or interrupted, and returns the report of a completed one without
    /// training (no events). A job running elsewhere is `in_use`.
    pub fn complete(&self, id: &JobId, sink: &mut dyn EventSink, cancel: &CancelToken) -> Result<TrainReport> {
        let job = self.job(id)?;
        match job.status {
            JobStatus::Pending => self.run(id, sink, cancel),
            JobStatus::Completed => self.report(id),
            JobStatus::Running => Err(Error::InUse {
                what: "job",
                id: id.0.clone(),
                reason: "is running in another process or thread; wait for it, or cancel it".into(),
            }),
            JobStatus::Cancelled | JobStatus::Failed | JobStatus::Interrupted => self.resume(id, sink, cancel),
        }
    }

    /// The report of a completed job, from its row and its model's lineage.
    pub fn report(&self, id: impl Into<JobId>) -> Result<TrainReport> {
        let job = self.job(id)?;
        let model = match (job.status, &job.output_model_id) {
            (JobStatus::Completed, Some(m)) => self.registry().get(m)?,
            (status, _) => {
                return Err(Error::config(
                    "job",
                    format!("job {} is {status}: only a completed job has a report", job.id),
                ))
            }
        };
        let metrics = model.lineage.metrics.as_ref();
        Ok(TrainReport {
            job_id: job.id,
            model: model.id.clone(),
            model_id: model.id,
            final_loss: job.loss.or(metrics.and_then(|m| m.final_loss)).unwrap_or(f64::NAN),
            eval_loss: job.eval_loss.or(metrics.and_then(|m| m.eval_loss)),
            steps: job.step,
            tokens: job.tokens,
            duration_s: metrics.map_or(0.0, |m| m.duration_s),
        })
    }

    /// A run's error as the bindings report it: a cancel becomes
    /// [`Error::JobCancelled`] naming the job and how to resume it; others are unchanged.
    pub fn explain(&self, id: &JobId, err: Error) -> Error {
        match err {
            Error::Cancelled => Error::JobCancelled { job_id: id.0.clone(), hint: self.resume_hint(id) },
            other => other,
        }
    }

    /// How to continue a job that stopped before its end, for messages (the same call
    /// in the three languages): `job job_x stopped at step 12 of 40 with a checkpoint;
    /// continue it with home.training().resume('job_x')`.
    pub fn resume_hint(&self, id: &JobId) -> String {
        match self.job(id) {
            Ok(job) if job.status == JobStatus::Completed => format!(
                "job {id} completed before it could stop (model {})",
                job.output_model_id.map(|m| m.0).unwrap_or_default()
            ),
            Ok(job) => {
                let at = if job.total_steps > 0 {
                    format!(" at step {} of {}", job.step, job.total_steps)
                } else {
                    String::new()
                };
                let saved = if job.checkpoint.is_some() { " with a checkpoint" } else { "" };
                format!("job {id} stopped{at}{saved} ({}); continue it with home.training().resume('{id}')", job.status)
            }
            Err(_) => format!("job {id} stopped; continue it with home.training().resume('{id}')"),
        }
    }

    /// The adapter `spec.init_adapter` names: a LoRA adapter of `base` (its parent),
    /// on a language model. `invalid_config` naming `init_adapter` otherwise.
    pub(crate) fn init_adapter(&self, spec: &TrainSpec, base: &ModelRecord) -> Result<Option<ModelRecord>> {
        let Some(r) = &spec.init_adapter else { return Ok(None) };
        let a = self.registry().resolve(r).map_err(|e| match e {
            Error::NotFound { .. } => Error::config("init_adapter", format!("model `{r}` is not registered")),
            o => o,
        })?;
        if a.kind != ModelKind::Lora {
            return Err(Error::config(
                "init_adapter",
                format!("{} is a {} model, not a LoRA adapter", a.reference(), a.kind),
            ));
        }
        if a.parent_id.as_ref() != Some(&base.id) {
            return Err(Error::config(
                "init_adapter",
                format!("{} is not an adapter of the base {}", a.reference(), base.reference()),
            ));
        }
        if matches!(base.family, Family::StableDiffusion) {
            return Err(Error::config("init_adapter", "continuing an adapter is for language models"));
        }
        Ok(Some(a))
    }

    /// A job by id, with `interrupted` reported for a dead runner.
    pub fn job(&self, id: impl Into<JobId>) -> Result<JobRecord> {
        let id = id.into();
        let rec = self.store.catalog.read(|c| sql::get(c, &id.0))?;
        let active = runner::is_active(&id);
        Ok(runner::settle(self, effective(rec, active), active))
    }

    /// Jobs matching `filter`, oldest first.
    pub fn jobs(&self, filter: &JobFilter) -> Result<Vec<JobRecord>> {
        let all = self.store.catalog.read(|c| sql::list(c, filter))?;
        Ok(all
            .into_iter()
            .map(|r| {
                let active = runner::is_active(&r.id);
                runner::settle(self, effective(r, active), active)
            })
            .filter(|r| filter.status.is_none_or(|s| s == r.status))
            .collect())
    }

    /// The job's log lines, oldest first.
    pub fn logs(&self, id: impl Into<JobId>) -> Result<Vec<JobLog>> {
        let id = id.into();
        self.store.catalog.read(|c| {
            sql::get(c, &id.0)?;
            sql::logs(c, &id.0)
        })
    }

    /// The job's metrics time series (train steps and evals), by step.
    pub fn metrics(&self, id: impl Into<JobId>) -> Result<Vec<MetricPoint>> {
        let id = id.into();
        self.store.catalog.read(|c| {
            sql::get(c, &id.0)?;
            sql::metrics(c, &id.0)
        })
    }

    /// The job's loss curves as PNG bytes, from its metrics rows: training loss per
    /// step, eval loss at each evaluation, the learning rate below (see
    /// [`curves::loss_chart`]). Works while the job runs (what has been recorded so
    /// far) and on any finished job. An unknown job is `not_found`; a size too small for
    /// the chart is `invalid_config` naming `width` or `height`.
    pub fn plot(&self, id: impl Into<JobId>, opts: &PlotOptions) -> Result<Vec<u8>> {
        let id = id.into();
        let job = self.job(&id)?;
        let points = self.metrics(&id)?;
        plot::render_png(&curves::loss_chart(&job, &points, opts), opts.width, opts.height)
    }

    /// [`TrainingEngine::plot`] written to `path` atomically (a temporary file beside
    /// it, then a rename); returns the bytes written. An unwritable path is an `io`
    /// (or `file_not_found`) error naming it.
    pub fn plot_to(&self, id: impl Into<JobId>, path: impl AsRef<Path>, opts: &PlotOptions) -> Result<Vec<u8>> {
        let path = path.as_ref();
        util::check_path("path", path)?;
        let png = self.plot(id, opts)?;
        util::write_atomic(path, &png)?;
        Ok(png)
    }

    /// Asks a job to stop. Works from any process: the runner polls the flag every
    /// step, writes a checkpoint and ends `cancelled` (resumable). A pending job is
    /// cancelled at once.
    pub fn cancel(&self, id: impl Into<JobId>) -> Result<JobRecord> {
        let id = id.into();
        let now = util::now();
        self.store.catalog.write(|tx| {
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
        let shared =
            HandleShared { thread: Mutex::new(Some(thread)), outcome: Mutex::new(None), events: Mutex::new(rx) };
        Ok(JobHandle { job_id: id.clone(), cancel, shared: Arc::new(shared), engine: self.clone() })
    }
}

/// What `run` would find out late, checked when the job is created: the base is a
/// model (not an adapter), the data is text-like, `seq_len` fits the context, LoRA
/// targets name linear layers of the base with a rank no wider than they are, and the
/// run's estimated memory (weights, optimiser state, one batch's activations) fits
/// under the home's memory limit.
pub(crate) fn check_fits(
    spec: &TrainSpec,
    base: &ModelRecord,
    formats: &[(&str, DatasetFormat)],
    memory_limit: u64,
) -> Result<()> {
    if base.kind == ModelKind::Lora {
        return Err(Error::config(
            "base",
            format!("{} is a LoRA adapter: train its base model (or a merged copy) instead", base.reference()),
        ));
    }
    if base.kind == ModelKind::Classifier || base.family == Family::Tabular {
        return Err(Error::config(
            "base",
            format!("{} is a tabular classifier: it is not a base for fine-tuning", base.reference()),
        ));
    }
    if base.family == Family::StableDiffusion {
        return check_image_fits(spec, base, formats, memory_limit);
    }
    if spec.image.is_some() {
        return Err(Error::config(
            "image",
            format!("{} is a language model: image options apply to stable-diffusion bases", base.reference()),
        ));
    }
    for &(field, format) in formats {
        if matches!(format, DatasetFormat::Tabular | DatasetFormat::Image) {
            return Err(Error::config(
                field,
                format!(
                    "is a {format} dataset: a language model trains on text, completion, instruction or chat records"
                ),
            ));
        }
    }
    let cfg = ModelConfig::from_json(&base.config)?;
    if spec.seq_len > cfg.max_position_embeddings {
        return Err(Error::config(
            "seq_len",
            format!("{} exceeds the model's context ({} positions)", spec.seq_len, cfg.max_position_embeddings),
        ));
    }
    let lora_params = match &spec.method {
        Method::Lora(lora) => Some(check_lora_fits(lora, &cfg, base)?),
        Method::Full => None,
        Method::Classifier(_) => {
            return Err(Error::config("method", "a classifier has no base model: leave base empty"))
        }
    };
    memory::training(&cfg, spec.batch_size, spec.seq_len, lora_params).check(memory_limit)
}

/// [`check_fits`] for a Stable Diffusion base: image datasets, LoRA targets the UNet
/// has, a resolution the pipeline can train at.
fn check_image_fits(
    spec: &TrainSpec,
    base: &ModelRecord,
    formats: &[(&str, DatasetFormat)],
    memory_limit: u64,
) -> Result<()> {
    for &(field, format) in formats {
        if format != DatasetFormat::Image {
            return Err(Error::config(
                field,
                format!("is a {format} dataset: {} (Stable Diffusion) trains on an image dataset", base.reference()),
            ));
        }
    }
    let cfg = crate::diffusion::PipelineConfig::read(&base.path)?;
    let image = spec.image.clone().unwrap_or_default();
    let multiple = cfg.vae_scale_factor() * cfg.unet.downsample_factor();
    let res = match image.resolution {
        Some(r) => r,
        None => cfg.unet.sample_size.map_or(64, |s| s[0].max(s[1])) * cfg.vae_scale_factor(),
    };
    if res % multiple != 0 {
        return Err(Error::config(
            "image.resolution",
            format!("{res} is not a multiple of {multiple} (the VAE factor x the UNet's downsampling)"),
        ));
    }
    let widest = cfg.unet.block_out_channels.iter().copied().max().unwrap_or(0);
    let trainable = match &spec.method {
        Method::Lora(lora) => {
            if lora.fan_in_fan_out == Some(true) {
                return Err(Error::config("method.lora.fan_in_fan_out", "must be false for a Stable Diffusion UNet"));
            }
            if lora.r > widest {
                return Err(Error::config(
                    "method.lora.r",
                    format!(
                        "{} is wider than the UNet's widest block ({widest}); a rank beyond it adds nothing",
                        lora.r
                    ),
                ));
            }
            // Four projections of at most `widest` features per attention block: an
            // upper-ish bound for the adapter.
            let blocks = cfg.unet.block_out_channels.len() as u128 * 2 + 1;
            memory::lora_params(lora.r, std::iter::repeat_n((widest, widest), 4)).saturating_mul(blocks)
        }
        Method::Full => u128::from(base.params),
        Method::Classifier(_) => {
            return Err(Error::config("method", "a classifier has no base model: leave base empty"))
        }
    };
    let rows = if image.class_prompt.is_some() { 2 } else { 1 };
    // The text encoder's positions are not in the pipeline config: 77 (CLIP) bounds them.
    let text = (77, cfg.text_hidden_size);
    memory::diffusion_training(
        &cfg.unet,
        cfg.vae.as_ref(),
        text,
        (spec.batch_size, rows),
        res,
        (u128::from(base.params), trainable),
    )
    .check(memory_limit)
}

/// The LoRA half of [`check_fits`]; returns the adapter's parameter count.
fn check_lora_fits(lora: &LoraConfig, cfg: &ModelConfig, base: &ModelRecord) -> Result<u128> {
    let conv1d = cfg.family == Family::Gpt2;
    if lora.fan_in_fan_out.is_some_and(|f| f != conv1d) {
        return Err(Error::config(
            "method.lora.fan_in_fan_out",
            format!("must be {conv1d} for {} (its weights are stored that way)", cfg.family),
        ));
    }
    let targets = lora.targets_for(cfg.family);
    // The base's linear modules as its config implies them (register_dir checked the
    // tensors against it).
    let modules = cfg.linear_modules();
    let targeted: Vec<(usize, usize)> = modules
        .iter()
        .filter(|m| LoraConfig::matches(&targets, &m.name))
        .map(|m| (m.in_features, m.out_features))
        .collect();
    let Some(widest) = targeted.iter().map(|&(a, b)| a.max(b)).max() else {
        let names: std::collections::BTreeSet<&str> =
            modules.iter().map(|m| m.name.rsplit('.').next().unwrap_or(&m.name)).collect();
        return Err(Error::config(
            "method.lora.target_modules",
            format!(
                "no linear module of {} matches {targets:?} (its modules: {})",
                base.reference(),
                names.into_iter().collect::<Vec<_>>().join(", ")
            ),
        ));
    };
    if lora.r > widest {
        return Err(Error::config(
            "method.lora.r",
            format!("{} is wider than the widest targeted layer ({widest}); a rank beyond it adds nothing", lora.r),
        ));
    }
    Ok(memory::lora_params(lora.r, targeted))
}

/// Forwards events to a channel; a dropped receiver is not an error.
struct ChannelSink(mpsc::Sender<Event>);

impl EventSink for ChannelSink {
    fn on_event(&mut self, event: &Event) -> Result<()> {
        let _ = self.0.send(event.clone());
        Ok(())
    }
}

/// A job running on a background thread ([`TrainingEngine::spawn`]). Cheap to clone
/// and `Send + Sync`: any number of threads may wait on it, poll it and read its
/// events; every waiter gets the same report (or a copy of the same error).
#[derive(Clone)]
pub struct JobHandle {
    job_id: JobId,
    cancel: CancelToken,
    shared: Arc<HandleShared>,
    engine: TrainingEngine,
}

struct HandleShared {
    thread: Mutex<Option<JoinHandle<Result<TrainReport>>>>,
    outcome: Mutex<Option<Result<TrainReport>>>,
    events: Mutex<mpsc::Receiver<Event>>,
}

impl std::fmt::Debug for JobHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobHandle").field("job_id", &self.job_id).field("finished", &self.is_finished()).finish()
    }
}

fn poisoned() -> Error {
    Error::Internal("job handle lock poisoned by a panic".into())
}

impl JobHandle {
    pub fn job_id(&self) -> &JobId {
        &self.job_id
    }

    /// Asks the job to stop at the next step (it ends `cancelled`, resumable).
    pub fn cancel(&self) {
        self.cancel.cancel()
    }

    /// The job's loss curves so far as PNG bytes ([`TrainingEngine::plot`]).
    pub fn plot(&self, opts: &PlotOptions) -> Result<Vec<u8>> {
        self.engine.plot(&self.job_id, opts)
    }

    /// [`JobHandle::plot`] written to `path` ([`TrainingEngine::plot_to`]).
    pub fn plot_to(&self, path: impl AsRef<Path>, opts: &PlotOptions) -> Result<Vec<u8>> {
        self.engine.plot_to(&self.job_id, path, opts)
    }

    /// The next event, waiting at most `timeout`. `Ok(None)`: none yet (or, once
    /// [`JobHandle::is_finished`], none left). Events go to whichever caller takes
    /// them first; `job_finished` is the last one.
    pub fn next_event(&self, timeout: Duration) -> Result<Option<Event>> {
        let events = self.shared.events.lock().map_err(|_| poisoned())?;
        match events.recv_timeout(timeout) {
            Ok(e) => Ok(Some(e)),
            Err(mpsc::RecvTimeoutError::Timeout | mpsc::RecvTimeoutError::Disconnected) => Ok(None),
        }
    }

    /// The job's remaining events, each waited for as it comes; the iterator ends
    /// after the last one (`job_finished`).
    pub fn events(&self) -> impl Iterator<Item = Event> + '_ {
        std::iter::from_fn(move || loop {
            let finished = self.is_finished();
            let wait = if finished { Duration::ZERO } else { Duration::from_millis(50) };
            match self.next_event(wait) {
                Ok(Some(e)) => return Some(e),
                Ok(None) if !finished => {}
                _ => return None,
            }
        })
    }

    /// Whether the job has ended (its outcome is ready).
    pub fn is_finished(&self) -> bool {
        self.outcome_ready().unwrap_or(true)
    }

    /// Blocks until the job ends; returns its report or its error. May be called any
    /// number of times, from any thread.
    pub fn wait(&self) -> Result<TrainReport> {
        loop {
            if let Some(r) = self.wait_timeout(Duration::from_secs(3600))? {
                return r;
            }
        }
    }

    /// [`JobHandle::wait`] for at most `timeout`: `Ok(None)` while the job still runs
    /// (bindings poll with this to notice Ctrl-C).
    pub fn wait_timeout(&self, timeout: Duration) -> Result<Option<Result<TrainReport>>> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if self.outcome_ready()? {
                let outcome = self.shared.outcome.lock().map_err(|_| poisoned())?;
                return Ok(outcome.clone());
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            std::thread::sleep((deadline - now).min(Duration::from_millis(10)));
        }
    }

    /// Joins the thread once it has finished, keeping its outcome; true once kept.
    fn outcome_ready(&self) -> Result<bool> {
        let mut outcome = self.shared.outcome.lock().map_err(|_| poisoned())?;
        if outcome.is_some() {
            return Ok(true);
        }
        let mut thread = self.shared.thread.lock().map_err(|_| poisoned())?;
        if let Some(t) = thread.take_if(|t| t.is_finished()) {
            *outcome = Some(t.join().unwrap_or_else(|_| Err(Error::Internal("the training thread panicked".into()))));
        }
        Ok(outcome.is_some())
    }
}
