//! Notifications: webhooks fed from an outbox in the catalog.
//!
//! ```text
//! event ──enqueue──▶ outbox row per matching webhook (same transaction as the change)
//!                      │  body rendered once: json | discord | slack
//!                      ▼
//! deliver_due(now) / spawn(interval), in any process that opens the home:
//!   claim one due row under a lease ─▶ POST, signed (Standard Webhooks) ─▶ record:
//!     2xx            delivered (never sent again)
//!     410 Gone       failed
//!     other / none   attempts + 1; retried after Retry-After (seconds or HTTP date) or
//!                    exponential backoff with jitter; failed after max_attempts
//! ```
//!
//! **At least once, deduplicated by id.** Each outbox row has a stable id (`msg_...`),
//! sent as `webhook-id` on every attempt. A row is marked delivered as soon as a 2xx
//! comes back and is then never sent again. If the deliverer dies between the answer and
//! that bookkeeping, its lease expires (the webhook's timeout + 30 s) and another pass
//! sends the row again **under the same `webhook-id`**: receivers drop ids they have
//! already processed. A receiver that is down keeps its rows pending: nothing is lost.
//!
//! Two deliverers (threads or processes) never hold the same row at once: a claim is a
//! `BEGIN IMMEDIATE` transaction that writes a lease, and only the lease holder records a
//! failure.

pub mod format;
mod http;
pub mod signing;

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;

use crate::catalog::outbox::{self, NewDelivery};
use crate::catalog::Conn;
use crate::error::{Error, Result};
use crate::events::{CancelToken, EventSink};
use crate::store::Store;
use crate::types::{Delivery, DeliveryFilter, DeliveryReport, Event, Webhook, WebhookOptions};
use crate::util::new_id;

pub use signing::{generate_secret, sign, verify_signature, verify_signature_at, DEFAULT_TOLERANCE};

/// A claimed row is held this long beyond the webhook's timeout before another
/// deliverer may take it over.
const LEASE_MARGIN_MS: i64 = 30_000;

/// At most this many rows per [`Webhooks::deliver_due`] pass.
const MAX_PER_PASS: usize = 10_000;

/// The webhooks of a home and their outbox ([`crate::Home::webhooks`]).
#[derive(Clone)]
pub struct Webhooks {
    store: Arc<Store>,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks").field("root", &self.store.root).finish()
    }
}

fn unix_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Checks an event-type filter: every entry must be an event type.
fn check_event_types(field: &str, types: &[String]) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for t in types {
        if !Event::TYPE_NAMES.contains(&t.as_str()) {
            return Err(Error::config(
                field,
                format!("`{t}` is not an event type; expected one of {}", Event::TYPE_NAMES.join(", ")),
            ));
        }
        if !out.contains(t) {
            out.push(t.clone());
        }
    }
    Ok(out)
}

fn check_options(o: &WebhookOptions) -> Result<()> {
    if !(1..=300_000).contains(&o.timeout_ms) {
        return Err(Error::config("timeout_ms", format!("must be 1 to 300000 ms, got {}", o.timeout_ms)));
    }
    if !(1..=100).contains(&o.max_attempts) {
        return Err(Error::config("max_attempts", format!("must be 1 to 100, got {}", o.max_attempts)));
    }
    const WEEK_MS: u64 = 7 * 24 * 3600 * 1000;
    if !(1..=WEEK_MS).contains(&o.retry_max_ms) {
        return Err(Error::config("retry_max_ms", format!("must be 1 to {WEEK_MS} ms, got {}", o.retry_max_ms)));
    }
    if o.retry_base_ms == 0 || o.retry_base_ms > o.retry_max_ms {
        return Err(Error::config(
            "retry_base_ms",
            format!("must be 1 ms to retry_max_ms ({} ms), got {}", o.retry_max_ms, o.retry_base_ms),
        ));
    }
    Ok(())
}

/// The delay before attempt `failed + 1`, after `failed` failures (>= 1): the answer's
/// `Retry-After` when it gave one, else `base * 2^(failed-1)` with jitter in its upper
/// half; both capped at `max`.
pub(crate) fn retry_delay(w: &Webhook, failed: u32, retry_after: Option<Duration>) -> Duration {
    let max = Duration::from_millis(w.retry_max_ms);
    if let Some(ra) = retry_after {
        return ra.min(max);
    }
    let exp = w.retry_base_ms.saturating_mul(1u64 << failed.saturating_sub(1).min(40)).min(w.retry_max_ms);
    let half = exp / 2;
    let jitter = if exp - half == 0 { 0 } else { rand::rng().random_range(0..=exp - half) };
    Duration::from_millis(half + jitter)
}

/// Adds `event` to the outbox of every webhook that wants it, on `conn` (a transaction
/// of the caller's, so the notification commits or rolls back with the change it
/// reports). Returns the new deliveries' ids (the `webhook-id`s).
pub(crate) fn enqueue_in(conn: &Conn, event: &Event, now: SystemTime) -> Result<Vec<String>> {
    let ty = event.type_name();
    let created = rfc3339(now);
    let mut ids = Vec::new();
    for w in outbox::list_webhooks(conn)?.into_iter().filter(|w| w.wants(ty)) {
        let id = new_id("msg");
        let body = format::render(w.format, &id, &created, event);
        outbox::enqueue(
            conn,
            &NewDelivery {
                id: &id,
                webhook_id: &w.id,
                event_type: ty,
                body: &body,
                created_at: &created,
                due_ms: unix_ms(now),
            },
        )?;
        ids.push(id);
    }
    Ok(ids)
}

impl Webhooks {
    pub(crate) fn new(store: Arc<Store>) -> Self {
        Self { store }
    }

    /// Registers a webhook at `url`. The URL must be absolute `http(s)` with a host; a
    /// bad URL, secret, event type or bound is `invalid_config` naming the field, and
    /// nothing is stored.
    pub fn add(&self, url: &str, options: &WebhookOptions) -> Result<Webhook> {
        http::check_url(url)?;
        check_options(options)?;
        let events = check_event_types("events", &options.events)?;
        let secret = match &options.secret {
            Some(s) => {
                signing::check_secret(s)?;
                s.clone()
            }
            None => generate_secret(),
        };
        let w = Webhook {
            id: new_id("wh"),
            url: url.to_string(),
            format: options.format,
            secret,
            events,
            timeout_ms: options.timeout_ms,
            max_attempts: options.max_attempts,
            retry_base_ms: options.retry_base_ms,
            retry_max_ms: options.retry_max_ms,
            created_at: rfc3339(SystemTime::now()),
        };
        self.store.catalog.write(|tx| outbox::insert_webhook(tx, &w))?;
        Ok(w)
    }

    /// Every registered webhook, oldest first.
    pub fn list(&self) -> Result<Vec<Webhook>> {
        self.store.catalog.read(outbox::list_webhooks)
    }

    /// One webhook; `not_found` when there is none with this id.
    pub fn get(&self, id: &str) -> Result<Webhook> {
        self.store.catalog.read(|c| outbox::get_webhook(c, id))
    }

    /// Removes a webhook with its outbox rows (pending ones are dropped).
    pub fn remove(&self, id: &str) -> Result<()> {
        self.store.catalog.write(|tx| outbox::delete_webhook(tx, id))
    }

    /// Adds `event` to the outbox of every webhook that wants it (its own transaction).
    /// Returns the deliveries' ids; empty when no webhook wants this event type.
    pub fn enqueue(&self, event: &Event) -> Result<Vec<String>> {
        self.store.catalog.write(|tx| enqueue_in(tx, event, SystemTime::now()))
    }

    /// An [`EventSink`] that enqueues the events of any run for the webhooks: pass it
    /// (or wrap it) as a run's sink. `events` narrows the types it forwards (empty:
    /// every type but progress events); each webhook's own filter applies on top.
    pub fn sink(&self, events: &[&str]) -> Result<WebhookSink> {
        let events: Vec<String> = events.iter().map(|s| s.to_string()).collect();
        let events = check_event_types("events", &events)?;
        Ok(WebhookSink { webhooks: self.clone(), events })
    }

    /// One delivery pass: sends every row due at `now` (unix clock) once, then returns.
    /// For the caller's own scheduler; [`Webhooks::spawn`] runs it on a thread. The
    /// `webhook-timestamp` of each request is the real clock at sending, whatever `now`
    /// is; `now` decides what is due and when retries fall due.
    pub fn deliver_due(&self, now: SystemTime) -> Result<DeliveryReport> {
        self.deliver(now, &CancelToken::new())
    }

    fn deliver(&self, now: SystemTime, cancel: &CancelToken) -> Result<DeliveryReport> {
        let now_ms = unix_ms(now);
        let lease = new_id("lease");
        let mut seen = Vec::new();
        let mut report = DeliveryReport::default();
        while seen.len() < MAX_PER_PASS && !cancel.is_cancelled() {
            let lease_for = |w: &Webhook| i64::try_from(w.timeout_ms).unwrap_or(i64::MAX / 2) + LEASE_MARGIN_MS;
            let claimed = self.store.catalog.write(|tx| outbox::claim(tx, now_ms, &lease, lease_for, &seen))?;
            let Some(c) = claimed else { break };
            seen.push(c.id.clone());
            let w = &c.webhook;
            let attempt = c.attempts.saturating_add(1);
            report.attempted += 1;
            let ts = signing::unix_seconds(SystemTime::now());
            let outcome = match sign(&w.secret, &c.id, ts, c.body.as_bytes()) {
                Ok(signature) => http::post(
                    &w.url,
                    &[
                        ("webhook-id", c.id.clone()),
                        ("webhook-timestamp", ts.to_string()),
                        ("webhook-signature", signature),
                    ],
                    &c.body,
                    Duration::from_millis(w.timeout_ms),
                ),
                Err(e) => http::Outcome { status: None, retry_after: None, error: Some(e.to_string()) },
            };
            if let (true, Some(status)) = (outcome.is_success(), outcome.status) {
                let at = rfc3339(SystemTime::now());
                self.store.catalog.write(|tx| outbox::mark_delivered(tx, &c.id, attempt, status, &at))?;
                report.delivered += 1;
                continue;
            }
            let error = outcome.error.clone().unwrap_or_else(|| "failed".into());
            let give_up = attempt >= w.max_attempts || outcome.status == Some(410);
            let next = (!give_up).then(|| {
                let delay = retry_delay(w, attempt, outcome.retry_after);
                now_ms.saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 2))
            });
            let held = self
                .store
                .catalog
                .write(|tx| outbox::mark_attempt_failed(tx, &c.id, &lease, attempt, next, outcome.status, &error))?;
            if held {
                if give_up {
                    report.failed += 1;
                } else {
                    report.retried += 1;
                }
            }
        }
        Ok(report)
    }

    /// Runs [`Webhooks::deliver_due`] every `interval` on a background thread until the
    /// returned [`Deliverer`] is stopped or dropped. A failed pass (e.g. the catalog
    /// busy for longer than its timeout) is kept in [`Deliverer::last_error`] and the
    /// next pass runs as planned.
    pub fn spawn(&self, interval: Duration) -> Result<Deliverer> {
        if interval.is_zero() {
            return Err(Error::config("interval", "must be longer than zero"));
        }
        let (tx, rx) = mpsc::channel::<()>();
        let cancel = CancelToken::new();
        let last_error = Arc::new(Mutex::new(None));
        let (me, c, le) = (self.clone(), cancel.clone(), last_error.clone());
        let thread = std::thread::Builder::new()
            .name("anneal-webhooks".into())
            .spawn(move || loop {
                if c.is_cancelled() {
                    break;
                }
                if let Err(e) = me.deliver(SystemTime::now(), &c) {
                    if let Ok(mut slot) = le.lock() {
                        *slot = Some(e);
                    }
                }
                match rx.recv_timeout(interval) {
                    Err(RecvTimeoutError::Timeout) => {}
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
                }
            })
            .map_err(|e| Error::Internal(format!("could not start the webhook thread: {e}")))?;
        Ok(Deliverer { cancel, wake: Some(tx), thread: Some(thread), last_error })
    }

    /// Outbox rows, oldest first.
    pub fn deliveries(&self, filter: &DeliveryFilter) -> Result<Vec<Delivery>> {
        self.store.catalog.read(|c| outbox::list_deliveries(c, filter))
    }

    /// One outbox row by id (the `webhook-id`).
    pub fn delivery(&self, id: &str) -> Result<Delivery> {
        self.store.catalog.read(|c| outbox::get_delivery(c, id))
    }

    /// Puts `failed` rows (of one webhook, or all) back to pending with a fresh attempt
    /// count, due now. Returns how many.
    pub fn retry_failed(&self, webhook_id: Option<&str>) -> Result<usize> {
        if let Some(id) = webhook_id {
            self.get(id)?;
        }
        self.store.catalog.write(|tx| outbox::retry_failed(tx, webhook_id, unix_ms(SystemTime::now())))
    }
}

/// The background deliverer of [`Webhooks::spawn`]. Dropping it stops the thread (after
/// the request in flight, if any).
pub struct Deliverer {
    cancel: CancelToken,
    wake: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    last_error: Arc<Mutex<Option<Error>>>,
}

impl Deliverer {
    /// Asks the thread to stop; it finishes the request in flight and exits.
    pub fn cancel(&self) {
        self.cancel.cancel();
        if let Some(w) = &self.wake {
            let _ = w.send(());
        }
    }

    /// Stops the thread and waits for it.
    pub fn stop(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        self.cancel();
        self.wake = None;
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| Error::Internal("the webhook thread panicked".into())),
            None => Ok(()),
        }
    }

    /// The error of the latest failed pass, if any.
    pub fn last_error(&self) -> Option<Error> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }
}

impl Drop for Deliverer {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

impl std::fmt::Debug for Deliverer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliverer").field("running", &self.thread.is_some()).finish()
    }
}

/// An [`EventSink`] that puts events into the webhooks' outbox ([`Webhooks::sink`]).
/// Delivery happens later, in [`Webhooks::deliver_due`] or a [`Deliverer`]: a run never
/// waits on a receiver. A catalog failure while enqueuing stops the run, like any
/// failing sink.
#[derive(Debug, Clone)]
pub struct WebhookSink {
    webhooks: Webhooks,
    events: Vec<String>,
}

impl WebhookSink {
    /// True when this sink forwards events of type `event_type`.
    pub fn wants(&self, event_type: &str) -> bool {
        if self.events.is_empty() {
            !matches!(event_type, "step" | "task_progress")
        } else {
            self.events.iter().any(|e| e == event_type)
        }
    }
}

impl EventSink for WebhookSink {
    fn on_event(&mut self, event: &Event) -> Result<()> {
        if self.wants(event.type_name()) {
            self.webhooks.enqueue(event)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::WebhookFormat;

    fn hook(base: u64, max: u64) -> Webhook {
        Webhook {
            id: "wh_1".into(),
            url: "http://127.0.0.1:1/".into(),
            format: WebhookFormat::Json,
            secret: generate_secret(),
            events: vec![],
            timeout_ms: 1000,
            max_attempts: 5,
            retry_base_ms: base,
            retry_max_ms: max,
            created_at: String::new(),
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_and_honours_retry_after() {
        let w = hook(1000, 60_000);
        for failed in 1..=10u32 {
            let exp = (1000u64 << (failed - 1)).min(60_000);
            for _ in 0..20 {
                let d = retry_delay(&w, failed, None).as_millis() as u64;
                assert!(d >= exp / 2 && d <= exp, "attempt {failed}: {d} not in [{}, {exp}]", exp / 2);
            }
        }
        assert_eq!(retry_delay(&w, 1, Some(Duration::from_secs(7))), Duration::from_secs(7));
        // Capped at retry_max_ms.
        assert_eq!(retry_delay(&w, 1, Some(Duration::from_secs(3600))), Duration::from_millis(60_000));
        assert!(retry_delay(&w, 200, None) <= Duration::from_millis(60_000));
    }

    #[test]
    fn enqueueing_in_a_transaction_commits_or_rolls_back_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let cat = crate::catalog::Catalog::open(&dir.path().join("a.db")).unwrap();
        let mut w = hook(1000, 60_000);
        w.events = vec!["promoted".into()];
        cat.write(|tx| outbox::insert_webhook(tx, &w)).unwrap();
        let ev = Event::Promoted {
            model: "m@2".into(),
            model_id: "mdl_2".into(),
            alias: "production".into(),
            previous: None,
            mode: "manual".into(),
            monitor: None,
            reason: "approved".into(),
        };
        // The caller's change fails after the enqueue: no row is left behind.
        let r: Result<()> = cat.write(|tx| {
            assert_eq!(enqueue_in(tx, &ev, SystemTime::now())?.len(), 1);
            Err(Error::Cancelled)
        });
        assert!(r.is_err());
        let all = DeliveryFilter::default();
        assert!(cat.read(|c| outbox::list_deliveries(c, &all)).unwrap().is_empty());
        // It commits: one row, due now, pending; an unwanted type adds nothing.
        let ids = cat.write(|tx| enqueue_in(tx, &ev, SystemTime::now())).unwrap();
        let log = Event::Log { job_id: "j".into(), level: "info".into(), message: "x".into() };
        assert!(cat.write(|tx| enqueue_in(tx, &log, SystemTime::now())).unwrap().is_empty());
        let rows = cat.read(|c| outbox::list_deliveries(c, &all)).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].id.as_str(), rows[0].status, rows[0].attempts),
            (ids[0].as_str(), crate::types::DeliveryStatus::Pending, 0)
        );
        assert!(rows[0].id.starts_with("msg_"));
    }

    #[test]
    fn a_dead_deliverers_claim_expires_and_the_row_is_resent_under_its_id() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = crate::catalog::Catalog::open(&dir.path().join("a.db")).unwrap();
        let store = Arc::new(Store { root: dir.path().to_path_buf(), catalog, memory_limit: 1 << 30 });
        // Nobody listens on this port: every attempt is refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut w = hook(1000, 60_000);
        w.url = format!("http://127.0.0.1:{port}/");
        store.catalog.write(|tx| outbox::insert_webhook(tx, &w)).unwrap();
        let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let ev = Event::Log { job_id: "j".into(), level: "info".into(), message: "x".into() };
        let id = store.catalog.write(|tx| enqueue_in(tx, &ev, t0)).unwrap().remove(0);
        // A deliverer claims the row, then dies before recording anything.
        let lease_for = |w: &Webhook| w.timeout_ms as i64 + LEASE_MARGIN_MS;
        let c = store.catalog.write(|tx| outbox::claim(tx, unix_ms(t0), "lease_dead", lease_for, &[])).unwrap();
        assert_eq!(c.map(|c| c.id), Some(id.clone()));
        let wh = Webhooks::new(store);
        // Its lease (timeout 1 s + 30 s) keeps the row from everyone else...
        assert_eq!(wh.deliver_due(t0 + Duration::from_millis(30_999)).unwrap().attempted, 0);
        // ...then the row is taken over and sent again, under the same id.
        let r = wh.deliver_due(t0 + Duration::from_secs(31)).unwrap();
        assert_eq!((r.attempted, r.retried), (1, 1));
        let d = wh.delivery(&id).unwrap();
        assert_eq!((d.attempts, d.status, d.last_status), (1, crate::types::DeliveryStatus::Pending, None));
    }

    #[test]
    fn type_names_list_every_variant_of_the_schema() {
        let schema = serde_json::to_value(schemars::schema_for!(Event)).unwrap();
        let mut tags: Vec<String> = schema["oneOf"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["properties"]["type"]["const"].as_str().unwrap().to_string())
            .collect();
        let mut names: Vec<String> = Event::TYPE_NAMES.iter().map(|s| s.to_string()).collect();
        tags.sort();
        names.sort();
        assert_eq!(tags, names);
    }

    #[test]
    fn options_are_checked_field_by_field() {
        let o = WebhookOptions::default();
        check_options(&o).unwrap();
        let cases: Vec<(WebhookOptions, &str)> = vec![
            (WebhookOptions { timeout_ms: 0, ..o.clone() }, "timeout_ms"),
            (WebhookOptions { max_attempts: 0, ..o.clone() }, "max_attempts"),
            (WebhookOptions { retry_base_ms: 0, ..o.clone() }, "retry_base_ms"),
            (WebhookOptions { retry_base_ms: 10, retry_max_ms: 5, ..o.clone() }, "retry_base_ms"),
            (WebhookOptions { retry_max_ms: 0, ..o.clone() }, "retry_max_ms"),
        ];
        for (opts, field) in cases {
            let e = check_options(&opts).unwrap_err();
            assert!(e.to_string().contains(&format!("`{field}`")), "{field}: {e}");
        }
        let e = check_event_types("events", &["promoted".into(), "promotd".into()]).unwrap_err();
        assert!(e.to_string().contains("`events`") && e.to_string().contains("promotd"), "{e}");
        assert_eq!(check_event_types("events", &["promoted".into(), "promoted".into()]).unwrap(), ["promoted"]);
    }
}
