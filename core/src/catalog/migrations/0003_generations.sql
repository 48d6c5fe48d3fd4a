-- anneal catalog, schema version 3: one row per generation / scoring call (usage statistics).
-- model_id has no foreign key on purpose: usage history outlives a deleted model.
CREATE TABLE generations (
    id               TEXT PRIMARY KEY,
    model_id         TEXT NOT NULL,      -- the model used: an adapter's id when one was applied
    base_model_id    TEXT NOT NULL,      -- the loaded weights (same as model_id without an adapter)
    kind             TEXT NOT NULL,      -- generate | stream | batch | score
    params           TEXT NOT NULL,      -- JSON: the resolved sampling settings
    prompt_tokens    INTEGER NOT NULL,
    generated_tokens INTEGER NOT NULL,
    finish_reason    TEXT,               -- eos | stop | length | cancelled (NULL for score)
    ttft_ms          REAL,
    duration_ms      REAL NOT NULL,
    created_at       TEXT NOT NULL
);
CREATE INDEX generations_model ON generations(model_id, created_at);
