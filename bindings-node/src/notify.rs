//! `Webhooks` (`home.webhooks()`), its background `Deliverer`, and `verifySignature`
//! for receivers. Records are plain objects in the core's camelCase spelling.
//!
//! Registering, listing and enqueueing are catalog rows: synchronous, as the registry's
//! alias calls. Sending (`deliverDue`) and stopping a deliverer (which waits for the
//! request in flight) return Promises and run on the libuv pool, so a receiver served
//! by this very event loop keeps answering.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use napi::bindgen_prelude::{AsyncTask, BufferSlice, FromNapiValue, JsValue, Unknown, ValueType};
use napi::Env;
use napi_derive::napi;
use serde_json::Value;

use crate::conv::{self, js, options, JsJson};
use crate::errors;
use crate::events::{arg, LongTask};
use crate::home::Home;

/// `undefined` and `null` arguments are absent.
pub(crate) fn given(v: Option<Unknown<'_>>) -> Option<Unknown<'_>> {
    v.filter(|v| !matches!(v.get_type(), Ok(ValueType::Undefined | ValueType::Null)))
}

/// A millisecond count argument (a non-negative integer), or `default` when absent.
fn millis(v: Option<Unknown<'_>>, name: &str, default: u64) -> anneal::Result<Duration> {
    match given(v) {
        None => Ok(Duration::from_millis(default)),
        Some(v) => {
            let n = conv::number(v, name)?;
            if !(n.is_finite() && n >= 0.0 && n.fract() == 0.0) {
                return Err(anneal::Error::config(name, format!("expected a whole number of milliseconds, got {n}")));
            }
            Ok(Duration::from_millis(n as u64))
        }
    }
}

/// An event object (as `onEvent` receives it, camelCase) as the core's event;
/// `invalid_config` naming `event` (or `event.<field>`) when it is not one.
fn event(v: Unknown<'_>) -> anneal::Result<anneal::Event> {
    let json = conv::json(v, "event")?;
    if !json.is_object() {
        return Err(anneal::Error::config("event", "expected an event object ({ type: ..., ... })"));
    }
    anneal::options_from_json_spelled(json, anneal::Spelling::Camel).map_err(|e| match e {
        anneal::Error::InvalidConfig { field, reason } if field == "options" => anneal::Error::config("event", reason),
        anneal::Error::InvalidConfig { field, reason } => anneal::Error::config(format!("event.{field}"), reason),
        other => other,
    })
}

#[napi]
impl Home {
    /// The webhooks of this home and their outbox.
    #[napi(catch_unwind)]
    pub fn webhooks(&self) -> Webhooks {
        Webhooks { inner: self.inner.webhooks() }
    }
}

/// The webhooks of a home and their outbox (`home.webhooks()`): signed (Standard
/// Webhooks), retried with backoff, delivered at least once, deduplicated by `webhook-id`.
#[napi]
pub struct Webhooks {
    pub(crate) inner: anneal::Webhooks,
}

#[napi]
impl Webhooks {
    /// Registers a webhook at `url` (absolute http(s)). Without `secret` a new one is
    /// generated; it is in the returned record (`secret`): give it to the receiver.
    #[napi(catch_unwind, ts_return_type = "Webhook")]
    pub fn add(
        &self,
        env: Env,
        #[napi(ts_arg_type = "string")] url: Unknown<'_>,
        #[napi(ts_arg_type = "WebhookOptions")] options: Option<Unknown<'_>>,
    ) -> napi::Result<JsJson> {
        errors::json(&env, || {
            let url = conv::string(url, "url")?;
            let opts: anneal::WebhookOptions = options!(conv::plain(options)?)?;
            js!(self.inner.add(&url, &opts)?)
        })
    }

    /// Every registered webhook, oldest first.
    #[napi(catch_unwind, ts_return_type = "Webhook[]")]
    pub fn list(&self, env: Env) -> napi::Result<JsJson> {
        errors::json(&env, || js!(self.inner.list()?))
    }

    /// One webhook by id (code `not_found` when there is none).
    #[napi(catch_unwind, ts_return_type = "Webhook")]
    pub fn get(&self, env: Env, #[napi(ts_arg_type = "string")] id: Unknown<'_>) -> napi::Result<JsJson> {
        errors::json(&env, || js!(self.inner.get(&conv::string(id, "id")?)?))
    }

    /// Removes a webhook with its outbox rows (pending ones are dropped).
    #[napi(catch_unwind)]
    pub fn remove(&self, env: Env, #[napi(ts_arg_type = "string")] id: Unknown<'_>) -> napi::Result<()> {
        errors::sync(&env, || self.inner.remove(&conv::string(id, "id")?))
    }

    /// Adds an event (as `onEvent` receives it) to the outbox of every webhook that
    /// wants it; returns the deliveries' ids (`webhook-id`s). `onEvent: (e) =>
    /// webhooks.enqueue(e)` routes a call's events to the webhooks.
    #[napi(catch_unwind, ts_return_type = "string[]")]
    pub fn enqueue(&self, env: Env, #[napi(ts_arg_type = "AnnealEvent")] event: Unknown<'_>) -> napi::Result<JsJson> {
        errors::json(&env, || {
            let ids = self.inner.enqueue(&self::event(event)?)?;
            Ok(Value::from(ids))
        })
    }

    /// One delivery pass, off the event loop: sends every row due at `now` (a `Date`
    /// or milliseconds since 1970; default: now) once, then resolves to what it did.
    #[napi(catch_unwind, ts_return_type = "Promise<DeliveryReport>")]
    pub fn deliver_due(&self, #[napi(ts_arg_type = "Date | number")] now: Option<Unknown<'_>>) -> AsyncTask<LongTask> {
        let now = match given(now) {
            None => SystemTime::now(),
            Some(v) => {
                let ms = if v.get_type().ok() == Some(ValueType::Object) && v.is_date().unwrap_or(false) {
                    arg!(v
                        .coerce_to_number()
                        .and_then(|n| n.get_double())
                        .map_err(|e| anneal::Error::config("now", e.reason)))
                } else {
                    arg!(conv::number(v, "now"))
                };
                if !(ms.is_finite() && ms >= 0.0) {
                    return LongTask::failed(anneal::Error::config(
                        "now",
                        format!("expected a time after 1970, got {ms}"),
                    ));
                }
                // Whole milliseconds exactly (a float division could land a hair before
                // a row's due time), then the fraction.
                UNIX_EPOCH + Duration::from_millis(ms as u64) + Duration::from_nanos((ms.fract() * 1e6) as u64)
            }
        };
        let wh = self.inner.clone();
        LongTask::spawn(None, false, move |_, _, _| js!(wh.deliver_due(now)?))
    }

    /// Delivers due rows every `intervalMs` (default 1000) on a background thread until
    /// the returned `Deliverer` is stopped.
    #[napi(catch_unwind)]
    pub fn spawn(
        &self,
        env: Env,
        #[napi(ts_arg_type = "number")] interval_ms: Option<Unknown<'_>>,
    ) -> napi::Result<Deliverer> {
        errors::sync(&env, || {
            let interval = millis(interval_ms, "intervalMs", 1000)?;
            Ok(Deliverer { inner: Arc::new(Mutex::new(Some(self.inner.spawn(interval)?))) })
        })
    }

    /// Outbox rows, oldest first: of one webhook, in one status, at most `limit`.
    #[napi(catch_unwind, ts_return_type = "Delivery[]")]
    pub fn deliveries(
        &self,
        env: Env,
        #[napi(ts_arg_type = "DeliveryFilter")] filter: Option<Unknown<'_>>,
    ) -> napi::Result<JsJson> {
        errors::json(&env, || {
            let filter: anneal::DeliveryFilter = options!(conv::plain(filter)?)?;
            js!(self.inner.deliveries(&filter)?)
        })
    }

    /// One outbox row by id (the `webhook-id`).
    #[napi(catch_unwind, ts_return_type = "Delivery")]
    pub fn delivery(&self, env: Env, #[napi(ts_arg_type = "string")] id: Unknown<'_>) -> napi::Result<JsJson> {
        errors::json(&env, || js!(self.inner.delivery(&conv::string(id, "id")?)?))
    }

    /// Puts `failed` rows (of one webhook, or all) back to pending, due now; returns how many.
    #[napi(catch_unwind)]
    pub fn retry_failed(
        &self,
        env: Env,
        #[napi(ts_arg_type = "string")] webhook_id: Option<Unknown<'_>>,
    ) -> napi::Result<u32> {
        errors::sync(&env, || {
            let id = given(webhook_id).map(|v| conv::string(v, "webhookId")).transpose()?;
            let n = self.inner.retry_failed(id.as_deref())?;
            Ok(u32::try_from(n).unwrap_or(u32::MAX))
        })
    }
}

/// The background deliverer of `webhooks.spawn()`. `await stop()` stops it after the
/// request in flight; a deliverer that is garbage-collected stops too.
#[napi]
pub struct Deliverer {
    inner: Arc<Mutex<Option<anneal::Deliverer>>>,
}

impl Deliverer {
    fn take(&self) -> Option<anneal::Deliverer> {
        self.inner.lock().ok().and_then(|mut d| d.take())
    }
}

#[napi]
impl Deliverer {
    /// Stops the thread and waits for it, off the event loop. Resolves at once when
    /// already stopped.
    #[napi(catch_unwind, ts_return_type = "Promise<void>")]
    pub fn stop(&self) -> AsyncTask<LongTask> {
        let d = self.take();
        LongTask::spawn(None, false, move |_, _, _| {
            if let Some(d) = d {
                d.stop()?;
            }
            Ok(Value::Null)
        })
    }

    /// Asks the thread to stop without waiting.
    #[napi(catch_unwind)]
    pub fn cancel(&self) {
        if let Ok(d) = self.inner.lock() {
            if let Some(d) = d.as_ref() {
                d.cancel();
            }
        }
    }

    /// False once `stop()` was called.
    #[napi(getter, catch_unwind)]
    pub fn running(&self) -> bool {
        self.inner.lock().map(|d| d.is_some()).unwrap_or(false)
    }

    /// The error of the latest failed pass as `{ code, message }`, or null.
    #[napi(getter, catch_unwind, ts_return_type = "{ code: ErrorCode; message: string } | null")]
    pub fn last_error(&self, env: Env) -> napi::Result<JsJson> {
        errors::json(&env, || {
            let e = self.inner.lock().ok().and_then(|d| d.as_ref().and_then(|d| d.last_error()));
            js!(e.as_ref().map(anneal::ErrorInfo::from))
        })
    }
}

impl Drop for Deliverer {
    fn drop(&mut self) {
        // Never join on the JS thread (the request in flight may be to this process).
        if let Some(d) = self.take() {
            d.cancel();
            let _ = std::thread::Builder::new().name("anneal-webhooks-stop".into()).spawn(move || drop(d));
        }
    }
}

/// Verifies a webhook delivery (Standard Webhooks) from its `webhook-id`,
/// `webhook-timestamp` and `webhook-signature` headers and the raw body (a string or a
/// Buffer). Returns when one signature matches and the timestamp is within
/// `toleranceMs` (default 300000) of now; throws code `invalid_data` (field
/// `webhook-signature` or `webhook-timestamp`) otherwise, `invalid_config` (field
/// `secret`) for a malformed secret.
#[napi(catch_unwind)]
pub fn verify_signature(
    env: Env,
    #[napi(ts_arg_type = "string")] secret: Unknown<'_>,
    #[napi(ts_arg_type = "string")] id: Unknown<'_>,
    #[napi(ts_arg_type = "string | number")] timestamp: Unknown<'_>,
    #[napi(ts_arg_type = "string | Buffer | Uint8Array")] body: Unknown<'_>,
    #[napi(ts_arg_type = "string")] signature: Unknown<'_>,
    #[napi(ts_arg_type = "number")] tolerance_ms: Option<Unknown<'_>>,
) -> napi::Result<()> {
    errors::sync(&env, || {
        let secret = conv::string(secret, "secret")?;
        let id = conv::string(id, "id")?;
        let timestamp = match timestamp.get_type() {
            Ok(ValueType::Number) => format!("{}", conv::number(timestamp, "timestamp")?),
            _ => conv::string(timestamp, "timestamp")?,
        };
        let body: Vec<u8> = if body.get_type().ok() == Some(ValueType::String) {
            conv::string(body, "body")?.into_bytes()
        } else if body.is_typedarray().unwrap_or(false) || body.is_buffer().unwrap_or(false) {
            // SAFETY: a live Buffer / Uint8Array value of this env (checked above).
            let slice = unsafe { BufferSlice::from_napi_value(body.value().env, body.raw()) }
                .map_err(|e| anneal::Error::config("body", e.reason))?;
            slice.to_vec()
        } else {
            return Err(anneal::Error::config("body", "expected a string or a Buffer (the raw body)"));
        };
        let signature = conv::string(signature, "signature")?;
        let tolerance = millis(tolerance_ms, "toleranceMs", 300_000)?;
        anneal::verify_signature(&secret, &id, &timestamp, &body, &signature, tolerance)
    })
}
