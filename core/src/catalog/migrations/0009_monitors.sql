-- anneal catalog, schema version 9: monitors (a retraining policy on a model name and
-- its state) and their decision trail. A retrain is claimed in a transaction
-- (claim_token) before its job is created; the job id is recorded once it exists, so a
-- restart resumes that job instead of starting another.
CREATE TABLE monitors (
    id                   TEXT PRIMARY KEY,
    name                 TEXT NOT NULL UNIQUE,
    model_name           TEXT NOT NULL,
    policy               TEXT NOT NULL,      -- JSON RetrainPolicy
    consecutive_breaches INTEGER NOT NULL DEFAULT 0,
    last_retrain_at      TEXT,
    last_retrain_ms      INTEGER,            -- unix milliseconds (cooldown, schedule)
    claim_token          TEXT,               -- a retrain claimed, its job not recorded yet
    claimed_ms           INTEGER,
    current_job_id       TEXT,
    eval_dataset_id      TEXT,
    candidate_id         TEXT,
    last_tick            TEXT,               -- JSON TickReport
    created_ms           INTEGER NOT NULL,
    created_at           TEXT NOT NULL,
    updated_at           TEXT NOT NULL
);

CREATE TABLE monitor_decisions (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    monitor_id   TEXT NOT NULL REFERENCES monitors(id) ON DELETE CASCADE,
    kind         TEXT NOT NULL,
    model_id     TEXT,
    job_id       TEXT,
    candidate_id TEXT,
    trigger_name TEXT,
    reason       TEXT NOT NULL,
    details      TEXT NOT NULL,              -- JSON object
    at           TEXT NOT NULL
);
CREATE INDEX monitor_decisions_monitor ON monitor_decisions(monitor_id, id);
CREATE INDEX monitor_decisions_kind ON monitor_decisions(kind, at);
