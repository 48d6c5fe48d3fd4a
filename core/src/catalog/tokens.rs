//! SQL for the `tokens` table (bearer tokens of `anneal serve`).

use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::error::{Error, Result};
use crate::types::TokenRecord;

const COLS: &str = "id, name, scope, created_at, last_used_at, revoked_at";

fn row_to_record(r: &Row<'_>) -> rusqlite::Result<TokenRecord> {
    Ok(TokenRecord {
        id: r.get("id")?,
        name: r.get("name")?,
        scope: r.get("scope")?,
        created_at: r.get("created_at")?,
        last_used_at: r.get("last_used_at")?,
        revoked_at: r.get("revoked_at")?,
    })
}

pub(crate) fn insert(conn: &Connection, rec: &TokenRecord, secret_sha256: &str) -> Result<()> {
    conn.execute(
        "INSERT INTO tokens (id, name, scope, secret_sha256, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![rec.id, rec.name, rec.scope, secret_sha256, rec.created_at],
    )?;
    Ok(())
}

/// Every token, oldest first.
pub(crate) fn list(conn: &Connection) -> Result<Vec<TokenRecord>> {
    let mut st = conn.prepare(&format!("SELECT {COLS} FROM tokens ORDER BY created_at, id"))?;
    let rows = st.query_map([], row_to_record)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub(crate) fn get(conn: &Connection, id: &str) -> Result<TokenRecord> {
    conn.query_row(&format!("SELECT {COLS} FROM tokens WHERE id = ?1"), [id], row_to_record)
        .optional()?
        .ok_or_else(|| Error::not_found("token", id))
}

/// The record and the stored secret hash of token `id`, if it exists.
pub(crate) fn with_hash(conn: &Connection, id: &str) -> Result<Option<(TokenRecord, String)>> {
    Ok(conn
        .query_row(&format!("SELECT {COLS}, secret_sha256 FROM tokens WHERE id = ?1"), [id], |r| {
            Ok((row_to_record(r)?, r.get("secret_sha256")?))
        })
        .optional()?)
}

/// Marks the token revoked (keeping the first revocation time).
pub(crate) fn revoke(conn: &Connection, id: &str, now: &str) -> Result<()> {
    get(conn, id)?;
    conn.execute("UPDATE tokens SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1", params![id, now])?;
    Ok(())
}

pub(crate) fn touch(conn: &Connection, id: &str, now: &str) -> Result<()> {
    conn.execute("UPDATE tokens SET last_used_at = ?2 WHERE id = ?1", params![id, now])?;
    Ok(())
}
