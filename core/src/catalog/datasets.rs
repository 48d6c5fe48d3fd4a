//! SQL for the `datasets` table.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{from_json, is_unique_violation, json_col, to_json};
use crate::error::{Error, Result};
use crate::types::{DatasetLineage, DatasetRecord, DatasetStats};

const COLS: &str =
    "id, name, format, sha256, num_records, bytes, source, source_format, columns, parent_id, created_at";

fn row_to_record(home: &Path, r: &Row<'_>) -> rusqlite::Result<DatasetRecord> {
    let sha: String = r.get("sha256")?;
    Ok(DatasetRecord {
        id: r.get("id")?,
        name: r.get("name")?,
        format: r.get("format")?,
        path: home.join("datasets").join(&sha).join("records.jsonl"),
        sha256: sha,
        num_records: r.get("num_records")?,
        bytes: r.get("bytes")?,
        source: r.get("source")?,
        source_format: r.get("source_format")?,
        columns: json_col(r, "columns")?,
        parent_id: r.get("parent_id")?,
        created_at: r.get("created_at")?,
    })
}

pub(crate) fn insert(conn: &Connection, rec: &DatasetRecord, stats: &DatasetStats) -> Result<()> {
    let res = conn.execute(
        "INSERT INTO datasets (id, name, format, sha256, num_records, bytes, source, source_format, columns, parent_id, stats, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        params![
            rec.id,
            rec.name,
            rec.format,
            rec.sha256,
            rec.num_records,
            rec.bytes,
            rec.source,
            rec.source_format,
            to_json(&rec.columns)?,
            rec.parent_id,
            to_json(stats)?,
            rec.created_at,
        ],
    );
    match res {
        Ok(_) => Ok(()),
        Err(e) if is_unique_violation(&e) => {
            if let Some(existing) = by_sha(conn, Path::new(""), &rec.sha256)? {
                return Err(Error::DuplicateContent {
                    what: "dataset",
                    sha256: rec.sha256.clone(),
                    existing_id: existing.id.0,
                    existing_name: existing.name,
                });
            }
            Err(Error::AlreadyExists { what: "dataset", id: rec.name.clone(), detail: String::new() })
        }
        Err(e) => Err(e.into()),
    }
}

fn one(conn: &Connection, home: &Path, where_: &str, key: &str) -> Result<Option<DatasetRecord>> {
    let sql = format!("SELECT {COLS} FROM datasets WHERE {where_} = ?1");
    Ok(conn.query_row(&sql, [key], |r| row_to_record(home, r)).optional()?)
}

pub(crate) fn by_id(conn: &Connection, home: &Path, id: &str) -> Result<Option<DatasetRecord>> {
    one(conn, home, "id", id)
}

pub(crate) fn by_name(conn: &Connection, home: &Path, name: &str) -> Result<Option<DatasetRecord>> {
    one(conn, home, "name", name)
}

pub(crate) fn by_sha(conn: &Connection, home: &Path, sha: &str) -> Result<Option<DatasetRecord>> {
    one(conn, home, "sha256", sha)
}

pub(crate) fn list(conn: &Connection, home: &Path) -> Result<Vec<DatasetRecord>> {
    let mut st = conn.prepare(&format!("SELECT {COLS} FROM datasets ORDER BY created_at, rowid"))?;
    let rows = st.query_map([], |r| row_to_record(home, r))?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

pub(crate) fn stats(conn: &Connection, id: &str) -> Result<Option<DatasetStats>> {
    let s: Option<String> =
        conn.query_row("SELECT stats FROM datasets WHERE id = ?1", [id], |r| r.get(0)).optional()?;
    Ok(match s {
        Some(s) => Some(from_json(&s)?),
        None => None,
    })
}

/// Stores a dataset's lineage (JSON), in the transaction that inserts its row.
pub(crate) fn set_lineage(conn: &Connection, id: &str, lineage: &str) -> Result<()> {
    conn.execute("UPDATE datasets SET lineage = ?2 WHERE id = ?1", params![id, lineage])?;
    Ok(())
}

pub(crate) fn lineage(conn: &Connection, id: &str) -> Result<Option<DatasetLineage>> {
    let s: Option<Option<String>> =
        conn.query_row("SELECT lineage FROM datasets WHERE id = ?1", [id], |r| r.get(0)).optional()?;
    Ok(match s.flatten() {
        Some(s) => Some(from_json(&s)?),
        None => None,
    })
}

/// Ids of jobs that use the dataset (for training or evaluation).
pub(crate) fn jobs_using(conn: &Connection, id: &str) -> Result<Vec<String>> {
    let mut st = conn.prepare(&format!(
        "SELECT id FROM jobs WHERE (dataset_id = ?1 OR eval_dataset_id = ?1) AND NOT ({}) ORDER BY id",
        super::jobs::FAILED_BEFORE_FIRST_STEP
    ))?;
    let rows = st.query_map([id], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<Vec<String>>>()?)
}

/// Detaches jobs from the dataset and deletes its row.
pub(crate) fn delete(conn: &Connection, id: &str) -> Result<()> {
    conn.execute("UPDATE jobs SET dataset_id = NULL WHERE dataset_id = ?1", [id])?;
    conn.execute("UPDATE jobs SET eval_dataset_id = NULL WHERE eval_dataset_id = ?1", [id])?;
    conn.execute("DELETE FROM datasets WHERE id = ?1", [id])?;
    Ok(())
}

/// Every stored content hash (for sweeping orphaned directories).
pub(crate) fn all_shas(conn: &Connection) -> Result<Vec<String>> {
    let mut st = conn.prepare("SELECT sha256 FROM datasets")?;
    let rows = st.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<Vec<String>>>()?)
}
