//! Events, sinks and cancellation: one contract for Rust, Python and Node.
//!
//! A training run emits, in order:
//!
//! ```text
//! job_started {job_id, total_steps, epochs}
//!   ( step {..} | eval {..} | checkpoint {..} | log {..} )*
//! job_finished {job_id, status, model_id?, error?}        <- always last, even on failure
//! ```
//!
//! Imports and other long tasks emit:
//!
//! ```text
//! task_started {task, name, total?}
//!   task_progress {task, done, total?}*
//! task_finished {task, status, id?, error?}                <- always last
//! ```
//!
//! Besides the caller's own sink, a run's curves can go where people look at them:
//! [`TensorBoardSink`] (event files), [`MlflowSink`] (a local `mlruns` store or a
//! tracking server); [`Fanout`] hands every event to several sinks and
//! [`CurveOptions`] builds these two from the options the bindings take.
//!
//! Events serialize with a `type` tag in snake_case (`{"type": "step", ...}`), which is
//! the dict Python callbacks receive and the object Node callbacks receive.
//! Engines emit every step; sinks throttle ([`Throttle`]). A sink that returns an error
//! stops the operation; the final event is still delivered (its error is ignored).

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::types::{Event, FinishStatus, TrainSpec};

mod mlflow;
mod tensorboard;

pub use mlflow::{MlflowSink, DEFAULT_EXPERIMENT};
pub use tensorboard::TensorBoardSink;

/// Receives events on the worker thread. Returning `Err` stops the operation.
pub trait EventSink: Send {
    fn on_event(&mut self, event: &Event) -> Result<()>;

    /// Whether the sink looks at progress events (`task_progress` per generated token,
    /// for one). An operation may skip waking up for progress a sink ignores: a
    /// `generate` call whose sink does not want it is woken only when its result is
    /// ready, not after every decoding step of the batch it shares.
    fn wants_progress(&self) -> bool {
        true
    }

    /// Called while an operation runs without events for this sink (at once, then at
    /// most every 50 ms): a `generate` call whose sink does not want progress, driving
    /// or waiting on the batch it shares.
    /// Returning `Err` stops the operation as `on_event` does. Where a sink that skips
    /// progress still looks for an interruption (Python's Ctrl-C).
    fn poll(&mut self) -> Result<()> {
        Ok(())
    }
}

impl<F: FnMut(&Event) -> Result<()> + Send> EventSink for F {
    fn on_event(&mut self, event: &Event) -> Result<()> {
        self(event)
    }
}

/// Cooperative cancellation: a shared flag, checked between steps and batches.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst)
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
    /// `Err(Error::Cancelled)` once cancelled.
    pub fn check(&self) -> Result<()> {
        if self.is_cancelled() {
            Err(Error::Cancelled)
        } else {
            Ok(())
        }
    }
}

/// Drops every event.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopSink;

impl EventSink for NoopSink {
    fn on_event(&mut self, _: &Event) -> Result<()> {
        Ok(())
    }

    fn wants_progress(&self) -> bool {
        false
    }
}

/// Hands every event to each of its sinks in turn. Every sink gets every event, also
/// after one of them failed; the first error is returned (and stops the operation).
///
/// ```
/// use anneal::{Fanout, RecordingSink, TensorBoardSink};
/// let rec = RecordingSink::new();
/// let sink = Fanout::new().with(TensorBoardSink::new("runs")).with(rec.clone());
/// assert_eq!(sink.len(), 2);
/// ```
#[derive(Default)]
pub struct Fanout<'a> {
    sinks: Vec<Box<dyn EventSink + 'a>>,
}

impl<'a> Fanout<'a> {
    pub fn new() -> Self {
        Self { sinks: Vec::new() }
    }
    /// Adds `sink` after the others.
    pub fn with(mut self, sink: impl EventSink + 'a) -> Self {
        self.push(sink);
        self
    }
    /// Adds `sink` after the others.
    pub fn push(&mut self, sink: impl EventSink + 'a) {
        self.sinks.push(Box::new(sink));
    }
    pub fn len(&self) -> usize {
        self.sinks.len()
    }
    pub fn is_empty(&self) -> bool {
        self.sinks.is_empty()
    }
}

impl EventSink for Fanout<'_> {
    fn wants_progress(&self) -> bool {
        self.sinks.iter().any(|s| s.wants_progress())
    }

    fn poll(&mut self) -> Result<()> {
        let mut first = Ok(());
        for s in &mut self.sinks {
            let r = s.poll();
            if first.is_ok() {
                first = r;
            }
        }
        first
    }

    fn on_event(&mut self, event: &Event) -> Result<()> {
        let mut first = Ok(());
        for s in &mut self.sinks {
            let r = s.on_event(event);
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}

/// Where a training run's curves go besides the caller's callback: the `tensorboard`,
/// `mlflow` and `mlflow_experiment` options of `train` / `run` / `resume` in Python
/// and Node (`mlflowExperiment` there).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct CurveOptions {
    /// A log directory: TensorBoard event files go to `<dir>/<job_id>/` ([`TensorBoardSink`]).
    pub tensorboard: Option<String>,
    /// An MLflow tracking URI: a directory (the local file store, e.g. `mlruns`) or an
    /// `http(s)://` tracking server ([`MlflowSink`]).
    pub mlflow: Option<String>,
    /// The MLflow experiment (by name; created when missing). Default `Default`.
    pub mlflow_experiment: Option<String>,
}

impl CurveOptions {
    /// Whether no curve sink is asked for.
    pub fn is_empty(&self) -> bool {
        self.tensorboard.is_none() && self.mlflow.is_none()
    }

    /// The sinks asked for, for a job trained with `spec` (MLflow logs its fields as
    /// parameters). Nothing is written before `job_started`. An empty `tensorboard`
    /// or a malformed `mlflow` is `invalid_config` naming it; `mlflow_experiment`
    /// without `mlflow` too.
    pub fn sinks(&self, spec: &TrainSpec) -> Result<Fanout<'static>> {
        let mut out = Fanout::new();
        if let Some(dir) = &self.tensorboard {
            if dir.trim().is_empty() {
                return Err(Error::config("tensorboard", "is empty: give a log directory (e.g. runs)"));
            }
            out.push(TensorBoardSink::new(dir));
        }
        match (&self.mlflow, &self.mlflow_experiment) {
            (Some(uri), experiment) => {
                let mut sink = MlflowSink::new(uri)?.spec(spec);
                if let Some(name) = experiment {
                    if name.trim().is_empty() {
                        return Err(Error::config("mlflow_experiment", "is empty"));
                    }
                    sink = sink.experiment(name);
                }
                out.push(sink);
            }
            (None, Some(_)) => {
                return Err(Error::config("mlflow_experiment", "needs `mlflow` (a tracking URI or directory)"))
            }
            (None, None) => {}
        }
        Ok(out)
    }
}

/// Writes one JSON object per line.
pub struct JsonLinesSink<W: Write + Send> {
    out: W,
}

impl<W: Write + Send> JsonLinesSink<W> {
    pub fn new(out: W) -> Self {
        Self { out }
    }
    pub fn into_inner(self) -> W {
        self.out
    }
}

impl<W: Write + Send> EventSink for JsonLinesSink<W> {
    fn on_event(&mut self, event: &Event) -> Result<()> {
        let line = serde_json::to_string(event).map_err(|e| Error::Internal(e.to_string()))?;
        writeln!(self.out, "{line}")
            .and_then(|_| self.out.flush())
            .map_err(|e| Error::Io { path: "<event sink>".into(), source: e })
    }
}

/// Keeps every event in memory (for tests). Clones share the same buffer.
#[derive(Debug, Default, Clone)]
pub struct RecordingSink {
    events: Arc<Mutex<Vec<Event>>>,
}

impl RecordingSink {
    pub fn new() -> Self {
        Self::default()
    }
    /// A copy of the events received so far.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().map(|v| v.clone()).unwrap_or_default()
    }
    /// The `type` tags received so far.
    pub fn types(&self) -> Vec<&'static str> {
        self.events().iter().map(Event::type_name).collect()
    }
}

impl EventSink for RecordingSink {
    fn on_event(&mut self, event: &Event) -> Result<()> {
        self.events.lock().map_err(|_| Error::Internal("recording sink lock poisoned".into()))?.push(event.clone());
        Ok(())
    }
}

/// Forwards lifecycle events always and progress events at most once per `interval`
/// (the latest one wins; the final progress before a finish event is flushed).
pub struct Throttle<S: EventSink> {
    inner: S,
    interval: Duration,
    last: Option<Instant>,
    pending: Option<Event>,
}

impl<S: EventSink> Throttle<S> {
    pub fn new(inner: S, interval: Duration) -> Self {
        Self { inner, interval, last: None, pending: None }
    }
    pub fn into_inner(self) -> S {
        self.inner
    }
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S: EventSink> EventSink for Throttle<S> {
    fn on_event(&mut self, event: &Event) -> Result<()> {
        if event.is_progress() {
            let due = self.last.is_none_or(|t| t.elapsed() >= self.interval);
            if due {
                self.pending = None;
                self.last = Some(Instant::now());
                self.inner.on_event(event)
            } else {
                self.pending = Some(event.clone());
                Ok(())
            }
        } else {
            if let Some(p) = self.pending.take() {
                self.inner.on_event(&p)?;
            }
            self.inner.on_event(event)
        }
    }
}

/// A progress bar on a terminal (indicatif); plain lines on stderr when stderr is not a
/// TTY (no `\r`): the start, a progress line at most every [`TerminalSink::PLAIN_EVERY`],
/// evaluations, and the end, which keeps the final loss (`job_... completed: 8/8 steps,
/// loss 1.2345, eval loss 1.4567, model mdl_...`).
pub struct TerminalSink {
    bar: Option<indicatif::ProgressBar>,
    tty: bool,
    last_line: Option<Instant>,
    every: Duration,
    step: (u64, u64),
    loss: Option<f64>,
    eval_loss: Option<f64>,
}

impl Default for TerminalSink {
    fn default() -> Self {
        Self::new()
    }
}

impl TerminalSink {
    /// Without a TTY, progress lines come at most this often.
    pub const PLAIN_EVERY: Duration = Duration::from_secs(5);

    pub fn new() -> Self {
        Self {
            bar: None,
            tty: std::io::stderr().is_terminal(),
            last_line: None,
            every: Self::PLAIN_EVERY,
            step: (0, 0),
            loss: None,
            eval_loss: None,
        }
    }

    /// Plain progress lines (no TTY) at most every `every` instead of
    /// [`TerminalSink::PLAIN_EVERY`].
    pub fn every(mut self, every: Duration) -> Self {
        self.every = every;
        self
    }

    fn start_bar(&mut self, total: Option<u64>, template: &str, msg: String) {
        if !self.tty {
            eprintln!("{msg}");
            return;
        }
        let bar = match total {
            Some(t) => indicatif::ProgressBar::new(t),
            None => indicatif::ProgressBar::new_spinner(),
        };
        if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(msg);
        self.bar = Some(bar);
    }

    fn plain(&mut self, line: String) {
        let due = self.last_line.is_none_or(|t| t.elapsed() >= self.every);
        if due {
            self.last_line = Some(Instant::now());
            eprintln!("{line}");
        }
    }

    fn finish(&mut self, line: String) {
        match self.bar.take() {
            Some(bar) => bar.finish_with_message(line),
            None => eprintln!("{line}"),
        }
    }
}

impl EventSink for TerminalSink {
    fn on_event(&mut self, event: &Event) -> Result<()> {
        match event {
            Event::JobStarted { job_id, total_steps, epochs } => {
                (self.step, self.loss, self.eval_loss) = ((0, *total_steps), None, None);
                self.start_bar(
                    Some(*total_steps),
                    "{msg} [{bar:30}] {pos}/{len} steps {elapsed_precise} eta {eta}",
                    format!("job {job_id}: {total_steps} steps, {epochs} epoch(s)"),
                )
            }
            Event::Step { step, total_steps, loss, lr, tokens_per_sec, .. } => {
                (self.step, self.loss) = ((*step, *total_steps), Some(*loss));
                let msg = format!("loss {loss:.4} lr {lr:.2e} {tokens_per_sec:.0} tok/s");
                match &self.bar {
                    Some(bar) => {
                        bar.set_position(*step);
                        bar.set_message(msg);
                    }
                    None => self.plain(format!("step {step}/{total_steps} {msg}")),
                }
            }
            Event::Eval { step, metrics, .. } => {
                self.eval_loss = metrics.get("eval_loss").or_else(|| metrics.get("loss")).copied().or(self.eval_loss);
                let m: Vec<String> = metrics.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
                let line = format!("eval @ step {step}: {}", m.join(", "));
                match &self.bar {
                    Some(bar) => bar.println(line),
                    None => eprintln!("{line}"),
                }
            }
            Event::Checkpoint { step, path, .. } => {
                let line = format!("checkpoint @ step {step}: {path}");
                match &self.bar {
                    Some(bar) => bar.println(line),
                    None => eprintln!("{line}"),
                }
            }
            Event::Log { level, message, .. } => {
                let line = format!("[{level}] {message}");
                match &self.bar {
                    Some(bar) => bar.println(line),
                    None => eprintln!("{line}"),
                }
            }
            Event::JobFinished { job_id, status, model_id, error } => {
                let mut line = format!("job {job_id} {}: {}/{} steps", serde_plain(status), self.step.0, self.step.1);
                if let Some(l) = self.loss {
                    line.push_str(&format!(", loss {l:.4}"));
                }
                if let Some(l) = self.eval_loss {
                    line.push_str(&format!(", eval loss {l:.4}"));
                }
                if let Some(m) = model_id {
                    line.push_str(&format!(", model {m}"));
                }
                if let Some(e) = error {
                    line.push_str(&format!(": [{}] {}", e.code, e.message));
                }
                self.finish(line);
            }
            Event::TaskStarted { task, name, total, unit } => self.start_bar(
                *total,
                if unit == "bytes" {
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
                } else {
                    "{msg} [{bar:30}] {pos}/{len} {per_sec} eta {eta}"
                },
                format!("{task} {name} ({} {unit})", total.map_or("?".into(), |t| t.to_string())),
            ),
            Event::TaskProgress { task, done, total } => match &self.bar {
                Some(bar) => bar.set_position(*done),
                None => self.plain(match total {
                    Some(t) => format!("{task}: {done}/{t}"),
                    None => format!("{task}: {done}"),
                }),
            },
            Event::TaskFinished { task, status, id, error } => {
                let mut line = format!("{task} {}", serde_plain(status));
                if let Some(id) = id {
                    line.push_str(&format!(": {id}"));
                }
                if let Some(e) = error {
                    line.push_str(&format!(": [{}] {}", e.code, e.message));
                }
                self.finish(line);
            }
            Event::DriftDetected { .. }
            | Event::RetrainStarted { .. }
            | Event::CandidateEvaluated { .. }
            | Event::Promoted { .. }
            | Event::RolledBack { .. }
            | Event::MonitorError { .. } => {
                let s = crate::notify::format::summarize(event);
                let line = format!("[{}] {}: {}", event.type_name(), s.title, s.description);
                match &self.bar {
                    Some(bar) => bar.println(line),
                    None => eprintln!("{line}"),
                }
            }
        }
        Ok(())
    }
}

fn serde_plain(status: &FinishStatus) -> &'static str {
    match status {
        FinishStatus::Completed => "completed",
        FinishStatus::Failed => "failed",
        FinishStatus::Cancelled => "cancelled",
    }
}

/// Runs a long task with the `task_*` envelope: `task_started` first, `task_finished`
/// last whatever happens. `body` reports progress through the given [`TaskReporter`].
pub(crate) fn run_task<T>(
    sink: &mut dyn EventSink,
    task: &str,
    name: &str,
    total: Option<u64>,
    unit: &str,
    body: impl FnOnce(&mut TaskReporter<'_>) -> Result<(T, Option<String>)>,
) -> Result<T> {
    let started = Event::TaskStarted { task: task.into(), name: name.into(), total, unit: unit.into() };
    let result = sink.on_event(&started).and_then(|_| {
        let mut reporter = TaskReporter { sink: &mut *sink, task, total };
        body(&mut reporter)
    });
    let finished = match &result {
        Ok((_, id)) => {
            Event::TaskFinished { task: task.into(), status: FinishStatus::Completed, id: id.clone(), error: None }
        }
        Err(e) => Event::TaskFinished {
            task: task.into(),
            status: if matches!(e, Error::Cancelled) { FinishStatus::Cancelled } else { FinishStatus::Failed },
            id: None,
            error: Some(e.into()),
        },
    };
    match result {
        Ok((v, _)) => {
            sink.on_event(&finished)?;
            Ok(v)
        }
        Err(e) => {
            // The original error wins over a failure to deliver the final event.
            let _ = sink.on_event(&finished);
            Err(e)
        }
    }
}

/// Progress reporting inside [`run_task`].
pub(crate) struct TaskReporter<'a> {
    sink: &'a mut dyn EventSink,
    task: &'a str,
    total: Option<u64>,
}

impl TaskReporter<'_> {
    pub(crate) fn progress(&mut self, done: u64) -> Result<()> {
        self.sink.on_event(&Event::TaskProgress { task: self.task.into(), done, total: self.total })
    }

    /// [`EventSink::poll`] of the task's sink.
    pub(crate) fn poll(&mut self) -> Result<()> {
        self.sink.poll()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(n: u64) -> Event {
        Event::Step {
            job_id: "j".into(),
            epoch: 0,
            step: n,
            total_steps: 10,
            loss: 1.0,
            lr: 1e-3,
            tokens_per_sec: 1.0,
            progress: n as f64 / 10.0,
            sample: None,
            image: None,
        }
    }

    #[test]
    fn events_serialize_with_snake_case_type_tag() {
        let v = step(3).to_json();
        assert_eq!(v["type"], "step");
        assert_eq!(v["step"], 3);
        assert!(v.get("sample").is_none());
        let f = Event::JobFinished { job_id: "j".into(), status: FinishStatus::Cancelled, model_id: None, error: None };
        assert_eq!(f.to_json()["status"], "cancelled");
        let back: Event = serde_json::from_value(f.to_json()).unwrap();
        assert_eq!(back, f);
    }

    #[test]
    fn throttle_drops_progress_but_flushes_last_before_finish() {
        let rec = RecordingSink::new();
        let mut t = Throttle::new(rec.clone(), Duration::from_secs(3600));
        t.on_event(&Event::JobStarted { job_id: "j".into(), total_steps: 10, epochs: 1 }).unwrap();
        for i in 1..=10 {
            t.on_event(&step(i)).unwrap();
        }
        t.on_event(&Event::JobFinished {
            job_id: "j".into(),
            status: FinishStatus::Completed,
            model_id: None,
            error: None,
        })
        .unwrap();
        let ev = rec.events();
        assert_eq!(rec.types(), vec!["job_started", "step", "step", "job_finished"]);
        assert!(matches!(ev[1], Event::Step { step: 1, .. }));
        assert!(matches!(ev[2], Event::Step { step: 10, .. }));
    }

    #[test]
    fn json_lines_sink_writes_one_object_per_line() {
        let mut s = JsonLinesSink::new(Vec::new());
        s.on_event(&step(1)).unwrap();
        s.on_event(&step(2)).unwrap();
        let out = String::from_utf8(s.into_inner()).unwrap();
        let lines: Vec<_> = out.lines().collect();
        assert_eq!(lines.len(), 2);
        let v: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(v["step"], 2);
    }

    #[test]
    fn run_task_always_ends_with_task_finished() {
        let mut rec = RecordingSink::new();
        let r: Result<()> = run_task(&mut rec, "import", "x", Some(3), "bytes", |rep| {
            rep.progress(1)?;
            Err(Error::Cancelled)
        });
        assert!(matches!(r, Err(Error::Cancelled)));
        let ev = rec.events();
        assert_eq!(rec.types(), vec!["task_started", "task_progress", "task_finished"]);
        assert!(matches!(ev.last(), Some(Event::TaskFinished { status: FinishStatus::Cancelled, .. })));
    }

    #[test]
    fn failing_sink_stops_task() {
        let mut calls = 0;
        let mut sink = |e: &Event| {
            calls += 1;
            if e.is_progress() {
                Err(Error::Callback("boom".into()))
            } else {
                Ok(())
            }
        };
        let r: Result<()> = run_task(&mut sink, "t", "n", None, "records", |rep| {
            rep.progress(1)?;
            Ok(((), None))
        });
        assert_eq!(r.unwrap_err().code(), "callback_failed");
        assert_eq!(calls, 3);
    }

    #[test]
    fn fanout_delivers_every_event_to_every_sink_and_returns_the_first_error() {
        let (a, b) = (RecordingSink::new(), RecordingSink::new());
        let failing = |_: &Event| Err(Error::Callback("boom".into()));
        let mut f = Fanout::new().with(a.clone()).with(failing).with(b.clone());
        let e = f.on_event(&step(1)).unwrap_err();
        assert_eq!(e.code(), "callback_failed");
        assert_eq!((a.types(), b.types()), (vec!["step"], vec!["step"]));
    }

    #[test]
    fn curve_options_build_the_sinks_asked_for() {
        let spec = TrainSpec::default();
        assert!(CurveOptions::default().is_empty());
        assert!(CurveOptions::default().sinks(&spec).unwrap().is_empty());
        let both =
            CurveOptions { tensorboard: Some("runs".into()), mlflow: Some("mlruns".into()), ..Default::default() };
        assert_eq!(both.sinks(&spec).unwrap().len(), 2);
        for (opts, field) in [
            (CurveOptions { tensorboard: Some(" ".into()), ..Default::default() }, "`tensorboard`"),
            (CurveOptions { mlflow: Some("ftp://x".into()), ..Default::default() }, "`mlflow`"),
            (CurveOptions { mlflow_experiment: Some("e".into()), ..Default::default() }, "`mlflow_experiment`"),
        ] {
            let e = opts.sinks(&spec).err().unwrap();
            assert_eq!(e.code(), "invalid_config");
            assert!(e.to_string().contains(field), "{e}");
        }
    }

    #[test]
    fn cancel_token_is_shared() {
        let t = CancelToken::new();
        let c = t.clone();
        assert!(t.check().is_ok());
        c.cancel();
        assert_eq!(t.check().unwrap_err().code(), "cancelled");
    }
}
