-- anneal catalog, schema version 1.
CREATE TABLE datasets (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    format        TEXT NOT NULL,
    sha256        TEXT NOT NULL UNIQUE,
    num_records   INTEGER NOT NULL,
    bytes         INTEGER NOT NULL,
    source        TEXT NOT NULL,
    source_format TEXT NOT NULL,
    columns       TEXT NOT NULL,   -- JSON: canonical field -> source column
    parent_id     TEXT REFERENCES datasets(id) ON DELETE SET NULL,
    stats         TEXT NOT NULL,   -- JSON DatasetStats
    created_at    TEXT NOT NULL
);

CREATE TABLE models (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    version       INTEGER NOT NULL,
    kind          TEXT NOT NULL,   -- base | full | lora
    family        TEXT NOT NULL,
    architecture  TEXT NOT NULL,
    model_type    TEXT NOT NULL,
    parent_id     TEXT REFERENCES models(id),
    params        INTEGER NOT NULL,
    dtype         TEXT NOT NULL,
    bytes         INTEGER NOT NULL,
    sha256        TEXT NOT NULL,
    storage       TEXT NOT NULL,   -- copy | reference
    path          TEXT NOT NULL,   -- relative to the home for copies, absolute for references
    files         TEXT NOT NULL,   -- JSON [{name, bytes, sha256}]
    tokenizer     TEXT,            -- file name of the tokenizer, if any
    source        TEXT NOT NULL,
    task          TEXT,
    tags          TEXT NOT NULL,   -- JSON [string]
    lineage       TEXT NOT NULL,   -- JSON object
    config        TEXT NOT NULL,   -- JSON: config.json or adapter_config.json
    created_at    TEXT NOT NULL,
    UNIQUE (name, version)
);
CREATE INDEX models_parent ON models(parent_id);

CREATE TABLE aliases (
    name       TEXT NOT NULL,
    alias      TEXT NOT NULL,
    model_id   TEXT NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (name, alias)
);

CREATE TABLE jobs (
    id              TEXT PRIMARY KEY,
    status          TEXT NOT NULL,
    base_model_id   TEXT REFERENCES models(id),
    dataset_id      TEXT REFERENCES datasets(id),
    eval_dataset_id TEXT REFERENCES datasets(id),
    output_model_id TEXT REFERENCES models(id),
    spec            TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);
CREATE INDEX jobs_base ON jobs(base_model_id);
CREATE INDEX jobs_dataset ON jobs(dataset_id);
