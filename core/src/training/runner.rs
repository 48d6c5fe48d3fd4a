//! The training loop: real forward, backward and AdamW steps, with live state in the
//! catalog, events, evaluation, early stopping, checkpoints, cancellation and resume.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use candle_core::Tensor;
use serde_json::{json, Value};

use super::checkpoint::{self, TrainerState};
use super::data::{self, Example, IGNORE};
use super::optim::{clip_grad_norm, lr_at, AdamW};
use super::{effective, now_ms, TrainingEngine};
use crate::catalog::jobs::{self as sql, Progress};
use crate::data::for_each_record;
use crate::error::{Error, Location, Result};
use crate::events::{CancelToken, EventSink};
use crate::models::{ForwardMode, LoadOptions, Model};
use crate::tokenizer::Tokenizer;
use crate::types::{
    ErrorInfo, Event, FinishStatus, JobId, JobLog, JobRecord, JobStatus, Method, MetricKind, MetricPoint, ModelRecord,
    TrainReport,
};
use crate::util::{self, StagingDir};

/// At most this often the live state goes to the catalog (lifecycle writes always do).
const CATALOG_WRITE_INTERVAL: Duration = Duration::from_millis(250);
/// The heartbeat is refreshed this often by a side thread, even during long steps.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// Characters of the current sample kept as a preview.
const SAMPLE_CHARS: usize = 120;

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
    let _guard = {
        let mut active = ACTIVE.lock().map_err(|_| Error::Internal("job registry lock poisoned".into()))?;
        if !active.insert(id.0.clone()) {
            return Err(Error::InUse { what: "job", id: id.0.clone(), reason: "it is running in this process".into() });
        }
        ActiveGuard(id.0.clone())
    };
    let now = util::now();
    let job = engine.store.catalog.write(|tx| {
        let rec = effective(sql::get(tx, &id.0)?, false);
        let ok = match rec.status {
            JobStatus::Pending => true,
            JobStatus::Failed | JobStatus::Cancelled | JobStatus::Interrupted => resume,
            _ => false,
        };
        if !ok {
            let hint = if rec.status == JobStatus::Running {
                "it is running in another process".to_string()
            } else if resume {
                "only cancelled, failed or interrupted jobs resume".to_string()
            } else {
                "run takes a pending job; use resume to continue it".to_string()
            };
            return Err(Error::InUse {
                what: "job",
                id: id.0.clone(),
                reason: format!("{}: {hint}", rec.status.as_str()),
            });
        }
        sql::claim(tx, &id.0, std::process::id(), now_ms(), &now)?;
        Ok(rec)
    })?;
    let stop = Arc::new(AtomicBool::new(false));
    let beat = {
        let (engine, id, stop) = (engine.clone(), id.0.clone(), stop.clone());
        std::thread::Builder::new()
            .name("anneal-heartbeat".into())
            .spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    std::thread::park_timeout(HEARTBEAT_INTERVAL);
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let _ = engine.store.catalog.write(|tx| sql::heartbeat(tx, &id, std::process::id(), now_ms()));
                }
            })
            .ok()
    };
    let mut run = Run {
        engine,
        job,
        sink,
        last_write: None,
        logs: Vec::new(),
        metrics: Vec::new(),
        checkpoint_rel: None,
        last: None,
    };
    let result = run.train(cancel, resume);
    stop.store(true, Ordering::SeqCst);
    if let Some(b) = beat {
        b.thread().unpark();
        let _ = b.join();
    }
    let (status, error, model) = match &result {
        Ok(r) => (JobStatus::Completed, None, Some(r.model.0.clone())),
        Err(Error::Cancelled) => (JobStatus::Cancelled, None, None),
        Err(e) => (JobStatus::Failed, Some(ErrorInfo::from(e)), None),
    };
    if let Some(e) = &error {
        run.push_log("error", e.message.clone());
    }
    let now = util::now();
    let logs = std::mem::take(&mut run.logs);
    let metrics = std::mem::take(&mut run.metrics);
    let (last, ck) = (run.last, run.checkpoint_rel.clone());
    let finish = engine.store.catalog.write(|tx| {
        sql::add_logs(tx, &id.0, &logs)?;
        sql::add_metrics(tx, &id.0, &metrics)?;
        if let (Some(l), false) = (last, status == JobStatus::Completed) {
            let p = Progress {
                progress: l.progress,
                epoch: l.epoch,
                step: l.step,
                total_steps: l.total,
                tokens: l.tokens,
                loss: l.loss,
                eval_loss: l.eval_loss,
                lr: None,
                tokens_per_sec: None,
                sample: None,
                checkpoint: ck.as_deref(),
            };
            sql::update_progress(tx, &id.0, &p, now_ms(), &now)?;
        }
        sql::finish(tx, &id.0, status, error.as_ref(), model.as_deref(), &now)
    });
    let finished = Event::JobFinished {
        job_id: id.0.clone(),
        status: match status {
            JobStatus::Completed => FinishStatus::Completed,
            JobStatus::Cancelled => FinishStatus::Cancelled,
            _ => FinishStatus::Failed,
        },
        model_id: model,
        error,
    };
    // The run's own error wins over failures to record or report its end.
    let _ = run.sink.on_event(&finished);
    let report = result?;
    finish?;
    Ok(report)
}

struct Run<'a> {
    engine: &'a TrainingEngine,
    job: JobRecord,
    sink: &'a mut dyn EventSink,
    last_write: Option<Instant>,
    logs: Vec<JobLog>,
    metrics: Vec<MetricPoint>,
    checkpoint_rel: Option<String>,
    /// The state after the last step: written on finish even if the throttle skipped it.
    last: Option<LastStep>,
}

#[derive(Clone, Copy)]
struct LastStep {
    progress: f64,
    epoch: u32,
    step: u64,
    total: u64,
    tokens: u64,
    loss: Option<f64>,
    eval_loss: Option<f64>,
}

/// Loaded and tokenised inputs of a run.
struct Inputs {
    base: ModelRecord,
    tok: Tokenizer,
    train: Vec<Example>,
    eval: Vec<Example>,
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
        let id = self.job.id.0.clone();
        let logs = std::mem::take(&mut self.logs);
        let metrics = std::mem::take(&mut self.metrics);
        let now = util::now();
        self.engine.store.catalog.write(|tx| {
            sql::add_logs(tx, &id, &logs)?;
            sql::add_metrics(tx, &id, &metrics)?;
            sql::update_progress(tx, &id, p, now_ms(), &now)
        })?;
        self.last_write = Some(Instant::now());
        Ok(())
    }

    fn check_cancel(&self, cancel: &CancelToken) -> Result<bool> {
        Ok(cancel.is_cancelled() || self.engine.store.catalog.read(|c| sql::cancel_requested(c, &self.job.id.0))?)
    }

    fn load_inputs(&self) -> Result<Inputs> {
        let spec = &self.job.spec;
        let base_id = self.job.base_model_id.clone().ok_or_else(|| Error::NotFound {
            what: "model",
            id: format!("{} (the job's base model was deleted)", spec.base),
        })?;
        let base = self.engine.registry().get(&base_id).map_err(|e| match e {
            Error::NotFound { .. } => Error::NotFound { what: "model", id: format!("{base_id} (base model deleted)") },
            o => o,
        })?;
        let tok = Tokenizer::load(&base)?;
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
        let (train_recs, eval_recs, eval_format) = match (spec.eval_fraction, &self.job.eval_dataset_id) {
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
                (t, e, ds.format)
            }
            (None, Some(eid)) => {
                let eds = store.get(eid.clone())?;
                (records, read(&eds.path)?, eds.format)
            }
            (None, None) => (records, Vec::new(), ds.format),
        };
        let max_pos = crate::models::ModelConfig::from_json(&base.config)?.max_position_embeddings;
        if spec.seq_len > max_pos {
            return Err(Error::config(
                "seq_len",
                format!("{} exceeds the model's max_position_embeddings ({max_pos})", spec.seq_len),
            ));
        }
        let train = data::prepare(ds.format, &train_recs, &tok, spec.seq_len, &Location::file(&ds.path))?;
        if train.is_empty() {
            return Err(Error::data(
                Location::file(&ds.path),
                "no trainable example (every record is empty or its trained part was cut by seq_len)",
            ));
        }
        let eval = data::prepare(eval_format, &eval_recs, &tok, spec.seq_len, &Location::file(&ds.path))?;
        Ok(Inputs { base, tok, train, eval })
    }

    fn train(&mut self, cancel: &CancelToken, resume: bool) -> Result<TrainReport> {
        let started = Instant::now();
        let spec = self.job.spec.clone();
        let job_id = self.job.id.clone();
        let job_dir = self.engine.job_dir(&job_id);
        let inputs = match self.load_inputs() {
            Ok(i) => i,
            Err(e) => {
                // job_started is emitted before any failure, so the contract holds.
                self.emit(Event::JobStarted { job_id: job_id.0.clone(), total_steps: 0, epochs: spec.epochs })?;
                return Err(e);
            }
        };
        let Inputs { base, tok, train, eval } = inputs;
        let ckpt = if resume { checkpoint::list(&job_dir).pop() } else { None };
        let state = match &ckpt {
            Some((_, p)) => Some(checkpoint::read_state(p)?),
            None => None,
        };
        let model = match &spec.method {
            Method::Full => {
                let opts = LoadOptions { trainable: true, ..Default::default() };
                match &ckpt {
                    Some((_, p)) => Model::load(p.as_path(), &opts)?,
                    None => Model::load(&base, &opts)?,
                }
            }
            Method::Lora(cfg) => {
                let mut m = Model::load(&base, &LoadOptions::default())?;
                match &ckpt {
                    Some((_, p)) => m.load_adapter(p)?,
                    None => m.add_lora(cfg, spec.seed)?,
                }
                m
            }
        };
        let device = model.device().clone();
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
        let pad = tok.pad_token().or(tok.eos_token()).map(|t| t.id).unwrap_or(0);
        let n = train.len();
        let n_batches = n.div_ceil(spec.batch_size) as u64;
        let steps_per_epoch = n_batches.div_ceil(spec.grad_accum as u64);
        let total = spec.max_steps.unwrap_or(spec.epochs as u64 * steps_per_epoch);
        let epochs = spec.max_steps.map_or(spec.epochs, |m| m.div_ceil(steps_per_epoch) as u32);
        let mut s = state.unwrap_or(TrainerState {
            step: 0,
            epoch: 0,
            batch_in_epoch: 0,
            seed: spec.seed,
            tokens: 0,
            optimizer_step: 0,
            loss: None,
            eval_loss: None,
            best_eval_loss: None,
            evals_without_improvement: 0,
            elapsed_s: 0.0,
            method: spec.method.as_str().into(),
        });
        let elapsed_before = s.elapsed_s;
        self.emit(Event::JobStarted { job_id: job_id.0.clone(), total_steps: total, epochs })?;
        let what = match &ckpt {
            Some((step, _)) => format!("resuming at step {step}"),
            None if resume => "resuming from the start (no checkpoint)".to_string(),
            None => "starting".to_string(),
        };
        self.log(
            "info",
            format!(
                "{what}: {} {} on {} sequences ({} eval), {} trainable parameters, {total} steps",
                spec.method.as_str(),
                base.reference(),
                n,
                eval.len(),
                model.num_trainable_params()
            ),
        )?;
        self.write_live(&snapshot(&s, total, None))?;
        let mut last_eval_step = None;
        let mut stopped_early = false;
        'outer: while s.step < total {
            let order = data::epoch_order(n, spec.seed, s.epoch);
            let batches: Vec<&[usize]> = order.chunks(spec.batch_size).collect();
            while (s.batch_in_epoch as usize) < batches.len() && s.step < total {
                if self.check_cancel(cancel)? {
                    self.save_checkpoint(
                        &job_dir,
                        &model,
                        &opt,
                        &mut s,
                        started,
                        elapsed_before,
                        spec.keep_last_checkpoints,
                    )?;
                    self.log("info", format!("cancelled at step {}", s.step))?;
                    let ck = self.checkpoint_rel.clone();
                    self.write_live(&snapshot(&s, total, ck.as_deref()))?;
                    return Err(Error::Cancelled);
                }
                let t0 = Instant::now();
                let from = s.batch_in_epoch as usize;
                let to = (from + spec.grad_accum).min(batches.len());
                let micro = &batches[from..to];
                let mut grads: Vec<Option<Tensor>> = vec![None; opt.params().len()];
                let (mut loss_sum, mut toks) = (0f64, 0usize);
                for mb in micro {
                    let exs: Vec<&Example> = mb.iter().map(|&i| &train[i]).collect();
                    let (x, y, real) = data::batch(&exs, pad, &device)?;
                    let loss = model.loss(&x, &y, ForwardMode::Train)?;
                    let lv = loss.to_scalar::<f32>()? as f64;
                    if !lv.is_finite() {
                        return Err(Error::Compute(format!(
                            "loss is {lv} at step {}: training diverged (try a lower learning_rate)",
                            s.step + 1
                        )));
                    }
                    loss_sum += lv;
                    toks += real;
                    let gs = (loss / micro.len() as f64)?.backward()?;
                    for (slot, (_, var)) in grads.iter_mut().zip(opt.params()) {
                        if let Some(g) = gs.get(var) {
                            *slot = Some(match slot.take() {
                                Some(acc) => (acc + g)?,
                                None => g.clone(),
                            });
                        }
                    }
                }
                let norm = clip_grad_norm(&mut grads, spec.max_grad_norm)?;
                if !norm.is_finite() {
                    return Err(Error::Compute(format!(
                        "gradient norm is {norm} at step {}: training diverged (try a lower learning_rate)",
                        s.step + 1
                    )));
                }
                let lr = lr_at(spec.schedule, spec.learning_rate, spec.warmup_steps, total, s.step);
                opt.step(&grads, lr)?;
                s.step += 1;
                s.batch_in_epoch = to as u64;
                s.tokens += toks as u64;
                s.optimizer_step = opt.t;
                let loss = loss_sum / micro.len() as f64;
                s.loss = Some(loss);
                let tps = toks as f64 / t0.elapsed().as_secs_f64().max(1e-9);
                let due = self.write_due() || s.step == total;
                let sample = if due {
                    let ids = &train[micro[0][0]].ids;
                    let text = tok.decode(ids, false).unwrap_or_default();
                    Some(text.chars().take(SAMPLE_CHARS).collect::<String>())
                } else {
                    None
                };
                self.emit(Event::Step {
                    job_id: job_id.0.clone(),
                    epoch: s.epoch + 1,
                    step: s.step,
                    total_steps: total,
                    loss,
                    lr,
                    tokens_per_sec: tps,
                    progress: snapshot(&s, total, None).progress,
                    sample: sample.clone(),
                })?;
                self.last = Some(LastStep {
                    progress: snapshot(&s, total, None).progress,
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
                    loss,
                    lr: Some(lr),
                    tokens_per_sec: Some(tps),
                    at: util::now(),
                });
                let mut force = false;
                if !eval.is_empty() && spec.eval_every.is_some_and(|k| s.step % k == 0) {
                    last_eval_step = Some(s.step);
                    force = true;
                    if self.run_eval(&model, &eval, &mut s, &spec, pad)? {
                        stopped_early = true;
                    }
                }
                if spec.checkpoint_every.is_some_and(|k| s.step % k == 0) && s.step < total {
                    self.save_checkpoint(
                        &job_dir,
                        &model,
                        &opt,
                        &mut s,
                        started,
                        elapsed_before,
                        spec.keep_last_checkpoints,
                    )?;
                    force = true;
                }
                if due || force {
                    let ck = self.checkpoint_rel.clone();
                    self.write_live(&Progress {
                        lr: Some(lr),
                        tokens_per_sec: Some(tps),
                        sample: sample.as_deref(),
                        ..snapshot(&s, total, ck.as_deref())
                    })?;
                }
                if stopped_early {
                    break 'outer;
                }
            }
            if s.batch_in_epoch as usize >= batches.len() {
                s.epoch += 1;
                s.batch_in_epoch = 0;
            }
        }
        if stopped_early {
            self.log(
                "info",
                format!(
                    "early stopping at step {}: eval loss did not improve for {} evaluations",
                    s.step, s.evals_without_improvement
                ),
            )?;
        } else if !eval.is_empty() && last_eval_step != Some(s.step) {
            self.run_eval(&model, &eval, &mut s, &spec, pad)?;
        }
        // Register the result.
        let registry = self.engine.registry();
        let mut staging = StagingDir::new(&registry.staging_root())?;
        match &spec.method {
            Method::Full => model.save(staging.path())?,
            Method::Lora(_) => model.save_adapter(staging.path())?,
        }
        let name = match &spec.output_name {
            Some(n) => n.clone(),
            None => default_name(&base.name, spec.method.as_str(), &job_id),
        };
        let duration_s = elapsed_before + started.elapsed().as_secs_f64();
        let final_loss = s.loss.unwrap_or(f64::NAN);
        let lineage = json!({
            "base": base.id,
            "base_ref": base.reference(),
            "dataset": self.job.dataset_id,
            "eval_dataset": self.job.eval_dataset_id,
            "job": job_id,
            "spec": spec,
            "metrics": {
                "final_loss": final_loss,
                "eval_loss": s.eval_loss,
                "best_eval_loss": s.best_eval_loss,
                "steps": s.step,
                "tokens": s.tokens,
                "duration_s": duration_s,
            },
        });
        let rec = registry.register_trained(&mut staging, &name, &base, format!("job:{}", job_id.0), lineage)?;
        self.log("info", format!("registered {} ({}) as {}", rec.reference(), rec.kind.as_str(), rec.id))?;
        let ck = self.checkpoint_rel.clone();
        self.write_live(&Progress { progress: 1.0, epoch: s.epoch.max(1), ..snapshot(&s, total, ck.as_deref()) })?;
        Ok(TrainReport {
            job_id,
            model: rec.id,
            final_loss,
            eval_loss: s.eval_loss,
            steps: s.step,
            tokens: s.tokens,
            duration_s,
        })
    }

    /// Evaluates, emits `eval`, and returns whether early stopping triggers.
    fn run_eval(
        &mut self,
        model: &Model,
        eval: &[Example],
        s: &mut TrainerState,
        spec: &super::TrainSpec,
        pad: u32,
    ) -> Result<bool> {
        let loss = evaluate(model, eval, spec.batch_size, pad)?;
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
        self.emit(Event::Eval { job_id: self.job.id.0.clone(), step: s.step, metrics })?;
        Ok(spec.early_stopping_patience.is_some_and(|p| s.evals_without_improvement >= p))
    }

    #[allow(clippy::too_many_arguments)]
    fn save_checkpoint(
        &mut self,
        job_dir: &std::path::Path,
        model: &Model,
        opt: &AdamW,
        s: &mut TrainerState,
        started: Instant,
        elapsed_before: f64,
        keep: usize,
    ) -> Result<()> {
        if s.step == 0 {
            return Ok(());
        }
        s.elapsed_s = elapsed_before + started.elapsed().as_secs_f64();
        let path = checkpoint::write(job_dir, model, opt, s, keep)?;
        let r = rel(&self.engine.store.root, &path);
        self.checkpoint_rel = Some(r);
        self.emit(Event::Checkpoint { job_id: self.job.id.0.clone(), step: s.step, path: path.display().to_string() })
    }
}

/// Token-weighted mean loss over `eval` (inference path, no gradients).
fn evaluate(model: &Model, eval: &[Example], batch_size: usize, pad: u32) -> Result<f64> {
    let (mut sum, mut count) = (0f64, 0usize);
    for chunk in eval.chunks(batch_size) {
        let exs: Vec<&Example> = chunk.iter().collect();
        let (x, y, _) = data::batch(&exs, pad, model.device())?;
        let loss = model.loss(&x, &y, ForwardMode::Infer)?.to_scalar::<f32>()? as f64;
        let n: usize = chunk.iter().map(|e| e.labels.iter().skip(1).filter(|&&l| l != IGNORE).count()).sum();
        sum += loss * n as f64;
        count += n;
    }
    let loss = sum / count.max(1) as f64;
    if !loss.is_finite() {
        return Err(Error::Compute(format!("eval loss is {loss}: training diverged (try a lower learning_rate)")));
    }
    Ok(loss)
}

fn rel(root: &std::path::Path, p: &std::path::Path) -> String {
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
    }
}
