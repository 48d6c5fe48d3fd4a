-- anneal catalog, schema version 10: the data fed to monitors of language models
-- (Monitor::feed). A row is pending until a retrain takes it (job_id, set in the
-- transaction that records the job); a retrain whose candidate is refused or fails
-- gives its rows back (job_id NULL again).
CREATE TABLE monitor_feeds (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    monitor_id  TEXT NOT NULL REFERENCES monitors(id) ON DELETE CASCADE,
    dataset_id  TEXT NOT NULL,
    dataset     TEXT NOT NULL,               -- the dataset's name when fed
    rows        INTEGER NOT NULL,
    fed_ms      INTEGER NOT NULL,            -- unix milliseconds
    fed_at      TEXT NOT NULL,
    job_id      TEXT
);
CREATE INDEX monitor_feeds_monitor ON monitor_feeds(monitor_id, id);
