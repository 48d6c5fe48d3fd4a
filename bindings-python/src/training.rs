//! `TrainingEngine`, `JobHandle` and the job records.
//!
//! Specs are dicts (or keyword arguments) handed to `TrainSpec::from_json`, so defaults
//! and validation stay in the core. `run` / `train` / `resume` / `JobHandle.wait` release
//! the GIL. Ctrl-C during a run asks the job to stop through the catalog flag: it writes
//! a checkpoint, ends `cancelled` (resumable) and `KeyboardInterrupt` is raised, its
//! message naming the job and the call that continues it (as `CancelledError`'s does
//! after a cancel through a token).

use std::time::Duration;

use pyo3::exceptions::{PyKeyboardInterrupt, PyStopIteration, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use serde_json::{Map, Value};

use anneal::{CurveOptions, Fanout, JobFilter, JobId, PlotOptions, TrainSpec};

use crate::conv::{self, q, Options};
use crate::errors::{to_pyerr, EnterCore};
use crate::events::{self, PyCancelToken};
use crate::records::record_class;

/// How long a blocked `wait` / iteration sleeps between checks for Ctrl-C.
const POLL: Duration = Duration::from_millis(50);

record_class! {
    /// A training job (a catalog row), with its live progress.
    PyJobRecord = "JobRecord"(anneal::JobRecord) {
        fields: [
            id,
            /// `pending`, `running`, `completed`, `failed`, `cancelled` or `interrupted`.
            status,
            base_model_id,
            dataset_id,
            eval_dataset_id,
            output_model_id,
            /// The job's TrainSpec as a dict (every field, defaults filled in).
            spec,
            progress,
            epoch,
            step,
            total_steps,
            tokens,
            loss,
            eval_loss,
            lr,
            tokens_per_sec,
            sample,
            heartbeat_at,
            runner_pid,
            cancel_requested,
            /// `{"code": ..., "message": ...}` of a failed job.
            error,
            checkpoint,
            /// Image models: the latest validation image (PNG grid), relative to the home.
            image,
            created_at,
            updated_at,
            started_at,
            finished_at,
        ],
        eq: PartialEq,
        extra: {
            /// Whether `TrainingEngine.resume` (or `spawn`) accepts the job.
            #[getter]
            fn is_resumable(&self) -> bool {
                self.inner.status.is_resumable()
            }
            fn __repr__(&self) -> String {
                let r = &self.inner;
                format!("JobRecord(id={}, status={}, step={}/{})", q(&r.id.0), q(r.status.as_str()), r.step, r.total_steps)
            }
        },
    }
}

record_class! {
    /// The result of a successful run.
    PyTrainReport = "TrainReport"(anneal::TrainReport) {
        fields: [
            job_id,
            /// The id of the registered output model.
            model,
            /// The same id under the name events and job records use.
            model_id,
            final_loss,
            eval_loss,
            steps,
            tokens,
            duration_s,
        ],
        repr: [job_id, model, steps, final_loss],
        eq: PartialEq,
    }
}

record_class! {
    /// One point of a job's metrics time series.
    PyMetricPoint = "MetricPoint"(anneal::MetricPoint) {
        fields: [
            /// `train` (an optimiser step) or `eval`.
            kind,
            step,
            epoch,
            loss,
            lr,
            tokens_per_sec,
            at,
        ],
        repr: [kind, step, loss],
    }
}

record_class! {
    /// A log line of a job.
    PyJobLog = "JobLog"(anneal::JobLog) {
        fields: [at, level, message],
        repr: [level, message],
    }
}

/// A spec dict merged with keyword fields (keywords win), as JSON for the core.
fn spec_json(spec: Option<&Bound<'_, PyAny>>, fields: Option<&Bound<'_, PyDict>>) -> PyResult<Value> {
    let mut map = match spec.filter(|s| !s.is_none()).map(|s| conv::to_json(s, "spec")).transpose()? {
        None => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(PyTypeError::new_err("spec must be a dict of TrainSpec fields")),
    };
    for (k, v) in fields.into_iter().flat_map(|f| f.iter()) {
        let key: String = k.extract()?;
        let value = conv::to_json(&v, &key)?;
        map.insert(key, value);
    }
    Ok(Value::Object(map))
}

fn train_spec(
    py: Python<'_>,
    spec: Option<&Bound<'_, PyAny>>,
    fields: Option<&Bound<'_, PyDict>>,
) -> PyResult<TrainSpec> {
    TrainSpec::from_json(spec_json(spec, fields)?).map_err(|e| to_pyerr(py, e))
}

/// The event callback: the user's, wrapped by a tqdm bar when `progress` is set.
fn callback(py: Python<'_>, on_event: Option<Bound<'_, PyAny>>, progress: bool) -> PyResult<Option<Py<PyAny>>> {
    let cb = events::callback(on_event)?;
    if !progress {
        return Ok(cb);
    }
    let make = py.import("anneal._progress")?.getattr("progress_callback")?;
    Ok(Some(make.call1((cb,))?.unbind()))
}

/// `tensorboard=` / `mlflow=` / `mlflow_experiment=`: a `str` or `os.PathLike` each.
struct Curves<'py> {
    tensorboard: Option<Bound<'py, PyAny>>,
    mlflow: Option<Bound<'py, PyAny>>,
    mlflow_experiment: Option<Bound<'py, PyAny>>,
}

impl Curves<'_> {
    /// The options, checked by the core (`invalid_config` naming a bad one).
    fn options(&self, py: Python<'_>) -> PyResult<CurveOptions> {
        let mut map = Map::new();
        for (key, v) in [
            ("tensorboard", &self.tensorboard),
            ("mlflow", &self.mlflow),
            ("mlflow_experiment", &self.mlflow_experiment),
        ] {
            let Some(v) = v.as_ref().filter(|v| !v.is_none()) else { continue };
            let text = match v.extract::<std::path::PathBuf>() {
                Ok(p) => p.to_string_lossy().into_owned(),
                Err(_) => {
                    let e = anneal::Error::config(
                        key,
                        format!("expected a str or os.PathLike, got {}", v.get_type().name()?),
                    );
                    return Err(to_pyerr(py, e));
                }
            };
            map.insert(key.to_string(), Value::String(text));
        }
        anneal::options_from_json(Value::Object(map)).map_err(|e| to_pyerr(py, e))
    }

    /// The sinks for a job trained with `spec`.
    fn sinks(&self, py: Python<'_>, spec: &TrainSpec) -> PyResult<Fanout<'static>> {
        self.options(py)?.sinks(spec).map_err(|e| to_pyerr(py, e))
    }
}

/// `PlotOptions` from keyword arguments, checked by the core.
fn plot_options(
    py: Python<'_>,
    width: Option<&Bound<'_, PyAny>>,
    height: Option<&Bound<'_, PyAny>>,
    title: Option<&Bound<'_, PyAny>>,
) -> PyResult<PlotOptions> {
    let value = Options::default().set("width", width)?.set("height", height)?.set("title", title)?.into_value();
    anneal::options_from_json(value).map_err(|e| to_pyerr(py, e))
}

/// PNG bytes as `anneal.PngBytes` (bytes that Jupyter shows as an image): `render`
/// draws them, `render_to` draws and writes them to `path` (atomically, in the core).
fn png<'py>(
    py: Python<'py>,
    path: Option<&Bound<'py, PyAny>>,
    render: impl FnOnce() -> anneal::Result<Vec<u8>> + Send,
    render_to: impl FnOnce(&std::path::Path) -> anneal::Result<Vec<u8>> + Send,
) -> PyResult<Bound<'py, PyAny>> {
    let path = path.filter(|p| !p.is_none()).map(|p| p.extract::<std::path::PathBuf>()).transpose()?;
    let bytes = py.enter_core(|| match &path {
        Some(path) => render_to(path),
        None => render(),
    })?;
    py.import("anneal._png")?.getattr("PngBytes")?.call1((PyBytes::new(py, &bytes),))
}

/// Creates, runs, watches and resumes training jobs.
#[pyclass(name = "TrainingEngine", module = "anneal", frozen)]
pub struct PyTrainingEngine {
    pub inner: anneal::TrainingEngine,
    pub root: String,
}

/// What `execute` does with a job.
#[derive(Clone, Copy)]
enum Mode {
    Run,
    Resume,
    /// `TrainingEngine::complete`: run, resume or report, by the job's state.
    Complete,
}

/// Ctrl-C during a run or a wait: `KeyboardInterrupt` naming the job and how to continue it.
pub(crate) fn interrupted(py: Python<'_>, engine: &anneal::TrainingEngine, id: &JobId) -> PyErr {
    let hint = py.detach(|| engine.resume_hint(id));
    PyKeyboardInterrupt::new_err(format!("Ctrl-C: {hint}"))
}

impl PyTrainingEngine {
    /// `run` / `resume` / `train` by id: the curve sinks need the job's spec.
    #[allow(clippy::too_many_arguments)]
    fn execute_id(
        &self,
        py: Python<'_>,
        id: JobId,
        mode: Mode,
        on_event: Option<Bound<'_, PyAny>>,
        cancel: Option<Bound<'_, PyCancelToken>>,
        progress: bool,
        curves: Curves<'_>,
    ) -> PyResult<PyTrainReport> {
        let cb = callback(py, on_event, progress)?;
        let opts = curves.options(py)?;
        let sinks = if opts.is_empty() {
            Fanout::new()
        } else {
            let job = py.enter_core(|| self.inner.job(&id))?;
            opts.sinks(&job.spec).map_err(|e| to_pyerr(py, e))?
        };
        self.execute(py, id, mode, cb, events::token(cancel.as_ref()), sinks)
    }

    /// Runs, resumes or completes a job on this thread with the GIL released.
    fn execute(
        &self,
        py: Python<'_>,
        id: JobId,
        mode: Mode,
        on_event: Option<Py<PyAny>>,
        cancel: anneal::CancelToken,
        curves: Fanout<'static>,
    ) -> PyResult<PyTrainReport> {
        let engine = self.inner.clone();
        let stop = {
            let (engine, id) = (engine.clone(), id.clone());
            Box::new(move || engine.cancel(&id).is_ok()) as events::OnInterrupt
        };
        let job = id.clone();
        let (result, raised) = events::run_interruptible(py, on_event, Some(stop), move |sink| {
            // The curve sinks get every step; the callback its throttled share.
            let mut sink = curves.with(move |e: &anneal::Event| sink.on_event(e));
            match mode {
                Mode::Run => engine.run(&job, &mut sink, &cancel),
                Mode::Resume => engine.resume(&job, &mut sink, &cancel),
                Mode::Complete => engine.complete(&job, &mut sink, &cancel),
            }
        });
        let engine = &self.inner;
        match (raised, result) {
            // Ctrl-C is re-raised even when it came too late to stop the job.
            (Some(err), _) if err.is_instance_of::<PyKeyboardInterrupt>(py) => Err(interrupted(py, engine, &id)),
            (None, Err(e @ anneal::Error::Cancelled)) => Err(to_pyerr(py, py.detach(|| engine.explain(&id, e)))),
            (raised, result) => events::finish(py, result, [raised]).map(Into::into),
        }
    }
}

#[pymethods]
impl PyTrainingEngine {
    /// Validates a spec (a dict and/or keyword fields) and stores a pending job.
    #[pyo3(signature = (spec=None, /, **fields))]
    fn create_job(
        &self,
        py: Python<'_>,
        spec: Option<Bound<'_, PyAny>>,
        fields: Option<Bound<'_, PyDict>>,
    ) -> PyResult<PyJobRecord> {
        let spec = train_spec(py, spec.as_ref(), fields.as_ref())?;
        py.enter_core(|| self.inner.create_job(&spec)).map(Into::into)
    }

    /// Runs a pending job to the end (GIL released). Ctrl-C stops it cleanly: it ends
    /// `cancelled` (resumable) and `KeyboardInterrupt` is raised. `tensorboard` (a log
    /// directory) and `mlflow` (a directory or an http(s) tracking URI) also send the
    /// run's curves there.
    #[pyo3(signature = (job_id, *, on_event=None, cancel=None, progress=false, tensorboard=None, mlflow=None, mlflow_experiment=None))]
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        py: Python<'_>,
        job_id: String,
        on_event: Option<Bound<'_, PyAny>>,
        cancel: Option<Bound<'_, PyCancelToken>>,
        progress: bool,
        tensorboard: Option<Bound<'_, PyAny>>,
        mlflow: Option<Bound<'_, PyAny>>,
        mlflow_experiment: Option<Bound<'_, PyAny>>,
    ) -> PyResult<PyTrainReport> {
        let curves = Curves { tensorboard, mlflow, mlflow_experiment };
        self.execute_id(py, JobId(job_id), Mode::Run, on_event, cancel, progress, curves)
    }

    /// `create_job` + `run`: trains from a spec dict and/or keyword fields. With
    /// `if_exists="reuse"`, a job of the same spec is reused: its report is returned
    /// when it completed, it is resumed when it stopped, run when pending.
    #[pyo3(signature = (spec=None, /, *, on_event=None, cancel=None, progress=false, tensorboard=None, mlflow=None, mlflow_experiment=None, **fields))]
    #[allow(clippy::too_many_arguments)]
    fn train(
        &self,
        py: Python<'_>,
        spec: Option<Bound<'_, PyAny>>,
        on_event: Option<Bound<'_, PyAny>>,
        cancel: Option<Bound<'_, PyCancelToken>>,
        progress: bool,
        tensorboard: Option<Bound<'_, PyAny>>,
        mlflow: Option<Bound<'_, PyAny>>,
        mlflow_experiment: Option<Bound<'_, PyAny>>,
        fields: Option<Bound<'_, PyDict>>,
    ) -> PyResult<PyTrainReport> {
        let cb = callback(py, on_event, progress)?;
        let spec = train_spec(py, spec.as_ref(), fields.as_ref())?;
        // Bad curve options fail before a job is created.
        let curves = Curves { tensorboard, mlflow, mlflow_experiment }.sinks(py, &spec)?;
        let job = py.enter_core(|| self.inner.create_job(&spec))?;
        self.execute(py, job.id, Mode::Complete, cb, events::token(cancel.as_ref()), curves)
    }

    /// Continues a cancelled, failed or interrupted job from its last checkpoint.
    #[pyo3(signature = (job_id, *, on_event=None, cancel=None, progress=false, tensorboard=None, mlflow=None, mlflow_experiment=None))]
    #[allow(clippy::too_many_arguments)]
    fn resume(
        &self,
        py: Python<'_>,
        job_id: String,
        on_event: Option<Bound<'_, PyAny>>,
        cancel: Option<Bound<'_, PyCancelToken>>,
        progress: bool,
        tensorboard: Option<Bound<'_, PyAny>>,
        mlflow: Option<Bound<'_, PyAny>>,
        mlflow_experiment: Option<Bound<'_, PyAny>>,
    ) -> PyResult<PyTrainReport> {
        let curves = Curves { tensorboard, mlflow, mlflow_experiment };
        self.execute_id(py, JobId(job_id), Mode::Resume, on_event, cancel, progress, curves)
    }

    /// The job's loss curves as PNG bytes (`anneal.PngBytes`: Jupyter shows them as an
    /// image): training loss per step, eval loss at each evaluation, the learning rate
    /// below. Written to `path` too when given. Works while the job runs.
    #[pyo3(signature = (job_id, path=None, *, width=None, height=None, title=None))]
    fn plot<'py>(
        &self,
        py: Python<'py>,
        job_id: String,
        path: Option<Bound<'py, PyAny>>,
        width: Option<Bound<'py, PyAny>>,
        height: Option<Bound<'py, PyAny>>,
        title: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let opts = plot_options(py, width.as_ref(), height.as_ref(), title.as_ref())?;
        let (engine, id) = (&self.inner, JobId(job_id));
        png(py, path.as_ref(), || engine.plot(&id, &opts), |p| engine.plot_to(&id, p, &opts))
    }

    /// Runs (or resumes) the job on a background thread and returns its handle.
    fn spawn(&self, py: Python<'_>, job_id: String) -> PyResult<PyJobHandle> {
        let id = JobId(job_id);
        let handle = py.enter_core(|| self.inner.spawn(&id))?;
        Ok(PyJobHandle { handle, engine: self.inner.clone() })
    }

    /// A job by id (`interrupted` when its runner died).
    fn job(&self, py: Python<'_>, job_id: String) -> PyResult<PyJobRecord> {
        py.enter_core(|| self.inner.job(job_id)).map(Into::into)
    }

    /// Jobs matching every given filter, oldest first.
    #[pyo3(signature = (*, status=None, base_model=None, dataset=None))]
    fn jobs(
        &self,
        py: Python<'_>,
        status: Option<Bound<'_, PyAny>>,
        base_model: Option<Bound<'_, PyAny>>,
        dataset: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Vec<PyJobRecord>> {
        let value = Options::default()
            .set("status", status.as_ref())?
            .set("base_model", base_model.as_ref())?
            .set("dataset", dataset.as_ref())?
            .into_value();
        let filter: JobFilter = anneal::options_from_json(value).map_err(|e| to_pyerr(py, e))?;
        Ok(py.enter_core(|| self.inner.jobs(&filter))?.into_iter().map(Into::into).collect())
    }

    /// The job's log lines, oldest first.
    fn logs(&self, py: Python<'_>, job_id: String) -> PyResult<Vec<PyJobLog>> {
        Ok(py.enter_core(|| self.inner.logs(job_id))?.into_iter().map(Into::into).collect())
    }

    /// The job's metrics time series (train steps and evals), by step.
    fn metrics(&self, py: Python<'_>, job_id: String) -> PyResult<Vec<PyMetricPoint>> {
        Ok(py.enter_core(|| self.inner.metrics(job_id))?.into_iter().map(Into::into).collect())
    }

    /// Asks a job to stop, from any process (the catalog flag). A pending job is
    /// cancelled at once; a running one checkpoints and ends `cancelled`.
    fn cancel(&self, py: Python<'_>, job_id: String) -> PyResult<PyJobRecord> {
        py.enter_core(|| self.inner.cancel(job_id)).map(Into::into)
    }

    fn __repr__(&self) -> String {
        format!("TrainingEngine(home={})", q(&self.root))
    }
}

/// A job running on a background thread (`TrainingEngine.spawn`). Usable from any
/// thread: `cancel()`, `wait()` (GIL released; any number of callers get the same
/// outcome), and iteration over its events. The waiting is the core's `JobHandle`;
/// this class only polls it so that Ctrl-C is noticed.
#[pyclass(name = "JobHandle", module = "anneal", frozen)]
pub struct PyJobHandle {
    handle: anneal::JobHandle,
    engine: anneal::TrainingEngine,
}

#[pymethods]
impl PyJobHandle {
    #[getter]
    fn job_id(&self) -> &str {
        self.handle.job_id().as_str()
    }

    /// Asks the job to stop at its next step (it checkpoints and ends `cancelled`).
    fn cancel(&self, py: Python<'_>) {
        py.detach(|| self.handle.cancel())
    }

    /// Whether the job's thread has finished.
    #[getter]
    fn is_finished(&self, py: Python<'_>) -> bool {
        py.detach(|| self.handle.is_finished())
    }

    /// The job's loss curves so far as PNG bytes (`anneal.PngBytes`), written to
    /// `path` too when given (see `TrainingEngine.plot`).
    #[pyo3(signature = (path=None, *, width=None, height=None, title=None))]
    fn plot<'py>(
        &self,
        py: Python<'py>,
        path: Option<Bound<'py, PyAny>>,
        width: Option<Bound<'py, PyAny>>,
        height: Option<Bound<'py, PyAny>>,
        title: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let opts = plot_options(py, width.as_ref(), height.as_ref(), title.as_ref())?;
        let handle = &self.handle;
        png(py, path.as_ref(), || handle.plot(&opts), |p| handle.plot_to(p, &opts))
    }

    /// Blocks (GIL released) until the job ends; returns its report or raises its
    /// error (`CancelledError` after `cancel()`). May be called again, from any thread.
    /// Ctrl-C stops the job (it checkpoints and ends `cancelled`, resumable) and raises
    /// `KeyboardInterrupt` naming the job and how to resume it.
    fn wait(&self, py: Python<'_>) -> PyResult<PyTrainReport> {
        let id = self.handle.job_id().clone();
        loop {
            match py.enter_core(|| self.handle.wait_timeout(POLL))? {
                Some(Ok(report)) => return Ok(report.into()),
                Some(Err(e)) => return Err(to_pyerr(py, py.detach(|| self.engine.explain(&id, e)))),
                None => {
                    if let Err(err) = py.check_signals() {
                        if !err.is_instance_of::<PyKeyboardInterrupt>(py) {
                            return Err(err);
                        }
                        // Stop the job cleanly, then say how to continue it. A second
                        // Ctrl-C while it checkpoints stops waiting at once.
                        py.detach(|| self.handle.cancel());
                        loop {
                            if py.enter_core(|| self.handle.wait_timeout(POLL))?.is_some() {
                                break;
                            }
                            if py.check_signals().is_err() {
                                break;
                            }
                        }
                        return Err(interrupted(py, &self.engine, &id));
                    }
                }
            }
        }
    }

    /// The job's events as dicts, as they arrive (the same iterator as `iter(handle)`).
    fn events(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        loop {
            let (event, finished) = py.enter_core(|| {
                let finished = self.handle.is_finished();
                Ok((self.handle.next_event(if finished { Duration::ZERO } else { POLL })?, finished))
            })?;
            match event {
                Some(e) => return conv::to_py(py, &e.to_json()),
                None if finished => return Err(PyStopIteration::new_err(())),
                None => py.check_signals()?,
            }
        }
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "JobHandle(job_id={}, finished={})",
            q(self.handle.job_id().as_str()),
            if self.is_finished(py) { "True" } else { "False" }
        )
    }
}
