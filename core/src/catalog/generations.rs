//! SQL for the `generations` table (usage history of every model).

use rusqlite::{params, Connection, Row};

use super::{from_json, to_json};
use crate::error::Result;
use crate::generation::{GenerationFilter, GenerationRecord, ModelUsage};

const COLS: &str = "id, model_id, base_model_id, kind, params, prompt_tokens, generated_tokens, finish_reason, \
    ttft_ms, duration_ms, created_at";

fn row_to_record(r: &Row<'_>) -> rusqlite::Result<GenerationRecord> {
    Ok(GenerationRecord {
        id: r.get(0)?,
        model_id: crate::registry::ModelId(r.get(1)?),
        base_model_id: crate::registry::ModelId(r.get(2)?),
        kind: r.get(3)?,
        params: from_json(&r.get::<_, String>(4)?)?,
        prompt_tokens: r.get::<_, i64>(5)? as u64,
        generated_tokens: r.get::<_, i64>(6)? as u64,
        finish_reason: r.get(7)?,
        ttft_ms: r.get(8)?,
        duration_ms: r.get(9)?,
        created_at: r.get(10)?,
    })
}

pub(crate) fn insert(conn: &Connection, rec: &GenerationRecord) -> Result<()> {
    conn.execute(
        &format!("INSERT INTO generations ({COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"),
        params![
            rec.id,
            rec.model_id.0,
            rec.base_model_id.0,
            rec.kind,
            to_json(&rec.params)?,
            rec.prompt_tokens as i64,
            rec.generated_tokens as i64,
            rec.finish_reason,
            rec.ttft_ms,
            rec.duration_ms,
            rec.created_at,
        ],
    )?;
    Ok(())
}

/// Newest first.
pub(crate) fn list(conn: &Connection, model_id: Option<&str>, f: &GenerationFilter) -> Result<Vec<GenerationRecord>> {
    let limit = f.limit.map_or(-1, |l| l as i64);
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLS} FROM generations WHERE (?1 IS NULL OR model_id = ?1) AND (?2 IS NULL OR kind = ?2) \
         ORDER BY created_at DESC, rowid DESC LIMIT ?3"
    ))?;
    let rows = stmt.query_map(params![model_id, f.kind, limit], row_to_record)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

pub(crate) fn usage(conn: &Connection, model_id: &str) -> Result<ModelUsage> {
    Ok(conn.query_row(
        "SELECT COUNT(*),
                COALESCE(SUM(CASE kind WHEN 'score' THEN 0 WHEN 'batch' THEN COALESCE(json_extract(params, '$.prompts'), 1) ELSE 1 END), 0), COALESCE(SUM(prompt_tokens), 0),
                COALESCE(SUM(generated_tokens), 0), COALESCE(SUM(duration_ms), 0), MAX(created_at)
         FROM generations WHERE model_id = ?1",
        params![model_id],
        |r| {
            Ok(ModelUsage {
                model_id: crate::registry::ModelId(model_id.to_string()),
                calls: r.get::<_, i64>(0)? as u64,
                generations: r.get::<_, i64>(1)? as u64,
                prompt_tokens: r.get::<_, i64>(2)? as u64,
                generated_tokens: r.get::<_, i64>(3)? as u64,
                total_duration_ms: r.get(4)?,
                last_used_at: r.get(5)?,
            })
        },
    )?)
}
