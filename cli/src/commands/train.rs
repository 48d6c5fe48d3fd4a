//! `anneal train` and `anneal jobs ...`.

use std::path::PathBuf;
use std::time::Duration;

use anneal::{
    Error, Home, IfExists, IoResultExt, JobFilter, JobId, JobRecord, JobStatus, Location, MixedPrecision, Schedule,
    TrainReport, TrainSpec, TrainingEngine,
};
use clap::builder::PossibleValuesParser;
use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};

use super::cancel::Cancellable;
use super::datasets::event_sink;
use super::output::{opt, when, Out};
use super::Ctx;

pub(crate) const TRAIN_EXAMPLES: &str = "\
Examples:
  anneal train --base base --dataset upper --method full --epochs 3 --seq-len 16 --lr 2e-3
  anneal train --base smol --dataset support --lora-r 16 --lora-alpha 32 --eval-fraction 0.1
  anneal train --spec job.json --max-steps 100          # flags override the spec file
  anneal train --base base --dataset upper --json       # events as JSON lines

A spec file is a JSON object with TrainSpec's fields, e.g.
  {\"base\": \"base\", \"dataset\": \"upper\", \"method\": {\"lora\": {\"r\": 8}}, \"epochs\": 2}

Ctrl-C cancels: the job writes a checkpoint and stops; `anneal jobs resume ID` continues it.";

/// `anneal train`: the common fields of a job spec as flags; every field through `--spec`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// A JSON file with the job spec (TrainSpec fields); flags given override it.
    #[arg(long, value_name = "FILE")]
    pub spec: Option<PathBuf>,
    /// The base model: id, `name`, `name@3` or `name@alias`.
    #[arg(long)]
    pub base: Option<String>,
    /// The training dataset (id or name).
    #[arg(long)]
    pub dataset: Option<String>,
    /// An evaluation dataset (id or name).
    #[arg(long)]
    pub eval_dataset: Option<String>,
    /// Hold out this share of the training data for evaluation instead.
    #[arg(long)]
    pub eval_fraction: Option<f64>,
    /// Full fine-tune or LoRA adapter (default lora).
    #[arg(long, value_parser = PossibleValuesParser::new(["full", "lora"]))]
    pub method: Option<String>,
    /// LoRA rank.
    #[arg(long, help_heading = "LoRA")]
    pub lora_r: Option<usize>,
    /// LoRA alpha.
    #[arg(long, help_heading = "LoRA")]
    pub lora_alpha: Option<f64>,
    /// LoRA dropout.
    #[arg(long, help_heading = "LoRA")]
    pub lora_dropout: Option<f64>,
    /// LoRA target modules, comma-separated (`q_proj,v_proj`, `all-linear`).
    #[arg(long, value_delimiter = ',', help_heading = "LoRA")]
    pub lora_targets: Vec<String>,
    /// Passes over the data.
    #[arg(long)]
    pub epochs: Option<u32>,
    /// Stop after this many optimiser steps.
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Sequences per micro-batch.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Micro-batches per optimiser step.
    #[arg(long)]
    pub grad_accum: Option<usize>,
    /// Tokens per sequence.
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// Peak learning rate.
    #[arg(long = "lr", visible_alias = "learning-rate")]
    pub learning_rate: Option<f64>,
    /// Warm-up steps.
    #[arg(long)]
    pub warmup_steps: Option<u64>,
    /// Learning-rate schedule.
    #[arg(long, value_parser = PossibleValuesParser::new(Schedule::NAMES))]
    pub schedule: Option<String>,
    /// Mixed precision: `bf16` multiplies every linear layer in bfloat16 and sums in f32
    /// (language models).
    #[arg(long, value_parser = PossibleValuesParser::new(MixedPrecision::NAMES))]
    pub mixed_precision: Option<String>,
    /// AdamW weight decay.
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Seed (data order, initialisation of adapters).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Evaluate every N steps.
    #[arg(long)]
    pub eval_every: Option<u64>,
    /// Write a checkpoint every N steps.
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    /// Name of the trained model (default: derived from the base).
    #[arg(long)]
    pub output_name: Option<String>,
    /// Continue training this LoRA adapter of the base.
    #[arg(long)]
    pub init_adapter: Option<String>,
    /// When a job with the same spec exists: `new_version` (default) starts another,
    /// `reuse` continues it (its report if completed, resumed if stopped), `error` refuses.
    #[arg(long, value_parser = PossibleValuesParser::new(IfExists::NAMES))]
    pub if_exists: Option<String>,
}

/// `anneal jobs ...`.
#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// List training jobs, oldest first.
    #[command(
        visible_alias = "list",
        after_help = "Examples:\n  anneal jobs ls\n  anneal jobs ls --status running --json"
    )]
    Ls {
        /// Only jobs in this state.
        #[arg(long, value_parser = PossibleValuesParser::new(JobStatus::NAMES))]
        status: Option<String>,
    },
    /// Show a job: state, progress, losses, its spec and the trained model.
    #[command(after_help = "Examples:\n  anneal jobs show job_0123abcd\n  anneal jobs show job_0123abcd --json")]
    Show {
        /// The job id.
        job: String,
    },
    /// Print a job's log lines; `-f` follows a running job until it ends.
    #[command(after_help = "Examples:\n  anneal jobs logs job_0123abcd\n  anneal jobs logs job_0123abcd -f")]
    Logs {
        /// The job id.
        job: String,
        /// Keep printing new lines (and losses) until the job ends.
        #[arg(short, long)]
        follow: bool,
    },
    /// Ask a job to stop (from any process): it checkpoints and ends `cancelled`.
    #[command(after_help = "Examples:\n  anneal jobs cancel job_0123abcd")]
    Cancel {
        /// The job id.
        job: String,
    },
    /// Continue a cancelled, failed or interrupted job from its last checkpoint (or run a pending one).
    #[command(after_help = "Examples:\n  anneal jobs resume job_0123abcd\n  anneal jobs resume job_0123abcd --json")]
    Resume {
        /// The job id.
        job: String,
    },
}

/// The spec: the file's JSON (if any) with the flags laid over it, checked by the core.
fn spec(a: &TrainArgs) -> anneal::Result<TrainSpec> {
    let mut v = match &a.spec {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_path(p)?;
            serde_json::from_str::<Value>(&text)
                .map_err(|e| Error::data(Location::file(p).at(e.line() as u64), format!("not valid JSON: {e}")))?
        }
        None => json!({}),
    };
    let Some(obj) = v.as_object_mut() else {
        return Err(Error::config("spec", "the spec file must hold a JSON object"));
    };
    let mut set = |key: &str, val: Option<Value>| {
        if let Some(val) = val {
            obj.insert(key.to_string(), val);
        }
    };
    set("base", a.base.clone().map(Value::from));
    set("dataset", a.dataset.clone().map(Value::from));
    set("eval_dataset", a.eval_dataset.clone().map(Value::from));
    set("eval_fraction", a.eval_fraction.map(Value::from));
    set("epochs", a.epochs.map(Value::from));
    set("max_steps", a.max_steps.map(Value::from));
    set("batch_size", a.batch_size.map(Value::from));
    set("grad_accum", a.grad_accum.map(Value::from));
    set("seq_len", a.seq_len.map(Value::from));
    set("learning_rate", a.learning_rate.map(Value::from));
    set("warmup_steps", a.warmup_steps.map(Value::from));
    set("schedule", a.schedule.clone().map(Value::from));
    set("mixed_precision", a.mixed_precision.clone().map(Value::from));
    set("weight_decay", a.weight_decay.map(Value::from));
    set("seed", a.seed.map(Value::from));
    set("eval_every", a.eval_every.map(Value::from));
    set("checkpoint_every", a.checkpoint_every.map(Value::from));
    set("output_name", a.output_name.clone().map(Value::from));
    set("init_adapter", a.init_adapter.clone().map(Value::from));
    set("if_exists", a.if_exists.clone().map(Value::from));

    let mut lora = Map::new();
    lora.extend(a.lora_r.map(|r| ("r".to_string(), Value::from(r))));
    lora.extend(a.lora_alpha.map(|r| ("alpha".to_string(), Value::from(r))));
    lora.extend(a.lora_dropout.map(|r| ("dropout".to_string(), Value::from(r))));
    if !a.lora_targets.is_empty() {
        lora.insert("target_modules".into(), Value::from(a.lora_targets.clone()));
    }
    let lora_of = |m: Option<&Value>| match m.and_then(|m| m.get("lora")) {
        Some(Value::Object(m)) => m.clone(),
        _ => Map::new(),
    };
    match a.method.as_deref() {
        Some("full") if !lora.is_empty() => {
            return Err(Error::config("method", "--lora-* flags apply to a LoRA job, not --method full"));
        }
        Some("full") => {
            obj.insert("method".into(), Value::from("full"));
        }
        Some(_) => {
            let mut cfg = lora_of(obj.get("method"));
            cfg.extend(lora);
            obj.insert("method".into(), json!({ "lora": cfg }));
        }
        None if lora.is_empty() => {}
        None => {
            let existing = obj.get("method");
            if existing.is_some_and(|m| m.get("lora").is_none()) {
                return Err(Error::config(
                    "method",
                    "--lora-* flags apply to a LoRA job (the spec file sets another method)",
                ));
            }
            let mut cfg = lora_of(existing);
            cfg.extend(lora);
            obj.insert("method".into(), json!({ "lora": cfg }));
        }
    }
    TrainSpec::from_json(v)
}

pub(crate) fn train(ctx: &Ctx, a: &TrainArgs) -> anneal::Result<i32> {
    let spec = spec(a)?;
    let home = ctx.home()?;
    let job = home.training().create_job(&spec)?;
    if !ctx.json && !ctx.quiet {
        eprintln!("job {} created", job.id);
    }
    run_job(ctx, &home, &job.id, Mode::Complete)
}

/// What [`run_job`] does with the job.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Resume,
    /// Run when pending, resume when stopped, report when completed (`--if-exists reuse`).
    Complete,
}

/// Runs (or resumes) a job on this thread with progress; Ctrl-C cancels it.
fn run_job(ctx: &Ctx, home: &Home, id: &JobId, mode: Mode) -> anneal::Result<i32> {
    let engine = home.training();
    let cancel = Cancellable::new();
    let mut sink = event_sink(ctx);
    let result = match mode {
        Mode::Resume => engine.resume(id, sink.as_mut(), cancel.token()),
        Mode::Complete => engine.complete(id, sink.as_mut(), cancel.token()),
    };
    drop(sink);
    drop(cancel);
    match result {
        Ok(report) => {
            if !ctx.json {
                finished(home, &report)?;
            }
            Ok(0)
        }
        Err(Error::Cancelled) => {
            eprintln!("job {id} cancelled; resume with: anneal jobs resume {id}");
            Ok(130)
        }
        Err(e) => {
            if engine.job(id).is_ok_and(|j| j.status.is_resumable() && j.step > 0) {
                eprintln!("job {id} failed; after fixing the cause, resume with: anneal jobs resume {id}");
            }
            Err(e)
        }
    }
}

fn finished(home: &Home, r: &TrainReport) -> anneal::Result<()> {
    let model = home.models().get(&r.model).map(|m| m.reference()).unwrap_or_else(|_| r.model.to_string());
    let eval = r.eval_loss.map(|l| format!(", eval loss {l:.4}")).unwrap_or_default();
    Out::new().line(format!(
        "model {model} ({}) trained: final loss {:.4}{eval}, {} steps, {} tokens, {:.1}s (job {})",
        r.model, r.final_loss, r.steps, r.tokens, r.duration_s, r.job_id
    ))
}

fn progress(j: &JobRecord) -> String {
    if j.total_steps == 0 {
        "-".into()
    } else {
        format!("{}/{}", j.step, j.total_steps)
    }
}

fn loss(l: Option<f64>) -> String {
    opt(l.map(|l| format!("{l:.4}")))
}

pub(crate) fn jobs(ctx: &Ctx, cmd: JobsCommand) -> anneal::Result<i32> {
    let home = ctx.home()?;
    let engine = home.training();
    let reg = home.models();
    let mut out = Out::new();
    let model_ref = |id: &Option<anneal::ModelId>| match id {
        Some(id) => reg.get(id).map(|m| m.reference()).unwrap_or_else(|_| id.to_string()),
        None => "-".into(),
    };
    match cmd {
        JobsCommand::Ls { status } => {
            let status = status.as_deref().map(str::parse).transpose()?;
            let all = engine.jobs(&JobFilter { status, ..Default::default() })?;
            if ctx.json {
                out.json(&all)?;
            } else if all.is_empty() {
                if !ctx.quiet {
                    eprintln!("no jobs yet: anneal train --base MODEL --dataset DATASET");
                }
            } else {
                let rows: Vec<Vec<String>> = all
                    .iter()
                    .map(|j| {
                        vec![
                            j.id.to_string(),
                            j.status.to_string(),
                            j.spec.method.as_str().to_string(),
                            if j.spec.base.0.is_empty() { "-".into() } else { j.spec.base.to_string() },
                            j.spec.dataset.to_string(),
                            progress(j),
                            loss(j.loss),
                            model_ref(&j.output_model_id),
                            when(&j.created_at),
                        ]
                    })
                    .collect();
                out.table(&["JOB", "STATUS", "METHOD", "BASE", "DATASET", "STEP", "LOSS", "MODEL", "CREATED"], &rows)?;
            }
        }
        JobsCommand::Show { job } => {
            let j = engine.job(job.as_str())?;
            let metrics = engine.metrics(&j.id)?;
            if ctx.json {
                out.json(&json!({ "job": j, "metrics": metrics }))?;
                return Ok(0);
            }
            let s = &j.spec;
            let mut fields = vec![
                ("job", j.id.to_string()),
                ("status", j.status.to_string()),
                ("method", s.method.as_str().to_string()),
                ("base", if s.base.0.is_empty() { "-".into() } else { s.base.to_string() }),
                ("dataset", s.dataset.to_string()),
                ("progress", format!("{:.0}% (step {}, epoch {})", j.progress * 100.0, progress(&j), j.epoch)),
                ("loss", loss(j.loss)),
                ("eval loss", loss(j.eval_loss)),
                ("tokens", j.tokens.to_string()),
                ("tokens/s", opt(j.tokens_per_sec.map(|t| format!("{t:.0}")))),
                ("model", model_ref(&j.output_model_id)),
                ("checkpoint", opt(j.checkpoint.clone())),
                ("created", when(&j.created_at)),
                ("started", opt(j.started_at.as_deref().map(when))),
                ("finished", opt(j.finished_at.as_deref().map(when))),
                (
                    "settings",
                    format!(
                        "epochs {}, max_steps {}, batch {} x {}, seq_len {}, lr {} ({}), seed {}",
                        s.epochs,
                        opt(s.max_steps),
                        s.batch_size,
                        s.grad_accum,
                        s.seq_len,
                        s.learning_rate,
                        s.schedule,
                        s.seed
                    ),
                ),
            ];
            if let Some(e) = &j.error {
                fields.push(("error", format!("[{}] {}", e.code, e.message)));
            }
            if let Some(sample) = &j.sample {
                fields.push(("sample", sample.clone()));
            }
            if let Some(image) = &j.image {
                fields.push(("image", image.clone()));
            }
            let evals = metrics.iter().filter(|m| m.kind == anneal::MetricKind::Eval).count();
            fields.push(("metrics", format!("{} train points, {evals} eval points", metrics.len() - evals)));
            out.fields(&fields)?;
            if j.status.is_resumable() && j.status != JobStatus::Pending && !ctx.quiet {
                eprintln!("resume with: anneal jobs resume {}", j.id);
            }
        }
        JobsCommand::Logs { job, follow } => return logs(ctx, &engine, &job, follow),
        JobsCommand::Cancel { job } => {
            let j = engine.cancel(job.as_str())?;
            if ctx.json {
                out.json(&j)?;
            } else if !ctx.quiet {
                let note = match j.status {
                    JobStatus::Running => "cancel requested; the runner checkpoints and stops at its next step",
                    JobStatus::Cancelled => "cancelled",
                    _ => "already finished; nothing to cancel",
                };
                out.line(format!("job {} ({}): {note}", j.id, j.status))?;
            }
        }
        JobsCommand::Resume { job } => {
            let j = engine.job(job.as_str())?;
            return run_job(
                ctx,
                &home,
                &j.id,
                if j.status == JobStatus::Pending { Mode::Complete } else { Mode::Resume },
            );
        }
    }
    Ok(0)
}

fn log_line(ctx: &Ctx, out: &mut Out, l: &anneal::JobLog) -> anneal::Result<()> {
    if ctx.json {
        out.json_line(l)
    } else {
        out.line(format!("{} [{}] {}", when(&l.at), l.level, l.message))
    }
}

/// Prints the log; with `follow`, polls the catalog (the job may run in another
/// process) and prints new lines and losses until the job is no longer running.
fn logs(ctx: &Ctx, engine: &TrainingEngine, job: &str, follow: bool) -> anneal::Result<i32> {
    let mut out = Out::new();
    let id = engine.job(job)?.id;
    let mut printed = 0;
    let mut last_step = None;
    let cancel = follow.then(Cancellable::new);
    loop {
        let logs = engine.logs(&id)?;
        for l in logs.iter().skip(printed) {
            log_line(ctx, &mut out, l)?;
        }
        printed = printed.max(logs.len());
        if !follow {
            return Ok(0);
        }
        let j = engine.job(&id)?;
        if j.status == JobStatus::Running && j.step > 0 && last_step != Some(j.step) {
            last_step = Some(j.step);
            if !ctx.json && !ctx.quiet {
                eprintln!("step {} loss {}", progress(&j), loss(j.loss));
            }
        }
        if !matches!(j.status, JobStatus::Running | JobStatus::Pending) {
            // Lines written with the end of the run.
            for l in engine.logs(&id)?.iter().skip(printed) {
                log_line(ctx, &mut out, l)?;
            }
            if !ctx.json && !ctx.quiet {
                eprintln!("job {} {}", j.id, j.status);
            }
            return Ok(0);
        }
        if cancel.as_ref().is_some_and(Cancellable::is_cancelled) {
            return Ok(130);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
