//! SQL for the `webhooks` and `outbox` tables.
//!
//! A deliverer claims one due row at a time (`claim`): in one `BEGIN IMMEDIATE`
//! transaction it picks the oldest pending row whose attempt is due and whose lease (if
//! any) has expired, and writes its own lease token and expiry. Two deliverers therefore
//! never hold the same row; a deliverer that dies keeps it only until the lease
//! expires, after which the row is claimed again and re-sent under the same id.

use std::time::{Duration, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{json_col, to_json};
use crate::error::{Error, Result};
use crate::types::{Delivery, DeliveryFilter, Webhook};

const WEBHOOK_COLS: &str =
    "id, url, format, secret, events, timeout_ms, max_attempts, retry_base_ms, retry_max_ms, created_at";

const DELIVERY_COLS: &str = "id, webhook_id, event_type, body, status, attempts, next_attempt_at, last_status, \
    last_error, created_at, delivered_at";

fn row_to_webhook(r: &Row<'_>) -> rusqlite::Result<Webhook> {
    Ok(Webhook {
        id: r.get("id")?,
        url: r.get("url")?,
        format: r.get("format")?,
        secret: r.get("secret")?,
        events: json_col(r, "events")?,
        timeout_ms: r.get("timeout_ms")?,
        max_attempts: r.get("max_attempts")?,
        retry_base_ms: r.get("retry_base_ms")?,
        retry_max_ms: r.get("retry_max_ms")?,
        created_at: r.get("created_at")?,
    })
}

fn row_to_delivery(r: &Row<'_>) -> rusqlite::Result<Delivery> {
    let next: i64 = r.get("next_attempt_at")?;
    Ok(Delivery {
        id: r.get("id")?,
        webhook_id: r.get("webhook_id")?,
        event_type: r.get("event_type")?,
        status: r.get("status")?,
        attempts: r.get("attempts")?,
        next_attempt_at: rfc3339_ms(next),
        last_status: r.get("last_status")?,
        last_error: r.get("last_error")?,
        body: r.get("body")?,
        created_at: r.get("created_at")?,
        delivered_at: r.get("delivered_at")?,
    })
}

/// Unix milliseconds as RFC 3339 UTC.
pub(crate) fn rfc3339_ms(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

pub(crate) fn insert_webhook(conn: &Connection, w: &Webhook) -> Result<()> {
    conn.execute(
        &format!("INSERT INTO webhooks ({WEBHOOK_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"),
        params![
            w.id,
            w.url,
            w.format,
            w.secret,
            to_json(&w.events)?,
            w.timeout_ms,
            w.max_attempts,
            w.retry_base_ms,
            w.retry_max_ms,
            w.created_at
        ],
    )?;
    Ok(())
}

/// Every webhook, oldest first.
pub(crate) fn list_webhooks(conn: &Connection) -> Result<Vec<Webhook>> {
    let mut st = conn.prepare(&format!("SELECT {WEBHOOK_COLS} FROM webhooks ORDER BY created_at, rowid"))?;
    let rows = st.query_map([], row_to_webhook)?.collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

pub(crate) fn get_webhook(conn: &Connection, id: &str) -> Result<Webhook> {
    conn.query_row(&format!("SELECT {WEBHOOK_COLS} FROM webhooks WHERE id = ?1"), [id], row_to_webhook)
        .optional()?
        .ok_or_else(|| Error::NotFound { what: "webhook", id: id.into() })
}

/// Removes a webhook and its outbox rows (delivered or not).
pub(crate) fn delete_webhook(conn: &Connection, id: &str) -> Result<()> {
    if conn.execute("DELETE FROM webhooks WHERE id = ?1", [id])? == 0 {
        return Err(Error::NotFound { what: "webhook", id: id.into() });
    }
    Ok(())
}

/// A row to add to the outbox.
pub(crate) struct NewDelivery<'a> {
    pub(crate) id: &'a str,
    pub(crate) webhook_id: &'a str,
    pub(crate) event_type: &'a str,
    pub(crate) body: &'a str,
    pub(crate) created_at: &'a str,
    /// Due at (unix milliseconds).
    pub(crate) due_ms: i64,
}

pub(crate) fn enqueue(conn: &Connection, d: &NewDelivery<'_>) -> Result<()> {
    conn.execute(
        "INSERT INTO outbox (id, webhook_id, event_type, body, status, attempts, next_attempt_at, created_at)
         VALUES (?1, ?2, ?3, ?4, 'pending', 0, ?5, ?6)",
        params![d.id, d.webhook_id, d.event_type, d.body, d.due_ms, d.created_at],
    )?;
    Ok(())
}

/// A row a deliverer holds: the delivery and its webhook.
pub(crate) struct Claimed {
    pub(crate) id: String,
    pub(crate) body: String,
    /// Attempts made before this one.
    pub(crate) attempts: u32,
    pub(crate) webhook: Webhook,
}

/// Takes the oldest due row not in `skip` under `lease` until `lease_until_ms`.
pub(crate) fn claim(
    conn: &Connection,
    now_ms: i64,
    lease: &str,
    lease_for_ms: impl Fn(&Webhook) -> i64,
    skip: &[String],
) -> Result<Option<Claimed>> {
    let mut st = conn.prepare(
        "SELECT id, webhook_id, body, attempts FROM outbox
         WHERE status = 'pending' AND next_attempt_at <= ?1 AND (lease_until IS NULL OR lease_until <= ?1)
         ORDER BY next_attempt_at, rowid",
    )?;
    let mut rows = st.query([now_ms])?;
    while let Some(r) = rows.next()? {
        let id: String = r.get(0)?;
        if skip.contains(&id) {
            continue;
        }
        let webhook = get_webhook(conn, &r.get::<_, String>(1)?)?;
        let until = now_ms.saturating_add(lease_for_ms(&webhook));
        conn.execute("UPDATE outbox SET lease = ?2, lease_until = ?3 WHERE id = ?1", params![id, lease, until])?;
        return Ok(Some(Claimed { id, body: r.get(2)?, attempts: r.get(3)?, webhook }));
    }
    Ok(None)
}

/// Marks a row delivered. Done whether or not this deliverer still holds the lease: the
/// receiver has the message, so nobody should send it again.
pub(crate) fn mark_delivered(conn: &Connection, id: &str, attempts: u32, status: u16, at: &str) -> Result<()> {
    conn.execute(
        "UPDATE outbox SET status = 'delivered', attempts = MAX(attempts, ?2), last_status = ?3, last_error = NULL,
             delivered_at = ?4, lease = NULL, lease_until = NULL
         WHERE id = ?1 AND status = 'pending'",
        params![id, attempts, status, at],
    )?;
    Ok(())
}

/// Records a failed attempt: `next_ms` = the retry's due time, or `None` to give up.
/// Only while `lease` still holds the row (else another deliverer owns it now).
/// Returns false when the lease was lost.
pub(crate) fn mark_attempt_failed(
    conn: &Connection,
    id: &str,
    lease: &str,
    attempts: u32,
    next_ms: Option<i64>,
    status: Option<u16>,
    error: &str,
) -> Result<bool> {
    let n = match next_ms {
        Some(next) => conn.execute(
            "UPDATE outbox SET attempts = ?3, next_attempt_at = ?4, last_status = ?5, last_error = ?6,
                 lease = NULL, lease_until = NULL
             WHERE id = ?1 AND lease = ?2 AND status = 'pending'",
            params![id, lease, attempts, next, status, error],
        )?,
        None => conn.execute(
            "UPDATE outbox SET status = 'failed', attempts = ?3, last_status = ?4, last_error = ?5,
                 lease = NULL, lease_until = NULL
             WHERE id = ?1 AND lease = ?2 AND status = 'pending'",
            params![id, lease, attempts, status, error],
        )?,
    };
    Ok(n == 1)
}

pub(crate) fn get_delivery(conn: &Connection, id: &str) -> Result<Delivery> {
    conn.query_row(&format!("SELECT {DELIVERY_COLS} FROM outbox WHERE id = ?1"), [id], row_to_delivery)
        .optional()?
        .ok_or_else(|| Error::NotFound { what: "delivery", id: id.into() })
}

pub(crate) fn list_deliveries(conn: &Connection, f: &DeliveryFilter) -> Result<Vec<Delivery>> {
    let mut st = conn.prepare(&format!(
        "SELECT {DELIVERY_COLS} FROM outbox
         WHERE (?1 IS NULL OR webhook_id = ?1) AND (?2 IS NULL OR status = ?2)
         ORDER BY rowid LIMIT ?3"
    ))?;
    let limit: i64 = f.limit.map_or(-1, i64::from);
    let rows =
        st.query_map(params![f.webhook_id, f.status, limit], row_to_delivery)?.collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Puts failed rows of a webhook (all of them, or one) back to pending, due at `now_ms`,
/// with their attempt count reset. Returns how many.
pub(crate) fn retry_failed(conn: &Connection, webhook_id: Option<&str>, now_ms: i64) -> Result<usize> {
    Ok(conn.execute(
        "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = ?2
         WHERE status = 'failed' AND (?1 IS NULL OR webhook_id = ?1)",
        params![webhook_id, now_ms],
    )?)
}
