-- anneal catalog: alias history and dataset lineage.
--
-- Every change of an alias (set, moved, removed, promoted, rolled back, dropped with its
-- model) adds one row here, in the transaction that changes `aliases`: "what was
-- production at time t" and rollback() read it. model_id and previous_id have no
-- foreign key on purpose: the history outlives a deleted model (the versions keep the
-- `name@version` readable).
CREATE TABLE alias_history (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    name             TEXT NOT NULL,
    alias            TEXT NOT NULL,
    model_id         TEXT,             -- what the alias points at afterwards; NULL once removed
    version          INTEGER,          -- that model's version
    previous_id      TEXT,             -- what it pointed at before; NULL when it was unset
    previous_version INTEGER,
    action           TEXT NOT NULL,    -- set | remove | promote | rollback | delete | backfill
    reason           TEXT,
    at               TEXT NOT NULL
);
CREATE INDEX alias_history_alias ON alias_history(name, alias, id);
CREATE INDEX alias_history_at ON alias_history(at);

-- The aliases that exist when the history begins: one row each.
INSERT INTO alias_history (name, alias, model_id, version, previous_id, previous_version, action, reason, at)
    SELECT a.name, a.alias, a.model_id, m.version, NULL, NULL, 'backfill', 'alias existed when the history began',
           a.updated_at
    FROM aliases a JOIN models m ON m.id = a.model_id
    ORDER BY a.updated_at, a.name, a.alias;

-- Where a dataset came from beyond `source` (JSON DatasetLineage: a model's generations).
ALTER TABLE datasets ADD COLUMN lineage TEXT;
