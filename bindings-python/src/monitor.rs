//! `Monitors` (`home.monitors()`), `Monitor` and `MonitorHandle`: retraining policies
//! on production classifiers, run one pass at a time (`tick`) or on a background thread
//! (`spawn`). Policies are dicts read by the core (`RetrainPolicy`: unknown keys and bad
//! values are `InvalidConfigError` naming the field, `triggers.accuracy_floor`);
//! records, reports and decisions are plain dicts in the core's serde form.
//!
//! `tick`, `approve`, `rollback` and `MonitorHandle.stop` run with the GIL released;
//! events reach `on_event` as for training (the sink re-attaches to deliver one). A
//! spawned monitor calls `on_event` from its own thread; an exception raised there is
//! reported with `sys.unraisablehook` and the monitor goes on.

use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyDict;
use serde_json::{Map, Value};

use anneal::{Event, EventSink, MonitorOptions, RetrainPolicy, TickOptions};

use crate::conv::{self, q, Options};
use crate::errors::{to_pyerr, EnterCore};
use crate::events::{self, PyCancelToken};
use crate::notify::plain;

/// A policy dict as the core's `RetrainPolicy` (validated by the core when used).
/// Values that JSON cannot hold are named by their path inside the policy
/// (`triggers.accuracy_floor`), as the core names its fields.
fn policy(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<RetrainPolicy> {
    let Ok(dict) = obj.cast::<PyDict>() else {
        let e = anneal::Error::config(
            "policy",
            format!(
                "expected a dict of RetrainPolicy fields (triggers, guards, action, gate), got {}",
                obj.get_type().name()?
            ),
        );
        return Err(to_pyerr(py, e));
    };
    let mut map = Map::new();
    for (k, v) in dict.iter() {
        let key: String = k.extract()?;
        let value = conv::to_json(&v, &key)?;
        map.insert(key, value);
    }
    anneal::options_from_json(Value::Object(map)).map_err(|e| to_pyerr(py, e))
}

/// The monitors of a home (`home.monitors()`).
#[pyclass(name = "Monitors", module = "anneal", frozen)]
pub struct PyMonitors {
    pub inner: anneal::Monitors,
    pub root: String,
}

#[pymethods]
impl PyMonitors {
    /// Creates a monitor of `model_name`'s production classifier with `policy` (a dict of
    /// `triggers`, `guards`, `action`, `gate`). `name` defaults to the model name. A bad
    /// policy raises `InvalidConfigError` naming the field; a taken name
    /// `AlreadyExistsError`; a model name without a production classifier
    /// `InvalidConfigError` (field `model`).
    #[pyo3(signature = (model_name, policy, *, name=None))]
    fn create(
        &self,
        py: Python<'_>,
        model_name: String,
        policy: Bound<'_, PyAny>,
        name: Option<Bound<'_, PyAny>>,
    ) -> PyResult<PyMonitor> {
        let policy = self::policy(py, &policy)?;
        let value = Options::default().set("name", name.as_ref())?.into_value();
        let opts: MonitorOptions = anneal::options_from_json(value).map_err(|e| to_pyerr(py, e))?;
        py.enter_core(|| self.inner.create(&model_name, &policy, &opts)).map(|inner| PyMonitor { inner })
    }

    /// A monitor by name or id (`NotFoundError` when there is none).
    fn get(&self, py: Python<'_>, name: String) -> PyResult<PyMonitor> {
        py.enter_core(|| self.inner.get(&name)).map(|inner| PyMonitor { inner })
    }

    /// Every monitor's record (policy and state), by name.
    fn list<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        plain!(py, py.enter_core(|| self.inner.list())?)
    }

    /// Deletes a monitor and its decision trail (its models, jobs and datasets stay).
    fn delete(&self, py: Python<'_>, name: String) -> PyResult<()> {
        py.enter_core(|| self.inner.delete(&name))
    }

    fn __repr__(&self) -> String {
        format!("Monitors(home={})", q(&self.root))
    }
}

/// One monitor: its policy and state (`record()`), its decision trail, one pass
/// (`tick()`), approval of a waiting candidate, rollback, and `spawn()`.
#[pyclass(name = "Monitor", module = "anneal", frozen)]
pub struct PyMonitor {
    inner: anneal::Monitor,
}

/// A core call with events, the GIL released, and Ctrl-C cancelling `cancel` (a
/// retraining job then ends `cancelled`; the next tick resumes it). An exception raised
/// by `on_event` is re-raised when the call returns, even when the call succeeded (its
/// changes are committed: the monitor's events go out after each commit).
fn run_monitor<T: Send>(
    py: Python<'_>,
    on_event: Option<Py<PyAny>>,
    cancel: anneal::CancelToken,
    f: impl FnOnce(&mut dyn EventSink, &anneal::CancelToken) -> anneal::Result<T> + Send,
) -> PyResult<T> {
    let stop = {
        let token = cancel.clone();
        Box::new(move || {
            token.cancel();
            true
        }) as events::OnInterrupt
    };
    let (result, raised) = events::run_interruptible(py, on_event, Some(stop), move |sink| f(sink, &cancel));
    match raised {
        Some(err) => Err(err),
        None => result.map_err(|e| to_pyerr(py, e)),
    }
}

#[pymethods]
impl PyMonitor {
    /// The monitor's name.
    #[getter]
    fn name(&self) -> &str {
        self.inner.name()
    }

    /// The monitor's policy and state as stored now (a dict).
    fn record<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        plain!(py, py.enter_core(|| self.inner.record())?)
    }

    /// The decision trail, oldest first (dicts with `kind`, `reason`, `details`, ...).
    fn decisions<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        plain!(py, py.enter_core(|| self.inner.decisions())?)
    }

    /// Feeds new data to the monitor of a language model: `dataset` (id or name; text,
    /// completion, instruction or chat records) waits for the next retrain, which
    /// trains on it; until then its rows count for `triggers.new_rows` and make the
    /// window the metric and drift triggers read. Returns the feed (a dict). A dataset
    /// fed before raises `AlreadyExistsError`; a classifier's monitor (it takes
    /// labelled predictions) or a tabular or image dataset `InvalidConfigError`.
    fn feed<'py>(&self, py: Python<'py>, dataset: String) -> PyResult<Bound<'py, PyAny>> {
        plain!(py, py.enter_core(|| self.inner.feed(dataset))?)
    }

    /// The datasets fed to the monitor, oldest first (`job_id`: the retrain that took
    /// each, none while it waits).
    fn feeds<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        plain!(py, py.enter_core(|| self.inner.feeds())?)
    }

    /// Replaces the policy (validated first; the state is kept); returns the record.
    fn set_policy<'py>(&self, py: Python<'py>, policy: Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let policy = self::policy(py, &policy)?;
        plain!(py, py.enter_core(|| self.inner.set_policy(&policy))?)
    }

    /// One pass (GIL released): follows the retraining job in flight or checks the
    /// triggers and guards and maybe retrains, gates and promotes. Returns the tick
    /// report (a dict: `outcome`, `reason`, `trigger`, `job_id`, `candidate`, ...).
    /// `run_jobs=False` only submits a retraining job. Events (`drift_detected`,
    /// `retrain_started`, the job's, `candidate_evaluated`, `promoted`, `monitor_error`)
    /// go to `on_event`. A failed pass is recorded and raised. Ctrl-C (or `cancel`)
    /// stops a retraining job it runs (the job ends `cancelled`; the next tick resumes it).
    #[pyo3(signature = (*, on_event=None, run_jobs=None, cancel=None))]
    fn tick<'py>(
        &self,
        py: Python<'py>,
        on_event: Option<Bound<'py, PyAny>>,
        run_jobs: Option<Bound<'py, PyAny>>,
        cancel: Option<Bound<'py, PyCancelToken>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let value = Options::default().set("run_jobs", run_jobs.as_ref())?.into_value();
        let opts: TickOptions = anneal::options_from_json(value).map_err(|e| to_pyerr(py, e))?;
        let cb = events::callback(on_event)?;
        let monitor = self.inner.clone();
        let report =
            run_monitor(py, cb, events::token(cancel.as_ref()), move |sink, c| monitor.tick_with(sink, &opts, c))?;
        plain!(py, report)
    }

    /// Promotes the candidate a `manual` or `shadow` gate left waiting (`production`
    /// moves to it, the decision is recorded and `promoted` is emitted, mode `manual`).
    /// Returns what moved (a dict). Nothing waiting raises `NotFoundError`.
    #[pyo3(signature = (reason=None, *, on_event=None))]
    fn approve<'py>(
        &self,
        py: Python<'py>,
        reason: Option<String>,
        on_event: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let cb = events::callback(on_event)?;
        let monitor = self.inner.clone();
        let moved =
            run_monitor(py, cb, anneal::CancelToken::new(), move |sink, _| monitor.approve(reason.as_deref(), sink))?;
        plain!(py, moved)
    }

    /// Moves `production` back to `previous`, records the decision and emits
    /// `rolled_back`. Returns what moved (a dict).
    #[pyo3(signature = (reason=None, *, on_event=None))]
    fn rollback<'py>(
        &self,
        py: Python<'py>,
        reason: Option<String>,
        on_event: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let cb = events::callback(on_event)?;
        let monitor = self.inner.clone();
        let moved =
            run_monitor(py, cb, anneal::CancelToken::new(), move |sink, _| monitor.rollback(reason.as_deref(), sink))?;
        plain!(py, moved)
    }

    /// Ticks every `interval_secs` seconds on a background thread until the returned
    /// handle is stopped (also a context manager; dropping it stops it too). `on_event`
    /// is called from that thread; an exception it raises goes to
    /// `sys.unraisablehook` and the monitor goes on. A failing tick is recorded and
    /// kept as `handle.last_error`; the loop goes on.
    #[pyo3(signature = (interval_secs, on_event=None))]
    fn spawn(
        &self,
        py: Python<'_>,
        interval_secs: f64,
        on_event: Option<Bound<'_, PyAny>>,
    ) -> PyResult<PyMonitorHandle> {
        if !(interval_secs.is_finite() && interval_secs > 0.0 && interval_secs < 1e9) {
            let e = anneal::Error::config(
                "interval_secs",
                format!("must be a positive number of seconds (got {interval_secs})"),
            );
            return Err(to_pyerr(py, e));
        }
        let cb = events::callback(on_event)?;
        let sink = anneal::Throttle::new(SpawnSink { callback: cb }, THROTTLE);
        let interval = Duration::from_secs_f64(interval_secs);
        let handle = py.enter_core(|| self.inner.spawn(interval, sink))?;
        Ok(PyMonitorHandle { inner: Arc::new(handle) })
    }

    fn __repr__(&self) -> String {
        format!("Monitor({})", q(self.inner.name()))
    }
}

/// How often progress events of a spawned monitor's jobs reach Python.
const THROTTLE: Duration = Duration::from_millis(100);

/// Delivers a spawned monitor's events to a Python callable from its thread. What the
/// callable raises is reported (`sys.unraisablehook`), never returned to the core: the
/// monitor's work goes on. Nothing is delivered once the interpreter is shutting down.
struct SpawnSink {
    callback: Option<Py<PyAny>>,
}

impl EventSink for SpawnSink {
    fn on_event(&mut self, event: &Event) -> anneal::Result<()> {
        let Some(cb) = &self.callback else { return Ok(()) };
        Python::try_attach(|py| {
            let r = conv::to_py(py, &event.to_json()).and_then(|e| cb.call1(py, (e,)));
            if let Err(err) = r {
                err.write_unraisable(py, Some(cb.bind(py)));
            }
        });
        Ok(())
    }
}

/// A monitor ticking on a background thread (`Monitor.spawn`). `stop()` (or leaving its
/// `with` block) stops it after the current tick and waits (GIL released); `cancel()`
/// also cancels a retraining job that tick runs (the next tick resumes it).
#[pyclass(name = "MonitorHandle", module = "anneal", frozen)]
pub struct PyMonitorHandle {
    inner: Arc<anneal::MonitorHandle>,
}

#[pymethods]
impl PyMonitorHandle {
    /// Stops after the current tick (a retraining job it runs finishes) and waits for
    /// the thread, with the GIL released. Idempotent.
    fn stop(&self, py: Python<'_>) -> PyResult<()> {
        let h = self.inner.clone();
        let r = py.enter_core(move || h.stop());
        // Ctrl-C while waiting: the thread still stops after its tick.
        py.check_signals()?;
        r
    }

    /// Asks the thread to stop without waiting, cancelling a retraining job the current
    /// tick runs (it ends `cancelled`; the next tick of this monitor resumes it).
    fn cancel(&self) {
        self.inner.cancel();
    }

    /// False once stopped.
    #[getter]
    fn running(&self) -> bool {
        self.inner.is_running()
    }

    /// Ticks run so far.
    #[getter]
    fn ticks(&self) -> u64 {
        self.inner.ticks()
    }

    /// The error of the last failed tick as `{code, message}`, or None.
    #[getter]
    fn last_error<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        plain!(py, self.inner.last_error().as_ref().map(anneal::ErrorInfo::from))
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*args))]
    fn __exit__(&self, py: Python<'_>, args: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        let _ = args;
        self.stop(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        format!("MonitorHandle(running={}, ticks={})", if self.running() { "True" } else { "False" }, self.ticks())
    }
}

impl Drop for PyMonitorHandle {
    fn drop(&mut self) {
        // Never join while holding the GIL (the thread may be waiting for it to deliver
        // an event): the join happens on a thread of its own.
        if self.inner.is_running() {
            let h = self.inner.clone();
            let _ = std::thread::Builder::new().name("anneal-monitor-stop".into()).spawn(move || h.stop());
        }
    }
}

/// The classes.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyMonitors>()?;
    m.add_class::<PyMonitor>()?;
    m.add_class::<PyMonitorHandle>()
}
