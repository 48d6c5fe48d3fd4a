-- anneal catalog: webhooks and their outbox. An event is rendered once per matching
-- webhook, in the same transaction as the state change it reports, into `outbox`; a
-- deliverer (any process) claims due rows under a lease, POSTs them and records the
-- outcome. A row's id is the `webhook-id` header of every attempt.
CREATE TABLE webhooks (
    id            TEXT PRIMARY KEY,            -- wh_...
    url           TEXT NOT NULL,
    format        TEXT NOT NULL,               -- json | discord | slack
    secret        TEXT NOT NULL,               -- whsec_<base64>
    events        TEXT NOT NULL,               -- JSON array of event types; [] = all but progress
    timeout_ms    INTEGER NOT NULL,
    max_attempts  INTEGER NOT NULL,
    retry_base_ms INTEGER NOT NULL,
    retry_max_ms  INTEGER NOT NULL,
    created_at    TEXT NOT NULL
);

CREATE TABLE outbox (
    id              TEXT PRIMARY KEY,          -- msg_...: the webhook-id, stable across attempts
    webhook_id      TEXT NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,
    event_type      TEXT NOT NULL,
    body            TEXT NOT NULL,             -- rendered at enqueue, sent byte for byte
    status          TEXT NOT NULL,             -- pending | delivered | failed
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,          -- unix milliseconds
    lease           TEXT,                      -- the deliverer holding the row
    lease_until     INTEGER,                   -- unix milliseconds
    last_status     INTEGER,                   -- HTTP status of the last attempt
    last_error      TEXT,
    created_at      TEXT NOT NULL,
    delivered_at    TEXT
);
CREATE INDEX outbox_due ON outbox(status, next_attempt_at);
CREATE INDEX outbox_webhook ON outbox(webhook_id);
