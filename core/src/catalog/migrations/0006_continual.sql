-- anneal catalog: continual learning. Logged predictions (labels joined later),
-- evaluations and drift checks. model_id has no foreign key on purpose (as in
-- `generations`): the history outlives a deleted model.
CREATE TABLE predictions (
    id              TEXT PRIMARY KEY,
    model_id        TEXT NOT NULL,
    features        TEXT,              -- JSON object; NULL when only the hash is logged
    features_sha256 TEXT NOT NULL,
    label           TEXT NOT NULL,     -- JSON: the predicted class
    confidence      REAL NOT NULL,
    latency_ms      REAL NOT NULL,
    actual          TEXT,              -- JSON: the true class, once labelled
    correct         INTEGER,           -- 1 / 0 once labelled
    labelled_at     TEXT,
    created_at      TEXT NOT NULL
);
-- (model_id, rowid): the last N rows of a model, retention by count.
CREATE INDEX predictions_model ON predictions(model_id);
-- retention by age, `since` filters.
CREATE INDEX predictions_model_time ON predictions(model_id, created_at);

CREATE TABLE evaluations (
    id          TEXT PRIMARY KEY,
    model_id    TEXT NOT NULL,
    model       TEXT NOT NULL,         -- name@version at evaluation time
    dataset_id  TEXT NOT NULL,
    metrics     TEXT NOT NULL,         -- JSON object name -> number
    rows        INTEGER NOT NULL,
    created_at  TEXT NOT NULL
);
CREATE INDEX evaluations_model ON evaluations(model_id, created_at);

CREATE TABLE drift_checks (
    id          TEXT PRIMARY KEY,
    model_id    TEXT NOT NULL,
    model       TEXT NOT NULL,         -- name@version at check time
    window_desc TEXT NOT NULL,         -- predictions:last=N | dataset:<id>
    verdict     TEXT NOT NULL,         -- no_drift | drift | insufficient_data
    check_json  TEXT NOT NULL,         -- JSON DriftCheck (report, loss drift, expected accuracy)
    created_at  TEXT NOT NULL
);
CREATE INDEX drift_checks_model ON drift_checks(model_id, created_at);
