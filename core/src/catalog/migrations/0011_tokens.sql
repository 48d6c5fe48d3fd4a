-- anneal catalog, schema version 11: bearer tokens of `anneal serve` (Home::tokens).
-- Only the sha256 of each token's random secret is stored; the token itself is shown
-- once, when it is created. A revoked token keeps its row (revoked_at set).
CREATE TABLE tokens (
    id           TEXT PRIMARY KEY,           -- tok_<16 hex>, the public half of the token
    name         TEXT NOT NULL,
    scope        TEXT NOT NULL,              -- read | write | admin
    secret_sha256 TEXT NOT NULL,             -- hex sha256 of the 32 secret bytes
    created_at   TEXT NOT NULL,
    last_used_at TEXT,
    revoked_at   TEXT
);
