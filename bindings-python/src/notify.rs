//! `Webhooks` (`home.webhooks()`), its background `Deliverer`, and
//! `anneal.verify_signature` for receivers. Records (webhooks, deliveries, reports) are
//! plain dicts in the core's serde form. Every call that touches the catalog or the
//! network runs with the GIL released, so a receiver served by Python threads in the
//! same process keeps answering.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anneal::{DeliveryFilter, Event, WebhookOptions};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use crate::conv::{self, q, Options};
use crate::errors::{to_pyerr, EnterCore};

/// A core value as a plain Python object (dict, list, ...), in its serde form.
macro_rules! plain {
    ($py:expr, $value:expr) => {
        $crate::conv::json_to_py($py, serde_json::to_value(&$value))
    };
}
pub(crate) use plain;

/// A time argument: unix seconds (`time.time()`) or anything with `.timestamp()`
/// (`datetime`); `None` is now.
fn unix_time(py: Python<'_>, t: Option<&Bound<'_, PyAny>>, field: &str) -> PyResult<SystemTime> {
    let Some(t) = t.filter(|t| !t.is_none()) else { return Ok(SystemTime::now()) };
    let secs: f64 = if t.hasattr("timestamp")? { t.call_method0("timestamp")?.extract()? } else { t.extract()? };
    if !secs.is_finite() || secs < 0.0 {
        let e = anneal::Error::config(field, format!("must be a time after 1970 in unix seconds, got {secs}"));
        return Err(to_pyerr(py, e));
    }
    Ok(UNIX_EPOCH + Duration::from_secs_f64(secs))
}

/// A duration in milliseconds (a non-negative integer).
fn millis(py: Python<'_>, ms: i64, field: &str) -> PyResult<Duration> {
    u64::try_from(ms)
        .map(Duration::from_millis)
        .map_err(|_| to_pyerr(py, anneal::Error::config(field, format!("must be 0 or more milliseconds, got {ms}"))))
}

/// An event dict (as `on_event` callbacks receive it) as the core's event;
/// `invalid_config` naming `event` (or `event.<field>`) when it is not one.
pub(crate) fn event_from_py(py: Python<'_>, event: &Bound<'_, PyAny>) -> PyResult<Event> {
    let value = conv::to_json(event, "event")?;
    if !value.is_object() {
        return Err(to_pyerr(py, anneal::Error::config("event", "expected an event dict ({\"type\": ..., ...})")));
    }
    anneal::options_from_json(value).map_err(|e| {
        let e = match e {
            anneal::Error::InvalidConfig { field, reason } if field == "options" => {
                anneal::Error::config("event", reason)
            }
            anneal::Error::InvalidConfig { field, reason } => anneal::Error::config(format!("event.{field}"), reason),
            other => other,
        };
        to_pyerr(py, e)
    })
}

/// The webhooks of a home and their outbox: register receivers, enqueue events, deliver
/// them (signed, retried, at least once, deduplicated by `webhook-id`).
#[pyclass(name = "Webhooks", module = "anneal", frozen)]
pub struct PyWebhooks {
    pub inner: anneal::Webhooks,
    pub root: String,
}

#[pymethods]
impl PyWebhooks {
    /// Registers a webhook at `url` (absolute http(s)). Without `secret` a new one is
    /// generated; it is in the returned dict (`secret`): give it to the receiver.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (url, *, format=None, secret=None, events=None, timeout_ms=None, max_attempts=None,
                        retry_base_ms=None, retry_max_ms=None))]
    fn add<'py>(
        &self,
        py: Python<'py>,
        url: String,
        format: Option<Bound<'_, PyAny>>,
        secret: Option<Bound<'_, PyAny>>,
        events: Option<Bound<'_, PyAny>>,
        timeout_ms: Option<Bound<'_, PyAny>>,
        max_attempts: Option<Bound<'_, PyAny>>,
        retry_base_ms: Option<Bound<'_, PyAny>>,
        retry_max_ms: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let value = Options::default()
            .set("format", format.as_ref())?
            .set("secret", secret.as_ref())?
            .set("events", events.as_ref())?
            .set("timeout_ms", timeout_ms.as_ref())?
            .set("max_attempts", max_attempts.as_ref())?
            .set("retry_base_ms", retry_base_ms.as_ref())?
            .set("retry_max_ms", retry_max_ms.as_ref())?
            .into_value();
        let opts: WebhookOptions = anneal::options_from_json(value).map_err(|e| to_pyerr(py, e))?;
        let w = py.enter_core(|| self.inner.add(&url, &opts))?;
        plain!(py, w)
    }

    /// Every registered webhook, oldest first.
    fn list<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        plain!(py, py.enter_core(|| self.inner.list())?)
    }

    /// One webhook by id (`NotFoundError` when there is none).
    fn get<'py>(&self, py: Python<'py>, id: String) -> PyResult<Bound<'py, PyAny>> {
        plain!(py, py.enter_core(|| self.inner.get(&id))?)
    }

    /// Removes a webhook with its outbox rows (pending ones are dropped).
    fn remove(&self, py: Python<'_>, id: String) -> PyResult<()> {
        py.enter_core(|| self.inner.remove(&id))
    }

    /// Adds an event (a dict as `on_event` receives it) to the outbox of every webhook
    /// that wants it; returns the deliveries' ids (`webhook-id`s). `on_event=
    /// webhooks.enqueue` routes a call's events to the webhooks.
    fn enqueue(&self, py: Python<'_>, event: Bound<'_, PyAny>) -> PyResult<Vec<String>> {
        let event = event_from_py(py, &event)?;
        py.enter_core(|| self.inner.enqueue(&event))
    }

    /// One delivery pass: sends every row due at `now` (unix seconds or a datetime;
    /// default: now) once, then returns what it did.
    #[pyo3(signature = (now=None))]
    fn deliver_due<'py>(&self, py: Python<'py>, now: Option<Bound<'_, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
        let now = unix_time(py, now.as_ref(), "now")?;
        plain!(py, py.enter_core(|| self.inner.deliver_due(now))?)
    }

    /// Delivers due rows every `interval_ms` on a background thread until the returned
    /// `Deliverer` is stopped (also a context manager).
    #[pyo3(signature = (interval_ms=1000))]
    fn spawn(&self, py: Python<'_>, interval_ms: i64) -> PyResult<PyDeliverer> {
        let interval = millis(py, interval_ms, "interval_ms")?;
        let d = py.enter_core(|| self.inner.spawn(interval))?;
        Ok(PyDeliverer { inner: Mutex::new(Some(d)) })
    }

    /// Outbox rows, oldest first, optionally of one webhook, in one status, at most `limit`.
    #[pyo3(signature = (*, webhook_id=None, status=None, limit=None))]
    fn deliveries<'py>(
        &self,
        py: Python<'py>,
        webhook_id: Option<Bound<'_, PyAny>>,
        status: Option<Bound<'_, PyAny>>,
        limit: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let value = Options::default()
            .set("webhook_id", webhook_id.as_ref())?
            .set("status", status.as_ref())?
            .set("limit", limit.as_ref())?
            .into_value();
        let filter: DeliveryFilter = anneal::options_from_json(value).map_err(|e| to_pyerr(py, e))?;
        plain!(py, py.enter_core(|| self.inner.deliveries(&filter))?)
    }

    /// One outbox row by id (the `webhook-id`).
    fn delivery<'py>(&self, py: Python<'py>, id: String) -> PyResult<Bound<'py, PyAny>> {
        plain!(py, py.enter_core(|| self.inner.delivery(&id))?)
    }

    /// Puts `failed` rows (of one webhook, or all) back to pending, due now; returns how many.
    #[pyo3(signature = (webhook_id=None))]
    fn retry_failed(&self, py: Python<'_>, webhook_id: Option<String>) -> PyResult<usize> {
        py.enter_core(|| self.inner.retry_failed(webhook_id.as_deref()))
    }

    fn __repr__(&self) -> String {
        format!("Webhooks(home={})", q(&self.root))
    }
}

/// The background deliverer of `Webhooks.spawn`. `stop()` (or leaving its `with`
/// block) stops it after the request in flight; dropping it stops it too.
#[pyclass(name = "Deliverer", module = "anneal", frozen)]
pub struct PyDeliverer {
    inner: Mutex<Option<anneal::Deliverer>>,
}

impl PyDeliverer {
    fn take(&self) -> Option<anneal::Deliverer> {
        self.inner.lock().ok().and_then(|mut d| d.take())
    }
}

#[pymethods]
impl PyDeliverer {
    /// Stops the thread and waits for it (the GIL is released meanwhile). Idempotent.
    fn stop(&self, py: Python<'_>) -> PyResult<()> {
        match self.take() {
            Some(d) => py.enter_core(move || d.stop()),
            None => Ok(()),
        }
    }

    /// Asks the thread to stop without waiting.
    fn cancel(&self) {
        if let Ok(d) = self.inner.lock() {
            if let Some(d) = d.as_ref() {
                d.cancel();
            }
        }
    }

    /// False once stopped.
    #[getter]
    fn running(&self) -> bool {
        self.inner.lock().map(|d| d.is_some()).unwrap_or(false)
    }

    /// The error of the latest failed pass as `{code, message}`, or None.
    #[getter]
    fn last_error<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let e = self.inner.lock().ok().and_then(|d| d.as_ref().and_then(|d| d.last_error()));
        plain!(py, e.as_ref().map(anneal::ErrorInfo::from))
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
        format!("Deliverer(running={})", if self.running() { "True" } else { "False" })
    }
}

impl Drop for PyDeliverer {
    fn drop(&mut self) {
        // Never wait for a request in flight while holding the GIL (the receiver may
        // be a Python thread of this process): the join happens on a thread of its own.
        if let Some(d) = self.take() {
            d.cancel();
            let _ = std::thread::Builder::new().name("anneal-webhooks-stop".into()).spawn(move || drop(d));
        }
    }
}

/// Verifies a webhook delivery (Standard Webhooks): the `webhook-id`,
/// `webhook-timestamp` and `webhook-signature` headers and the raw body (bytes or
/// str). Returns None when one signature matches and the timestamp is within
/// `tolerance_ms` of now; raises `InvalidDataError` (field `webhook-signature` or
/// `webhook-timestamp`) otherwise, `InvalidConfigError` (field `secret`) for a
/// malformed secret.
#[pyfunction]
#[pyo3(signature = (secret, id, timestamp, body, signature, tolerance_ms=300_000))]
pub fn verify_signature(
    py: Python<'_>,
    secret: String,
    id: String,
    timestamp: Bound<'_, PyAny>,
    body: Bound<'_, PyAny>,
    signature: String,
    tolerance_ms: i64,
) -> PyResult<()> {
    let timestamp: String = match timestamp.cast::<PyString>() {
        Ok(s) => s.to_str()?.to_owned(),
        Err(_) => timestamp.extract::<i64>()?.to_string(),
    };
    let body: Vec<u8> = match body.cast::<PyBytes>() {
        Ok(b) => b.as_bytes().to_vec(),
        Err(_) => body.extract::<String>()?.into_bytes(),
    };
    let tolerance = millis(py, tolerance_ms, "tolerance_ms")?;
    anneal::verify_signature(&secret, &id, &timestamp, &body, &signature, tolerance).map_err(|e| to_pyerr(py, e))
}

/// `verify_signature` and the classes.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyWebhooks>()?;
    m.add_class::<PyDeliverer>()?;
    m.add_function(wrap_pyfunction!(verify_signature, m)?)
}
