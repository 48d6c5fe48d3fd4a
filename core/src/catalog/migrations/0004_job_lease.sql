-- anneal catalog, schema version 4: a job has one owner. A runner takes a fresh lease
-- when it claims the job; every write it makes checks it, so a runner presumed dead
-- (stale heartbeat) that wakes up after another took the job over stops instead of
-- writing or registering a model.
ALTER TABLE jobs ADD COLUMN lease TEXT;
