//! `Monitors` (`home.monitors()`), `Monitor` and `MonitorHandle`: retraining policies on
//! production classifiers, run one pass at a time (`tick`) or on a background thread
//! (`spawn`). Policies are objects with camelCase keys read by the core
//! (`RetrainPolicy`: unknown keys and bad values throw `invalid_config` naming the field,
//! `triggers.accuracyFloor`); records, reports and decisions are the core's, in camelCase
//! (`details` is foreign JSON and keeps its keys).
//!
//! Creating, listing, reading and re-configuring monitors touch a few catalog rows and
//! are synchronous, like the registry's alias calls. `tick` (which may train a model),
//! `approve`, `rollback` and `MonitorHandle.stop` return Promises and run on the libuv
//! pool, so the event loop never waits for them.

use std::sync::Arc;
use std::time::Duration;

use napi::bindgen_prelude::{AsyncTask, FromNapiValue, JsValue, Unknown, ValueType};
use napi::Env;
use napi_derive::napi;
use serde_json::Value;

use crate::conv::{self, js, options, JsJson};
use crate::errors;
use crate::events::{JsSink, LongTask, OnEvent, THROTTLE};
use crate::home::Home;

/// A policy object as the core's `RetrainPolicy` (validated by the core when used).
fn policy(v: Unknown<'_>) -> anneal::Result<anneal::RetrainPolicy> {
    let is_object = v.get_type().ok() == Some(ValueType::Object) && !v.is_array().unwrap_or(true);
    if !is_object {
        return Err(anneal::Error::config(
            "policy",
            "expected an object of RetrainPolicy fields (triggers, guards, action, gate)",
        ));
    }
    options!(conv::plain(Some(v))?)
}

#[napi]
impl Home {
    /// Retraining monitors of this home's production classifiers.
    #[napi(catch_unwind)]
    pub fn monitors(&self) -> Monitors {
        Monitors { inner: self.inner.monitors() }
    }
}

/// The monitors of a home (`home.monitors()`).
#[napi]
pub struct Monitors {
    inner: anneal::Monitors,
}

#[napi]
impl Monitors {
    /// Creates a monitor of `modelName`'s production classifier with `policy`
    /// (`{ triggers, guards, action, gate }`). `options.name` defaults to the model name.
    /// A bad policy throws `invalid_config` naming the field; a taken name
    /// `already_exists`; a model name without a production classifier `invalid_config`
    /// (field `model`).
    #[napi(catch_unwind)]
    pub fn create(
        &self,
        env: Env,
        #[napi(ts_arg_type = "string")] model_name: Unknown<'_>,
        #[napi(ts_arg_type = "RetrainPolicy")] policy: Unknown<'_>,
        #[napi(ts_arg_type = "MonitorOptions")] options: Option<Unknown<'_>>,
    ) -> napi::Result<Monitor> {
        errors::sync(&env, || {
            let model_name = conv::string(model_name, "modelName")?;
            let policy = self::policy(policy)?;
            let opts: anneal::MonitorOptions = options!(conv::plain(options)?)?;
            Ok(Monitor { inner: self.inner.create(&model_name, &policy, &opts)? })
        })
    }

    /// A monitor by name or id (code `not_found` when there is none).
    #[napi(catch_unwind)]
    pub fn get(&self, env: Env, #[napi(ts_arg_type = "string")] name: Unknown<'_>) -> napi::Result<Monitor> {
        errors::sync(&env, || Ok(Monitor { inner: self.inner.get(&conv::string(name, "name")?)? }))
    }

    /// Every monitor's record (policy and state), by name.
    #[napi(catch_unwind, ts_return_type = "MonitorRecord[]")]
    pub fn list(&self, env: Env) -> napi::Result<JsJson> {
        errors::json(&env, || js!(self.inner.list()?))
    }

    /// Deletes a monitor and its decision trail (its models, jobs and datasets stay).
    #[napi(catch_unwind)]
    pub fn delete(&self, env: Env, #[napi(ts_arg_type = "string")] name: Unknown<'_>) -> napi::Result<()> {
        errors::sync(&env, || self.inner.delete(&conv::string(name, "name")?))
    }
}

/// One monitor: its policy and state (`record()`), its decision trail, one pass
/// (`tick()`), approval of a waiting candidate, rollback, and `spawn()`.
#[napi]
pub struct Monitor {
    inner: anneal::Monitor,
}

#[napi]
impl Monitor {
    /// The monitor's name.
    #[napi(getter, catch_unwind)]
    pub fn name(&self) -> String {
        self.inner.name().to_string()
    }

    /// The monitor's policy and state as stored now.
    #[napi(catch_unwind, ts_return_type = "MonitorRecord")]
    pub fn record(&self, env: Env) -> napi::Result<JsJson> {
        errors::json(&env, || js!(self.inner.record()?))
    }

    /// The decision trail, oldest first.
    #[napi(catch_unwind, ts_return_type = "MonitorDecision[]")]
    pub fn decisions(&self, env: Env) -> napi::Result<JsJson> {
        errors::json(&env, || js!(self.inner.decisions()?))
    }

    /// Feeds new data to the monitor of a language model: `dataset` (id or name; text,
    /// completion, instruction or chat records) waits for the next retrain, which trains
    /// on it; until then its rows count for `triggers.newRows` and make the window the
    /// metric and drift triggers read. Returns the feed. A dataset fed before throws
    /// `already_exists`; a classifier's monitor (it takes labelled predictions) or a
    /// tabular or image dataset `invalid_config`.
    #[napi(catch_unwind, ts_return_type = "MonitorFeed")]
    pub fn feed(&self, env: Env, #[napi(ts_arg_type = "string")] dataset: Unknown<'_>) -> napi::Result<JsJson> {
        errors::json(&env, || js!(self.inner.feed(conv::string(dataset, "dataset")?)?))
    }

    /// The datasets fed to the monitor, oldest first (`jobId`: the retrain that took
    /// each, null while it waits).
    #[napi(catch_unwind, ts_return_type = "MonitorFeed[]")]
    pub fn feeds(&self, env: Env) -> napi::Result<JsJson> {
        errors::json(&env, || js!(self.inner.feeds()?))
    }

    /// Replaces the policy (validated first; the state is kept); returns the record.
    #[napi(catch_unwind, ts_return_type = "MonitorRecord")]
    pub fn set_policy(
        &self,
        env: Env,
        #[napi(ts_arg_type = "RetrainPolicy")] policy: Unknown<'_>,
    ) -> napi::Result<JsJson> {
        errors::json(&env, || js!(self.inner.set_policy(&self::policy(policy)?)?))
    }

    /// One pass, off the event loop: follows the retraining job in flight or checks the
    /// triggers and guards and maybe retrains, gates and promotes. Resolves to the tick
    /// report. `runJobs: false` only submits a retraining job. Events (`drift_detected`,
    /// `retrain_started`, the job's, `candidate_evaluated`, `promoted`, `monitor_error`)
    /// go to `onEvent`. A failed pass is recorded and rejects. `cancel` / `signal` stop a
    /// retraining job it runs (the job ends `cancelled`; the next tick resumes it).
    #[napi(catch_unwind, ts_return_type = "Promise<TickReport>")]
    pub fn tick(
        &self,
        #[napi(ts_arg_type = "TickOptions & CallOptions")] options: Option<Unknown<'_>>,
    ) -> AsyncTask<LongTask> {
        let m = self.inner.clone();
        LongTask::spawn(options, true, move |json, sink, cancel| {
            let opts: anneal::TickOptions = options!(json)?;
            js!(m.tick_with(sink, &opts, cancel)?)
        })
    }

    /// Promotes the candidate a `manual` or `shadow` gate left waiting (`production`
    /// moves to it, the decision is recorded and `promoted` is emitted, mode `manual`).
    /// Resolves to what moved; nothing waiting rejects with `not_found`.
    #[napi(catch_unwind, ts_return_type = "Promise<AliasMove>")]
    pub fn approve(
        &self,
        #[napi(ts_arg_type = "PromoteOptions & Pick<CallOptions, 'onEvent'>")] options: Option<Unknown<'_>>,
    ) -> AsyncTask<LongTask> {
        let m = self.inner.clone();
        LongTask::spawn(options, true, move |json, sink, _| {
            let opts: anneal::PromoteOptions = options!(json)?;
            js!(m.approve(opts.reason.as_deref(), sink)?)
        })
    }

    /// Moves `production` back to `previous`, records the decision and emits
    /// `rolled_back`. Resolves to what moved.
    #[napi(catch_unwind, ts_return_type = "Promise<AliasMove>")]
    pub fn rollback(
        &self,
        #[napi(ts_arg_type = "RollbackOptions & Pick<CallOptions, 'onEvent'>")] options: Option<Unknown<'_>>,
    ) -> AsyncTask<LongTask> {
        let m = self.inner.clone();
        LongTask::spawn(options, true, move |json, sink, _| {
            let opts: anneal::RollbackOptions = options!(json)?;
            js!(m.rollback(opts.reason.as_deref(), sink)?)
        })
    }

    /// Ticks every `intervalSecs` seconds on a background thread until the returned
    /// handle is stopped. `onEvent` gets the events from that thread (an exception it
    /// throws becomes an `uncaughtException`; the monitor goes on). Like `setInterval`,
    /// a handle with `onEvent` keeps the process alive until `stop()`; a handle that is
    /// garbage-collected stops. A failing tick is recorded and kept as `lastError`.
    #[napi(catch_unwind)]
    pub fn spawn(
        &self,
        env: Env,
        #[napi(ts_arg_type = "number")] interval_secs: Unknown<'_>,
        #[napi(ts_arg_type = "(event: AnnealEvent) => void")] on_event: Option<Unknown<'_>>,
    ) -> napi::Result<MonitorHandle> {
        errors::sync(&env, || {
            let secs = conv::number(interval_secs, "intervalSecs")?;
            if !(secs.is_finite() && secs > 0.0 && secs < 1e9) {
                return Err(anneal::Error::config(
                    "intervalSecs",
                    format!("must be a positive number of seconds (got {secs})"),
                ));
            }
            let on_event = match on_event {
                Some(v) if v.get_type().ok() == Some(ValueType::Function) => {
                    // SAFETY: a live function value of this env (checked above).
                    let f = unsafe { OnEvent::from_napi_value(v.value().env, v.raw()) }
                        .map_err(|e| anneal::Error::config("onEvent", e.reason))?;
                    Some(f)
                }
                Some(v) if !matches!(v.get_type(), Ok(ValueType::Undefined | ValueType::Null)) => {
                    return Err(anneal::Error::config("onEvent", "expected a function (event) => void"));
                }
                _ => None,
            };
            let sink = anneal::Throttle::new(JsSink::new(on_event), THROTTLE);
            let handle = self.inner.spawn(Duration::from_secs_f64(secs), sink)?;
            Ok(MonitorHandle { inner: Arc::new(handle) })
        })
    }
}

/// A monitor ticking on a background thread (`monitor.spawn()`). `await stop()` stops it
/// after the current tick (a retraining job it runs finishes); `cancel()` also cancels
/// that job (it ends `cancelled`; the next tick resumes it).
#[napi]
pub struct MonitorHandle {
    inner: Arc<anneal::MonitorHandle>,
}

#[napi]
impl MonitorHandle {
    /// Stops after the current tick and waits for the thread, off the event loop.
    /// Resolves at once when already stopped.
    #[napi(catch_unwind, ts_return_type = "Promise<void>")]
    pub fn stop(&self) -> AsyncTask<LongTask> {
        let h = self.inner.clone();
        LongTask::spawn(None, false, move |_, _, _| {
            h.stop()?;
            Ok(Value::Null)
        })
    }

    /// Asks the thread to stop without waiting, cancelling a retraining job the current
    /// tick runs.
    #[napi(catch_unwind)]
    pub fn cancel(&self) {
        self.inner.cancel();
    }

    /// False once `stop()` was called.
    #[napi(getter, catch_unwind)]
    pub fn running(&self) -> bool {
        self.inner.is_running()
    }

    /// Ticks run so far.
    #[napi(getter, catch_unwind)]
    pub fn ticks(&self) -> f64 {
        self.inner.ticks() as f64
    }

    /// The error of the last failed tick as `{ code, message }`, or null.
    #[napi(getter, catch_unwind, ts_return_type = "{ code: ErrorCode; message: string } | null")]
    pub fn last_error(&self, env: Env) -> napi::Result<JsJson> {
        errors::json(&env, || js!(self.inner.last_error().as_ref().map(anneal::ErrorInfo::from)))
    }
}

impl Drop for MonitorHandle {
    fn drop(&mut self) {
        // Never join on the JS thread (a tick may be training a model).
        if self.inner.is_running() {
            let h = self.inner.clone();
            let _ = std::thread::Builder::new().name("anneal-monitor-stop".into()).spawn(move || h.stop());
        }
    }
}
