//! SQL for the `generations` table (usage history of every model).

use rusqlite::{params, Connection, Row};

use super::{json_col, to_json};
use crate::error::Result;
use crate::types::{GenerationFilter, GenerationRecord, ModelId, ModelUsage};

const COLS: &str = "id, model_id, base_model_id, kind, params, prompt_tokens, generated_tokens, finish_reason, \
    ttft_ms, duration_ms, created_at";

fn row_to_record(r: &Row<'_>) -> rusqlite::Result<GenerationRecord> {
    Ok(GenerationRecord {
        id: r.get("id")?,
        model_id: r.get("model_id")?,
        base_model_id: r.get("base_model_id")?,
        kind: r.get("kind")?,
        params: json_col(r, "params")?,
        prompt_tokens: r.get("prompt_tokens")?,
        generated_tokens: r.get("generated_tokens")?,
        finish_reason: r.get("finish_reason")?,
        ttft_ms: r.get("ttft_ms")?,
        duration_ms: r.get("duration_ms")?,
        created_at: r.get("created_at")?,
    })
}

pub(crate) fn insert(conn: &Connection, rec: &GenerationRecord) -> Result<()> {
    conn.execute(
        &format!("INSERT INTO generations ({COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"),
        params![
            rec.id,
            rec.model_id,
            rec.base_model_id,
            rec.kind,
            to_json(&rec.params)?,
            rec.prompt_tokens,
            rec.generated_tokens,
            rec.finish_reason,
            rec.ttft_ms,
            rec.duration_ms,
            rec.created_at,
        ],
    )?;
    Ok(())
}

/// Newest first.
pub(crate) fn list(
    conn: &Connection,
    model_id: Option<&ModelId>,
    f: &GenerationFilter,
) -> Result<Vec<GenerationRecord>> {
    let limit = f.limit.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLS} FROM generations WHERE (?1 IS NULL OR model_id = ?1) AND (?2 IS NULL OR kind = ?2) \
         ORDER BY created_at DESC, rowid DESC LIMIT ?3"
    ))?;
    let rows = stmt.query_map(params![model_id, f.kind, limit], row_to_record)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

pub(crate) fn usage(conn: &Connection, model_id: &ModelId) -> Result<ModelUsage> {
    Ok(conn.query_row(
        "SELECT COUNT(*) AS calls,
                COALESCE(SUM(CASE kind WHEN 'score' THEN 0 WHEN 'batch' THEN COALESCE(json_extract(params, '$.prompts'), 1)
                    WHEN 'txt2img' THEN COALESCE(json_array_length(params, '$.prompts'), 1)
                    ELSE 1 END), 0) AS generations,
                COALESCE(SUM(prompt_tokens), 0) AS prompt_tokens, COALESCE(SUM(generated_tokens), 0) AS generated_tokens,
                COALESCE(SUM(duration_ms), 0) AS total_duration_ms, MAX(created_at) AS last_used_at
         FROM generations WHERE model_id = ?1",
        params![model_id],
        |r| {
            Ok(ModelUsage {
                model_id: model_id.clone(),
                calls: r.get("calls")?,
                generations: r.get("generations")?,
                prompt_tokens: r.get("prompt_tokens")?,
                generated_tokens: r.get("generated_tokens")?,
                total_duration_ms: r.get("total_duration_ms")?,
                last_used_at: r.get("last_used_at")?,
            })
        },
    )?)
}
