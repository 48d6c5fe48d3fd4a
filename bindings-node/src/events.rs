//! Progress events, cancellation and the Promise plumbing of long calls.
//!
//! Long calls run on the libuv thread pool as an `AsyncTask`. Events go to `onEvent`
//! through a `ThreadsafeFunction` in non-blocking mode, throttled to one progress event
//! per 100 ms (lifecycle events always pass). Event objects are `anneal::Event` in the
//! core's camelCase spelling (the keys of `metrics` as given), with its `type` values
//! (`task_started`, `task_progress`, `task_finished`, ...).
//!
//! Ordering: every event of a call reaches `onEvent` before its Promise settles. The
//! events and the settling reach the event loop through different queues, so the worker
//! waits (at most [`FLUSH_WAIT`]) until the JS thread has run every event it queued.
//!
//! An exception thrown by `onEvent` does not stop the call: it is reported as an
//! `uncaughtException` (as for any callback run by the event loop) and the Promise
//! still settles. Use a `CancelToken` (`cancel`) or an `AbortSignal` (`signal`) to stop a call.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use napi::bindgen_prelude::{AsyncTask, Unknown};
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode, UnknownReturnValue};
use napi::{Env, Status, Task};
use napi_derive::napi;
use serde_json::Value;

use crate::conv::{self, js, CallOptions, Detach, JsJson};
use crate::errors;

/// Converts an argument of a long call; a bad one rejects the Promise.
macro_rules! arg {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return $crate::events::LongTask::failed(e),
        }
    };
}
pub(crate) use arg;

/// The `onEvent` callback as the worker thread sees it: `(event) => void`.
pub(crate) type OnEvent = ThreadsafeFunction<Value, UnknownReturnValue, Value, Status, false>;

/// Progress events are delivered at most this often.
pub(crate) const THROTTLE: Duration = Duration::from_millis(100);

/// Cooperative cancellation for long calls: pass it as `cancel` and call `cancel()`.
/// The call then rejects with code `cancelled` and leaves nothing behind.
#[napi]
pub struct CancelToken {
    pub(crate) inner: anneal::CancelToken,
}

#[napi]
impl CancelToken {
    #[napi(constructor)]
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Self { inner: anneal::CancelToken::new() }
    }

    /// Asks every call holding this token to stop at its next check.
    #[napi(catch_unwind)]
    pub fn cancel(&self) {
        self.inner.cancel()
    }

    /// Whether `cancel()` was called.
    #[napi(getter, catch_unwind)]
    pub fn is_cancelled(&self) -> bool {
        self.inner.is_cancelled()
    }
}

/// How long a finished call waits for its queued events to reach `onEvent` (a JS
/// thread that is shutting down never runs them).
pub(crate) const FLUSH_WAIT: Duration = Duration::from_secs(5);

/// Events queued for the JS thread and not yet run.
#[derive(Default)]
pub(crate) struct InFlight {
    queued: Mutex<u64>,
    ran: Condvar,
}

impl InFlight {
    fn done(&self) {
        if let Ok(mut n) = self.queued.lock() {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.ran.notify_all();
            }
        }
    }

    /// Blocks until every queued event ran on the JS thread, or `FLUSH_WAIT` passed.
    pub(crate) fn flush(&self) {
        let Ok(n) = self.queued.lock() else { return };
        let _ = self.ran.wait_timeout_while(n, FLUSH_WAIT, |n| *n > 0);
    }
}

/// Forwards events to the JS callback (never blocks the worker); [`JsSink::flush`]
/// waits until they all ran.
pub(crate) struct JsSink {
    on_event: Option<OnEvent>,
    in_flight: Arc<InFlight>,
}

impl JsSink {
    pub(crate) fn new(on_event: Option<OnEvent>) -> Self {
        Self { on_event, in_flight: Arc::default() }
    }

    /// The counter of queued events, to [`InFlight::flush`] after the sink is gone.
    pub(crate) fn in_flight(&self) -> Arc<InFlight> {
        self.in_flight.clone()
    }
}

impl anneal::EventSink for JsSink {
    /// Progress only for an `onEvent` callback: without one, a `generate` sharing its
    /// batch with other callers is woken for its result alone.
    fn wants_progress(&self) -> bool {
        self.on_event.is_some()
    }

    fn on_event(&mut self, event: &anneal::Event) -> anneal::Result<()> {
        if let Some(f) = &self.on_event {
            let in_flight = self.in_flight.clone();
            if let Ok(mut n) = in_flight.queued.lock() {
                *n += 1;
            }
            let ran = in_flight.clone();
            // A full or closing queue only drops a progress report; the call goes on. An
            // exception thrown by onEvent is handed back here and rethrown as uncaught.
            let status =
                f.call_with_return_value(js!(*event)?, ThreadsafeFunctionCallMode::NonBlocking, move |r, _| {
                    ran.done();
                    r.map(|_| ())
                });
            if status != Status::Ok {
                in_flight.done();
            }
        }
        Ok(())
    }
}

type Work = Box<dyn FnOnce(Value, &mut dyn anneal::EventSink, &anneal::CancelToken) -> anneal::Result<Value> + Send>;

/// A long core call run on the libuv pool; resolves to its JSON result, rejects with a
/// coded error.
pub struct LongTask {
    work: Option<Work>,
    options: Value,
    on_event: Option<OnEvent>,
    cancel: anneal::CancelToken,
    detach: Option<Detach>,
    error: Option<anneal::Error>,
}

impl LongTask {
    /// Reads `options` on the JS thread, then runs `work(options_json, sink, cancel)` on
    /// the pool. A bad options object rejects the Promise (it never throws).
    pub(crate) fn spawn(
        options: Option<Unknown<'_>>,
        events: bool,
        work: impl FnOnce(Value, &mut dyn anneal::EventSink, &anneal::CancelToken) -> anneal::Result<Value> + Send + 'static,
    ) -> AsyncTask<LongTask> {
        match CallOptions::parse(options, events) {
            Ok(o) => AsyncTask::new(LongTask {
                work: Some(Box::new(work)),
                options: o.json,
                on_event: o.on_event,
                cancel: o.cancel,
                detach: o.detach,
                error: None,
            }),
            Err(e) => Self::failed(e),
        }
    }

    /// A task that rejects with `error` (argument errors found before any work).
    pub(crate) fn failed(error: anneal::Error) -> AsyncTask<LongTask> {
        AsyncTask::new(LongTask {
            work: None,
            options: Value::Null,
            on_event: None,
            cancel: anneal::CancelToken::new(),
            detach: None,
            error: Some(error),
        })
    }
}

impl Task for LongTask {
    type Output = Value;
    type JsValue = JsJson;

    fn compute(&mut self) -> napi::Result<Value> {
        let result = match (self.error.take(), self.work.take()) {
            (Some(e), _) => Err(e),
            (None, None) => Err(anneal::Error::Internal("task ran twice".into())),
            (None, Some(work)) => {
                let js = JsSink::new(self.on_event.take());
                let in_flight = js.in_flight();
                let mut sink = anneal::Throttle::new(js, THROTTLE);
                let options = std::mem::take(&mut self.options);
                let cancel = self.cancel.clone();
                let result =
                    catch_unwind(AssertUnwindSafe(move || work(options, &mut sink, &cancel))).unwrap_or_else(|p| {
                        let msg = p
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| p.downcast_ref::<String>().cloned())
                            .unwrap_or_default();
                        Err(anneal::Error::Internal(format!("panic in anneal: {msg}")))
                    });
                in_flight.flush();
                result
            }
        };
        result.map_err(|e| {
            let out = napi::Error::new(Status::GenericFailure, e.to_string());
            self.error = Some(e);
            out
        })
    }

    fn resolve(&mut self, _env: Env, output: Value) -> napi::Result<JsJson> {
        Ok(JsJson(output))
    }

    fn reject(&mut self, env: Env, err: napi::Error) -> napi::Result<JsJson> {
        match self.error.take() {
            Some(e) => Err(errors::to_js(&env, e)),
            None => Err(err),
        }
    }

    fn finally(self, env: Env) -> napi::Result<()> {
        conv::detach(&env, self.detach)
    }
}
