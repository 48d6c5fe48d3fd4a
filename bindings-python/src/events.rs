//! Event delivery to Python callbacks, Ctrl-C, and `CancelToken`.
//!
//! The core runs with the GIL released; the sink re-attaches only to deliver an event
//! (at most every 100 ms for progress, always for lifecycle events). On each delivery it
//! also checks for signals, so Ctrl-C stops a long call. When the callback raises (or
//! Ctrl-C arrives), the sink keeps the original `PyErr` and the binding re-raises it
//! unchanged.

use std::time::Duration;

use pyo3::exceptions::{PyKeyboardInterrupt, PyTypeError};
use pyo3::prelude::*;

use anneal::{Error, Event, EventSink, Throttle};

use crate::conv;
use crate::errors::to_pyerr;

/// How often progress events reach Python.
const THROTTLE: Duration = Duration::from_millis(100);

/// A token to cancel a long call from another thread.
#[pyclass(name = "CancelToken", module = "anneal", frozen)]
#[derive(Default)]
pub struct PyCancelToken {
    pub inner: anneal::CancelToken,
}

#[pymethods]
impl PyCancelToken {
    #[new]
    fn new() -> Self {
        Self::default()
    }

    /// Asks the operation using this token to stop; it raises `CancelledError`.
    fn cancel(&self) {
        self.inner.cancel()
    }

    #[getter]
    fn is_cancelled(&self) -> bool {
        self.inner.is_cancelled()
    }

    fn __repr__(&self) -> String {
        format!("CancelToken(is_cancelled={})", if self.inner.is_cancelled() { "True" } else { "False" })
    }
}

/// The core error standing in for a Python exception while the core unwinds.
pub fn stand_in(py: Python<'_>, err: &PyErr) -> Error {
    if err.is_instance_of::<PyKeyboardInterrupt>(py) {
        Error::Cancelled
    } else {
        Error::Callback(err.to_string())
    }
}

/// Called on Ctrl-C instead of failing the call; returns whether it asked the work to
/// stop (a training job then checkpoints and ends `cancelled`).
pub type OnInterrupt = Box<dyn FnMut() -> bool + Send>;

/// Delivers events to a Python callable (or nobody) and checks for signals.
pub struct PySink {
    callback: Option<Py<PyAny>>,
    raised: Option<PyErr>,
    on_interrupt: Option<OnInterrupt>,
}

impl PySink {
    fn deliver(&self, py: Python<'_>, event: &Event) -> PyResult<()> {
        if let Some(cb) = &self.callback {
            cb.call1(py, (conv::to_py(py, &event.to_json())?,))?;
        }
        Ok(())
    }
}

impl PySink {
    /// Checks for signals and delivers `event` (if any); a Python exception (Ctrl-C, or
    /// one the callback raised) is kept to re-raise and stops the work, except that
    /// Ctrl-C with `on_interrupt` asks the work to stop cleanly instead.
    fn check(&mut self, event: Option<&Event>) -> anneal::Result<()> {
        if self.raised.is_some() {
            // Already failing: still hand over the final event, ignoring what it raises.
            if let Some(event) = event.filter(|e| !e.is_progress()) {
                Python::attach(|py| {
                    let _ = self.deliver(py, event);
                });
            }
            return Ok(());
        }
        let failed = Python::attach(|py| {
            let r = py.check_signals().and_then(|_| match event {
                Some(event) => self.deliver(py, event),
                None => Ok(()),
            });
            match r {
                Ok(()) => None,
                Err(err) => {
                    let interrupt = err.is_instance_of::<PyKeyboardInterrupt>(py);
                    let e = stand_in(py, &err);
                    self.raised = Some(err);
                    Some((interrupt, e))
                }
            }
        });
        let Some((interrupt, e)) = failed else { return Ok(()) };
        // Ctrl-C: let the work stop cleanly at its next check; the KeyboardInterrupt is
        // re-raised when it returns.
        let stopping = interrupt && self.on_interrupt.as_mut().is_some_and(|stop| stop());
        if stopping {
            Ok(())
        } else {
            Err(e)
        }
    }
}

impl EventSink for PySink {
    fn on_event(&mut self, event: &Event) -> anneal::Result<()> {
        self.check(Some(event))
    }

    /// Progress only for a callback: without one, a `generate` sharing its batch with
    /// other callers is woken for its result alone, and signals are checked in `poll`.
    fn wants_progress(&self) -> bool {
        self.callback.is_some()
    }

    fn poll(&mut self) -> anneal::Result<()> {
        self.check(None)
    }
}

/// Checks that `on_event` is callable.
pub fn callback(on_event: Option<Bound<'_, PyAny>>) -> PyResult<Option<Py<PyAny>>> {
    match on_event {
        Some(cb) if cb.is_none() => Ok(None),
        Some(cb) if !cb.is_callable() => {
            Err(PyTypeError::new_err(format!("on_event must be callable, got {}", cb.get_type().name()?)))
        }
        Some(cb) => Ok(Some(cb.unbind())),
        None => Ok(None),
    }
}

/// The token to use: the caller's, or a fresh one.
pub fn token(cancel: Option<&Bound<'_, PyCancelToken>>) -> anneal::CancelToken {
    cancel.map(|c| c.get().inner.clone()).unwrap_or_default()
}

/// Runs a long core call with the GIL released, events going to `on_event`; a Python
/// exception raised by the callback (or Ctrl-C) is re-raised unchanged.
pub fn run<T: Send>(
    py: Python<'_>,
    on_event: Option<Py<PyAny>>,
    f: impl FnOnce(&mut dyn EventSink) -> anneal::Result<T> + Send,
) -> PyResult<T> {
    let (result, raised) = run_raw(py, on_event, f);
    finish(py, result, [raised])
}

/// [`run`] without the error mapping: the core result and the kept Python exception.
pub fn run_raw<T: Send>(
    py: Python<'_>,
    on_event: Option<Py<PyAny>>,
    f: impl FnOnce(&mut dyn EventSink) -> anneal::Result<T> + Send,
) -> (anneal::Result<T>, Option<PyErr>) {
    run_interruptible(py, on_event, None, f)
}

/// [`run_raw`] where Ctrl-C calls `on_interrupt` (when given) instead of failing the
/// next event; the KeyboardInterrupt is still kept and re-raised.
pub fn run_interruptible<T: Send>(
    py: Python<'_>,
    on_event: Option<Py<PyAny>>,
    on_interrupt: Option<OnInterrupt>,
    f: impl FnOnce(&mut dyn EventSink) -> anneal::Result<T> + Send,
) -> (anneal::Result<T>, Option<PyErr>) {
    let mut sink = Throttle::new(PySink { callback: on_event, raised: None, on_interrupt }, THROTTLE);
    let result = py.detach(|| f(&mut sink));
    (result, sink.into_inner().raised)
}

/// The result of a core call, or the first Python exception kept while it ran.
pub fn finish<T, const N: usize>(py: Python<'_>, result: anneal::Result<T>, raised: [Option<PyErr>; N]) -> PyResult<T> {
    match result {
        Ok(v) => Ok(v),
        Err(e) => match raised.into_iter().flatten().next() {
            Some(err) => Err(err),
            None => Err(to_pyerr(py, e)),
        },
    }
}
