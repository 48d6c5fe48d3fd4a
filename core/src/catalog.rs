//! The SQLite catalog: connection, pragmas, migrations, and all SQL.
//!
//! One [`Catalog`] per opened [`crate::Home`]; several processes may open the same
//! file at once (WAL, busy timeout, `BEGIN IMMEDIATE` for every write).

pub(crate) mod continual;
pub(crate) mod datasets;
pub(crate) mod generations;
pub(crate) mod jobs;
pub(crate) mod models;
pub(crate) mod monitor;
pub(crate) mod outbox;
pub(crate) mod stats;
pub(crate) mod timeline;
pub(crate) mod tokens;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, ValueRef};
use rusqlite::{Connection, OpenFlags, Row, ToSql, Transaction, TransactionBehavior};

use crate::error::{Error, Result};
use crate::types::{
    AliasAction, DatasetFormat, DatasetId, DecisionKind, DeliveryStatus, DriftCheckId, DriftVerdict, EvaluationId,
    Family, FinishReason, GenerationId, GenerationKind, JobId, JobStatus, MetricKind, ModelId, ModelKind, PredictionId,
    SourceFormat, Storage, TokenScope, WebhookFormat,
};

/// Migrations in order; migration `i` brings the schema to version `i + 1`.
const MIGRATIONS: &[&str] = &[
    include_str!("catalog/migrations/0001_init.sql"),
    include_str!("catalog/migrations/0002_jobs.sql"),
    include_str!("catalog/migrations/0003_generations.sql"),
    include_str!("catalog/migrations/0004_job_lease.sql"),
    include_str!("catalog/migrations/0005_job_image.sql"),
    include_str!("catalog/migrations/0006_continual.sql"),
    include_str!("catalog/migrations/0007_outbox.sql"),
    include_str!("catalog/migrations/0008_alias_history.sql"),
    include_str!("catalog/migrations/0009_monitors.sql"),
    include_str!("catalog/migrations/0010_monitor_feeds.sql"),
    include_str!("catalog/migrations/0011_tokens.sql"),
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// A connection or a transaction, as the APIs see it when they add their own writes
/// to one of the catalog's transactions (rusqlite stays inside the catalog layer).
pub(crate) type Conn = Connection;

pub(crate) struct Catalog {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl Catalog {
    /// Opens (creating if needed) the catalog at `path` and migrates it.
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags)?;
        conn.busy_timeout(Duration::from_secs(30))?;
        // journal_mode must be set outside a transaction; it persists in the file.
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Internal(format!("could not enable WAL (got {mode})")));
        }
        conn.execute_batch("PRAGMA foreign_keys=ON; PRAGMA synchronous=NORMAL;")?;
        let mut cat = Catalog { conn: Mutex::new(conn), path: path.to_path_buf() };
        cat.migrate()?;
        Ok(cat)
    }

    fn migrate(&mut self) -> Result<()> {
        let path = self.path.clone();
        let conn = self.conn.get_mut().map_err(|_| poisoned())?;
        let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        check_version(&path, found)?;
        if found == SCHEMA_VERSION {
            return Ok(());
        }
        // Re-read inside the write lock: another process may have migrated meanwhile.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let current: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        check_version(&path, current)?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", i as i64 + 1)?;
        }
        tx.commit()?;
        Ok(())
    }

    pub(crate) fn schema_version(&self) -> Result<i64> {
        Ok(self.lock()?.query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    pub(crate) fn lock(&self) -> Result<MutexGuard<'_, Connection>> {
        self.conn.lock().map_err(|_| poisoned())
    }

    /// Runs `f` in a `BEGIN IMMEDIATE` transaction and commits it.
    pub(crate) fn write<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        let mut conn = self.lock()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// Runs `f` in a read transaction: every query it makes sees the same state of the
    /// catalog, whatever other processes write meanwhile.
    pub(crate) fn snapshot<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = self.lock()?;
        let tx = conn.unchecked_transaction()?;
        let out = f(&tx)?;
        tx.finish()?;
        Ok(out)
    }

    /// Runs `f` on a read snapshot.
    pub(crate) fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = self.lock()?;
        f(&conn)
    }
}

fn check_version(path: &Path, found: i64) -> Result<()> {
    if found > SCHEMA_VERSION {
        return Err(Error::IncompatibleHome { path: path.to_path_buf(), found, supported: SCHEMA_VERSION });
    }
    Ok(())
}

fn poisoned() -> Error {
    Error::Internal("catalog lock poisoned".into())
}

/// Named enums are stored as their name; a name this build does not know is a
/// conversion error naming the column, never a silent default.
macro_rules! named_column {
    ($($t:ty),+) => {$(
        impl ToSql for $t {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }
        impl FromSql for $t {
            fn column_result(v: ValueRef<'_>) -> FromSqlResult<Self> {
                v.as_str()?.parse().map_err(|e: Error| FromSqlError::Other(Box::new(e)))
            }
        }
    )+};
}

named_column!(
    AliasAction,
    DatasetFormat,
    SourceFormat,
    Family,
    ModelKind,
    Storage,
    JobStatus,
    MetricKind,
    FinishReason,
    GenerationKind,
    DriftVerdict,
    WebhookFormat,
    DeliveryStatus,
    DecisionKind,
    TokenScope
);

/// Ids are stored as their text.
macro_rules! id_column {
    ($($t:ident),+) => {$(
        impl ToSql for $t {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }
        impl FromSql for $t {
            fn column_result(v: ValueRef<'_>) -> FromSqlResult<Self> {
                String::column_result(v).map($t)
            }
        }
    )+};
}

id_column!(DatasetId, ModelId, JobId, GenerationId, PredictionId, EvaluationId, DriftCheckId);

/// A JSON column, by name.
pub(crate) fn json_col<T: serde::de::DeserializeOwned>(r: &Row<'_>, col: &str) -> rusqlite::Result<T> {
    from_json(&r.get::<_, String>(col)?)
}

/// A nullable JSON column, by name.
pub(crate) fn opt_json_col<T: serde::de::DeserializeOwned>(r: &Row<'_>, col: &str) -> rusqlite::Result<Option<T>> {
    r.get::<_, Option<String>>(col)?.map(|s| from_json(&s)).transpose()
}

/// JSON column helpers.
pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::Internal(format!("serialize: {e}")))
}

pub(crate) fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> rusqlite::Result<T> {
    serde_json::from_str(s)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e)))
}

/// True when a rusqlite error is a UNIQUE constraint violation.
pub(crate) fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
            || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rusqlite::OptionalExtension;

    #[test]
    fn migrates_once_and_refuses_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("anneal.db");
        let c = Catalog::open(&p).unwrap();
        assert_eq!(c.schema_version().unwrap(), SCHEMA_VERSION);
        drop(c);
        // Reopening is a no-op.
        let c = Catalog::open(&p).unwrap();
        c.lock().unwrap().pragma_update(None, "user_version", SCHEMA_VERSION + 5).unwrap();
        drop(c);
        let before = std::fs::read(&p).unwrap();
        let err = Catalog::open(&p).err().unwrap();
        assert_eq!(err.code(), "incompatible_home");
        assert!(err.to_string().contains("newer"), "{err}");
        // Untouched (the WAL was checkpointed on close; the main file is identical).
        assert_eq!(before, std::fs::read(&p).unwrap());
    }

    #[test]
    fn alias_history_backfills_the_aliases_that_exist() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("anneal.db");
        // A catalog of the schema before the alias history, with two aliases.
        let before = MIGRATIONS.iter().position(|m| m.contains("CREATE TABLE alias_history")).unwrap();
        {
            let conn = Connection::open(&p).unwrap();
            for m in &MIGRATIONS[..before] {
                conn.execute_batch(m).unwrap();
            }
            conn.pragma_update(None, "user_version", before as i64).unwrap();
            conn.execute_batch(
                "INSERT INTO models (id, name, version, kind, family, architecture, model_type, params, dtype, bytes,
                     sha256, storage, path, files, source, tags, lineage, config, created_at)
                 VALUES ('mdl_a', 'm', 3, 'base', 'llama', 'LlamaForCausalLM', 'llama', 1, 'f32', 1, 'x', 'copy',
                     'models/mdl_a', '[]', 'preset:nano', '[]', '{}', '{}', '2026-01-01T00:00:00.000Z');
                 INSERT INTO aliases VALUES ('m', 'production', 'mdl_a', '2026-01-02T00:00:00.000Z');
                 INSERT INTO aliases VALUES ('m', 'canary', 'mdl_a', '2026-01-01T12:00:00.000Z');",
            )
            .unwrap();
        }
        let c = Catalog::open(&p).unwrap();
        let conn = c.lock().unwrap();
        let mut st = conn
            .prepare("SELECT alias, model_id, version, previous_id, action, at FROM alias_history ORDER BY id")
            .unwrap();
        type Row = (String, String, u32, Option<String>, String, String);
        let rows: Vec<Row> = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let row = |alias: &str, at: &str| {
            (alias.to_string(), "mdl_a".to_string(), 3, None, "backfill".to_string(), at.to_string())
        };
        // One row each, in the order they were set, at the time they were set.
        assert_eq!(rows, [row("canary", "2026-01-01T12:00:00.000Z"), row("production", "2026-01-02T00:00:00.000Z")]);
        let lineage: Option<String> =
            conn.query_row("SELECT lineage FROM datasets LIMIT 1", [], |r| r.get(0)).optional().unwrap().flatten();
        assert!(lineage.is_none());
    }

    #[test]
    fn pragmas_are_set() {
        let dir = tempfile::tempdir().unwrap();
        let c = Catalog::open(&dir.path().join("a.db")).unwrap();
        let conn = c.lock().unwrap();
        let fk: i64 = conn.query_row("PRAGMA foreign_keys", [], |r| r.get(0)).unwrap();
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        let busy: i64 = conn.query_row("PRAGMA busy_timeout", [], |r| r.get(0)).unwrap();
        assert_eq!((fk, mode.as_str()), (1, "wal"));
        assert!(busy >= 1000);
    }
}
