-- anneal catalog, schema version 2: live training state, logs and metrics.
ALTER TABLE jobs ADD COLUMN progress REAL NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN step INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN total_steps INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN loss REAL;
ALTER TABLE jobs ADD COLUMN eval_loss REAL;
ALTER TABLE jobs ADD COLUMN lr REAL;
ALTER TABLE jobs ADD COLUMN tokens_per_sec REAL;
ALTER TABLE jobs ADD COLUMN sample TEXT;
ALTER TABLE jobs ADD COLUMN heartbeat_at INTEGER;          -- unix milliseconds
ALTER TABLE jobs ADD COLUMN runner_pid INTEGER;            -- process running it
ALTER TABLE jobs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN error TEXT;                    -- JSON {code, message}
ALTER TABLE jobs ADD COLUMN checkpoint TEXT;               -- latest checkpoint, relative to the home
ALTER TABLE jobs ADD COLUMN started_at TEXT;
ALTER TABLE jobs ADD COLUMN finished_at TEXT;
CREATE INDEX jobs_status ON jobs(status);

CREATE TABLE job_logs (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id  TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    at      TEXT NOT NULL,
    level   TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX job_logs_job ON job_logs(job_id, id);

CREATE TABLE job_metrics (
    job_id         TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    kind           TEXT NOT NULL,   -- train | eval
    step           INTEGER NOT NULL,
    epoch          INTEGER NOT NULL,
    loss           REAL NOT NULL,
    lr             REAL,
    tokens_per_sec REAL,
    at             TEXT NOT NULL,
    PRIMARY KEY (job_id, kind, step)
);
