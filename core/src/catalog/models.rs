//! SQL for the `models`, `aliases` and `alias_history` tables.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{is_unique_violation, json_col, to_json};
use crate::error::{Error, Result};
use crate::types::{AliasAction, AliasChange, ModelFilter, ModelRecord, Storage};

const COLS: &str = "m.id AS id, m.name AS name, m.version AS version, m.kind AS kind, m.family AS family, \
    m.architecture AS architecture, m.model_type AS model_type, m.parent_id AS parent_id, m.params AS params, \
    m.dtype AS dtype, m.bytes AS bytes, m.sha256 AS sha256, m.storage AS storage, m.path AS path, m.files AS files, \
    m.tokenizer AS tokenizer, m.source AS source, m.task AS task, m.tags AS tags, m.lineage AS lineage, \
    m.config AS config, m.created_at AS created_at, \
    (SELECT group_concat(alias, ',') FROM (SELECT alias FROM aliases a WHERE a.model_id = m.id ORDER BY alias)) AS aliases";

fn row_to_record(home: &Path, r: &Row<'_>) -> rusqlite::Result<ModelRecord> {
    let storage: Storage = r.get("storage")?;
    let path: String = r.get("path")?;
    let aliases: Option<String> = r.get("aliases")?;
    Ok(ModelRecord {
        id: r.get("id")?,
        name: r.get("name")?,
        version: r.get("version")?,
        kind: r.get("kind")?,
        family: r.get("family")?,
        architecture: r.get("architecture")?,
        model_type: r.get("model_type")?,
        parent_id: r.get("parent_id")?,
        params: r.get("params")?,
        dtype: r.get("dtype")?,
        bytes: r.get("bytes")?,
        sha256: r.get("sha256")?,
        path: match storage {
            Storage::Copy => home.join(&path),
            Storage::Reference => path.into(),
        },
        storage,
        files: json_col(r, "files")?,
        tokenizer: r.get("tokenizer")?,
        source: r.get("source")?,
        task: r.get("task")?,
        tags: json_col(r, "tags")?,
        lineage: json_col(r, "lineage")?,
        config: json_col(r, "config")?,
        created_at: r.get("created_at")?,
        aliases: aliases.map(|a| a.split(',').map(str::to_string).collect()).unwrap_or_default(),
    })
}

/// Inserts a model with the next free version of its name; returns that version.
/// `stored_path` is relative to the home for copies, absolute for references.
pub(crate) fn insert(conn: &Connection, rec: &ModelRecord, stored_path: &str) -> Result<u32> {
    let version: u32 =
        conn.query_row("SELECT COALESCE(MAX(version), 0) + 1 FROM models WHERE name = ?1", [&rec.name], |r| r.get(0))?;
    let res = conn.execute(
        "INSERT INTO models (id, name, version, kind, family, architecture, model_type, parent_id, params, dtype,
             bytes, sha256, storage, path, files, tokenizer, source, task, tags, lineage, config, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22)",
        params![
            rec.id,
            rec.name,
            version,
            rec.kind,
            rec.family,
            rec.architecture,
            rec.model_type,
            rec.parent_id,
            rec.params,
            rec.dtype,
            rec.bytes,
            rec.sha256,
            rec.storage,
            stored_path,
            to_json(&rec.files)?,
            rec.tokenizer,
            rec.source,
            rec.task,
            to_json(&rec.tags)?,
            to_json(&rec.lineage)?,
            to_json(&rec.config)?,
            rec.created_at,
        ],
    );
    match res {
        Ok(_) => Ok(version),
        Err(e) if is_unique_violation(&e) => {
            Err(Error::AlreadyExists { what: "model", id: format!("{}@{version}", rec.name), detail: String::new() })
        }
        Err(e) => Err(e.into()),
    }
}

fn query(conn: &Connection, home: &Path, where_: &str, args: &[&dyn rusqlite::ToSql]) -> Result<Vec<ModelRecord>> {
    let sql = format!("SELECT {COLS} FROM models m {where_}");
    let mut st = conn.prepare(&sql)?;
    let rows = st.query_map(args, |r| row_to_record(home, r))?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

pub(crate) fn by_id(conn: &Connection, home: &Path, id: &str) -> Result<Option<ModelRecord>> {
    Ok(query(conn, home, "WHERE m.id = ?1", &[&id])?.into_iter().next())
}

pub(crate) fn by_name_version(conn: &Connection, home: &Path, name: &str, version: u32) -> Result<Option<ModelRecord>> {
    Ok(query(conn, home, "WHERE m.name = ?1 AND m.version = ?2", &[&name, &version])?.into_iter().next())
}

pub(crate) fn latest(conn: &Connection, home: &Path, name: &str) -> Result<Option<ModelRecord>> {
    Ok(query(conn, home, "WHERE m.name = ?1 ORDER BY m.version DESC LIMIT 1", &[&name])?.into_iter().next())
}

pub(crate) fn by_alias(conn: &Connection, home: &Path, name: &str, alias: &str) -> Result<Option<ModelRecord>> {
    let id: Option<String> = conn
        .query_row("SELECT model_id FROM aliases WHERE name = ?1 AND alias = ?2", [name, alias], |r| r.get(0))
        .optional()?;
    match id {
        Some(id) => by_id(conn, home, &id),
        None => Ok(None),
    }
}

pub(crate) fn list(conn: &Connection, home: &Path, f: &ModelFilter) -> Result<Vec<ModelRecord>> {
    let mut clauses = Vec::new();
    let mut args: Vec<&dyn rusqlite::ToSql> = Vec::new();
    let tag = f.tag.as_ref().map(|t| format!("%{}%", serde_json::Value::String(t.clone())));
    for (col, val) in [
        ("m.kind = ?", f.kind.as_ref().map(|k| k as &dyn rusqlite::ToSql)),
        ("m.family = ?", f.family.as_ref().map(|v| v as &dyn rusqlite::ToSql)),
        ("m.task = ?", f.task.as_ref().map(|v| v as &dyn rusqlite::ToSql)),
        ("m.name = ?", f.name.as_ref().map(|v| v as &dyn rusqlite::ToSql)),
        ("m.parent_id = ?", f.parent.as_ref().map(|v| v as &dyn rusqlite::ToSql)),
        ("m.tags LIKE ?", tag.as_ref().map(|v| v as &dyn rusqlite::ToSql)),
    ] {
        if let Some(v) = val {
            clauses.push(format!("{col}{}", args.len() + 1));
            args.push(v);
        }
    }
    let where_ = if clauses.is_empty() { String::new() } else { format!("WHERE {}", clauses.join(" AND ")) };
    query(conn, home, &format!("{where_} ORDER BY m.name, m.version"), &args)
}

/// What `name@alias` points at.
pub(crate) fn alias_target(conn: &Connection, name: &str, alias: &str) -> Result<Option<String>> {
    Ok(conn
        .query_row("SELECT model_id FROM aliases WHERE name = ?1 AND alias = ?2", [name, alias], |r| r.get(0))
        .optional()?)
}

/// One change to record in `alias_history`.
pub(crate) struct Change<'a> {
    pub(crate) action: AliasAction,
    pub(crate) reason: Option<&'a str>,
    pub(crate) at: &'a str,
}

/// Points `name@alias` at `id` and records the change (nothing when it already did).
pub(crate) fn set_alias(
    conn: &Connection,
    name: &str,
    alias: &str,
    id: &str,
    change: &Change<'_>,
) -> Result<Option<AliasChange>> {
    let before = alias_target(conn, name, alias)?;
    conn.execute(
        "INSERT INTO aliases (name, alias, model_id, updated_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(name, alias) DO UPDATE SET model_id = excluded.model_id, updated_at = excluded.updated_at",
        params![name, alias, id, change.at],
    )?;
    if before.as_deref() == Some(id) {
        return Ok(None);
    }
    record(conn, name, alias, Some(id), before.as_deref(), change).map(Some)
}

/// Removes `name@alias` and records it; `None` when there was no such alias.
pub(crate) fn remove_alias(
    conn: &Connection,
    name: &str,
    alias: &str,
    change: &Change<'_>,
) -> Result<Option<AliasChange>> {
    let Some(before) = alias_target(conn, name, alias)? else {
        return Ok(None);
    };
    conn.execute("DELETE FROM aliases WHERE name = ?1 AND alias = ?2", [name, alias])?;
    record(conn, name, alias, None, Some(&before), change).map(Some)
}

const HISTORY_COLS: &str = "id, name, alias, model_id, version, previous_id, previous_version, action, reason, at";

fn row_to_change(r: &Row<'_>) -> rusqlite::Result<AliasChange> {
    Ok(AliasChange {
        id: r.get("id")?,
        name: r.get("name")?,
        alias: r.get("alias")?,
        model_id: r.get("model_id")?,
        version: r.get("version")?,
        previous_id: r.get("previous_id")?,
        previous_version: r.get("previous_version")?,
        action: r.get("action")?,
        reason: r.get("reason")?,
        at: r.get("at")?,
    })
}

/// Adds a row to `alias_history` (versions read from the models, which still exist).
fn record(
    conn: &Connection,
    name: &str,
    alias: &str,
    id: Option<&str>,
    previous: Option<&str>,
    change: &Change<'_>,
) -> Result<AliasChange> {
    conn.execute(
        "INSERT INTO alias_history (name, alias, model_id, version, previous_id, previous_version, action, reason, at)
         VALUES (?1, ?2, ?3, (SELECT version FROM models WHERE id = ?3), ?4, (SELECT version FROM models WHERE id = ?4),
                 ?5, ?6, ?7)",
        params![name, alias, id, previous, change.action, change.reason, change.at],
    )?;
    let row = conn.last_insert_rowid();
    Ok(conn.query_row(&format!("SELECT {HISTORY_COLS} FROM alias_history WHERE id = ?1"), [row], row_to_change)?)
}

/// Changes of `name`'s aliases (of `alias` only, when given), newest first.
pub(crate) fn history(conn: &Connection, name: &str, alias: Option<&str>) -> Result<Vec<AliasChange>> {
    let mut st = conn.prepare(&format!(
        "SELECT {HISTORY_COLS} FROM alias_history WHERE name = ?1 AND (?2 IS NULL OR alias = ?2) ORDER BY id DESC"
    ))?;
    let rows = st.query_map(params![name, alias], row_to_change)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// The change of `name@alias` in effect at `at` (the last one made at or before it).
pub(crate) fn change_at(conn: &Connection, name: &str, alias: &str, at: &str) -> Result<Option<AliasChange>> {
    Ok(conn
        .query_row(
            &format!(
                "SELECT {HISTORY_COLS} FROM alias_history WHERE name = ?1 AND alias = ?2 AND at <= ?3
                 ORDER BY id DESC LIMIT 1"
            ),
            params![name, alias, at],
            row_to_change,
        )
        .optional()?)
}

/// What `id` replaced as `name@alias` the last time it was pointed there by anything
/// but a rollback: `Some(None)` when the alias was unset then, `None` when it never was.
pub(crate) fn replaced_by(conn: &Connection, name: &str, alias: &str, id: &str) -> Result<Option<Option<String>>> {
    Ok(conn
        .query_row(
            "SELECT previous_id FROM alias_history WHERE name = ?1 AND alias = ?2 AND model_id = ?3
                 AND action <> 'rollback' ORDER BY id DESC LIMIT 1",
            params![name, alias, id],
            |r| r.get(0),
        )
        .optional()?)
}

/// Whether a model with this id exists.
pub(crate) fn exists(conn: &Connection, id: &str) -> Result<bool> {
    let mut st = conn.prepare_cached("SELECT EXISTS (SELECT 1 FROM models WHERE id = ?1)")?;
    Ok(st.query_row([id], |r| r.get(0))?)
}

pub(crate) fn children(conn: &Connection, home: &Path, id: &str) -> Result<Vec<ModelRecord>> {
    query(conn, home, "WHERE m.parent_id = ?1 ORDER BY m.name, m.version", &[&id])
}

pub(crate) fn jobs_using(conn: &Connection, id: &str) -> Result<Vec<String>> {
    let mut st = conn.prepare(&format!(
        "SELECT id FROM jobs WHERE base_model_id = ?1 AND NOT ({}) ORDER BY id",
        super::jobs::FAILED_BEFORE_FIRST_STEP
    ))?;
    let rows = st.query_map([id], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<Vec<String>>>()?)
}

/// The model a reference (`id`, `name`, `name@version`, `name@alias`, `name@latest`)
/// stands for, read on `conn`.
pub(crate) fn resolve(conn: &Connection, home: &Path, r: &str) -> Result<Option<ModelRecord>> {
    if let Some(m) = by_id(conn, home, r)? {
        return Ok(Some(m));
    }
    match r.split_once('@') {
        None => latest(conn, home, r),
        Some((name, "latest")) => latest(conn, home, name),
        Some((name, tail)) => match tail.parse::<u32>() {
            Ok(v) => by_name_version(conn, home, name, v),
            Err(_) => by_alias(conn, home, name, tail),
        },
    }
}

/// Jobs that may still run (pending, running or interrupted, or failed or cancelled
/// after their first step: resumable from a checkpoint) and continue the adapter `id`:
/// their `init_adapter` resolves to it now.
pub(crate) fn jobs_continuing(conn: &Connection, home: &Path, id: &str) -> Result<Vec<String>> {
    let mut st = conn.prepare(
        "SELECT id, json_extract(spec, '$.init_adapter') FROM jobs
         WHERE json_extract(spec, '$.init_adapter') IS NOT NULL
           AND (status IN ('pending', 'running')
                OR (status IN ('failed', 'cancelled') AND (step > 0 OR checkpoint IS NOT NULL)))
         ORDER BY id",
    )?;
    let rows = st
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut out = Vec::new();
    for (job, r) in rows {
        if resolve(conn, home, &r)?.is_some_and(|m| m.id.0 == id) {
            out.push(job);
        }
    }
    Ok(out)
}

/// Detaches jobs and deletes the row; its aliases go with it, each recorded in the
/// alias history (action `delete`).
pub(crate) fn delete(conn: &Connection, id: &str, at: &str) -> Result<()> {
    let mut st = conn.prepare("SELECT name, alias FROM aliases WHERE model_id = ?1 ORDER BY alias")?;
    let aliases = st
        .query_map([id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let change = Change { action: AliasAction::Delete, reason: None, at };
    for (name, alias) in aliases {
        remove_alias(conn, &name, &alias, &change)?;
    }
    conn.execute("UPDATE jobs SET base_model_id = NULL WHERE base_model_id = ?1", [id])?;
    conn.execute("UPDATE jobs SET output_model_id = NULL WHERE output_model_id = ?1", [id])?;
    conn.execute("DELETE FROM models WHERE id = ?1", [id])?;
    Ok(())
}

pub(crate) fn all_ids(conn: &Connection) -> Result<Vec<String>> {
    let mut st = conn.prepare("SELECT id FROM models")?;
    let rows = st.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<Vec<String>>>()?)
}
