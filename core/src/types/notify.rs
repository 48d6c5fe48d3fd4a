//! Webhooks: registered receivers, their options, and the outbox's deliveries.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::names::named_enum;

named_enum! {
    /// The body a webhook receives.
    pub enum WebhookFormat("webhook format") {
        /// `{"id", "type", "timestamp", "data": <the event>}` (Standard Webhooks' envelope).
        Json = "json",
        /// A Discord message with one embed: title, description, colour per event kind,
        /// fields.
        Discord = "discord",
        /// A Slack message: `text` (the notification's fallback) and `blocks`.
        Slack = "slack",
    }
}

named_enum! {
    /// Where one outbox row stands.
    pub enum DeliveryStatus("delivery status") {
        /// Not delivered yet: due at `next_attempt_at` (first try or retry).
        Pending = "pending",
        /// A 2xx answer was received; never sent again.
        Delivered = "delivered",
        /// Given up: `max_attempts` reached, or the receiver answered 410 Gone.
        Failed = "failed",
    }
}

/// Options of [`crate::Webhooks::add`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookOptions {
    /// Body format. Default `json`.
    pub format: WebhookFormat,
    /// Standard Webhooks signing secret, `whsec_<base64 of 24 to 64 bytes>`. Default: a
    /// new random secret (returned in [`Webhook::secret`]). Every delivery is signed.
    pub secret: Option<String>,
    /// Event types this webhook receives (`drift_detected`, `promoted`, ...). Empty:
    /// every type but the frequent progress events (`step`, `task_progress`).
    pub events: Vec<String>,
    /// Time allowed for one HTTP request (connect, send, answer), in milliseconds.
    /// Default 10 000.
    pub timeout_ms: u64,
    /// Attempts before a delivery is marked `failed`. Default 8.
    pub max_attempts: u32,
    /// Delay before the first retry, in milliseconds; doubles with each attempt, with
    /// jitter (a uniform draw in the upper half of the delay). Default 5 000.
    pub retry_base_ms: u64,
    /// Longest delay between two attempts (also caps `Retry-After`), in milliseconds.
    /// Default 3 600 000 (one hour).
    pub retry_max_ms: u64,
}

impl Default for WebhookOptions {
    fn default() -> Self {
        Self {
            format: WebhookFormat::Json,
            secret: None,
            events: Vec::new(),
            timeout_ms: 10_000,
            max_attempts: 8,
            retry_base_ms: 5_000,
            retry_max_ms: 3_600_000,
        }
    }
}

/// A registered webhook (a row of the catalog's `webhooks` table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Webhook {
    /// `wh_...`
    pub id: String,
    pub url: String,
    pub format: WebhookFormat,
    /// The signing secret (`whsec_...`): give it to the receiver.
    pub secret: String,
    /// Event types received; empty: every type but progress events.
    pub events: Vec<String>,
    pub timeout_ms: u64,
    pub max_attempts: u32,
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// RFC 3339.
    pub created_at: String,
}

impl Webhook {
    /// True when this webhook receives events of type `event_type`.
    pub fn wants(&self, event_type: &str) -> bool {
        if self.events.is_empty() {
            !matches!(event_type, "step" | "task_progress")
        } else {
            self.events.iter().any(|e| e == event_type)
        }
    }
}

/// One outbox row: one event for one webhook. Its `id` is the `webhook-id` header of
/// every attempt, so a receiver that sees an id twice (a re-send after a crash between
/// the answer and the bookkeeping) can drop the second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Delivery {
    /// `msg_...`: the `webhook-id`.
    pub id: String,
    pub webhook_id: String,
    pub event_type: String,
    pub status: DeliveryStatus,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due (RFC 3339); meaningful while `pending`.
    pub next_attempt_at: String,
    /// The HTTP status of the last attempt (absent: no answer, e.g. connection refused).
    pub last_status: Option<u16>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// The body, exactly as sent (fixed when the event was enqueued).
    pub body: String,
    pub created_at: String,
    pub delivered_at: Option<String>,
}

/// Filter of [`crate::Webhooks::deliveries`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryFilter {
    pub webhook_id: Option<String>,
    pub status: Option<DeliveryStatus>,
    /// At most this many, oldest first.
    pub limit: Option<u32>,
}

/// What one [`crate::Webhooks::deliver_due`] pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DeliveryReport {
    /// Requests sent (or tried: a refused connection counts).
    pub attempted: u32,
    /// Answered 2xx and marked delivered.
    pub delivered: u32,
    /// Failed and rescheduled.
    pub retried: u32,
    /// Failed for the last time (marked `failed`).
    pub failed: u32,
}
