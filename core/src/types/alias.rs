//! Alias history: every change of a model alias, promotions and rollbacks.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::ids::ModelId;
use super::names::named_enum;
use crate::error::{Error, Result};

/// The alias a promotion moves a model to.
pub const PRODUCTION: &str = "production";
/// The alias the replaced production model moves to.
pub const PREVIOUS: &str = "previous";
/// The alias a promotion clears when it pointed at the promoted model.
pub const CANDIDATE: &str = "candidate";

named_enum! {
    /// What changed an alias.
    pub enum AliasAction("action") {
        /// [`crate::ModelRegistry::set_alias`].
        Set = "set",
        /// [`crate::ModelRegistry::remove_alias`].
        Remove = "remove",
        /// [`crate::ModelRegistry::promote`].
        Promote = "promote",
        /// [`crate::ModelRegistry::rollback`].
        Rollback = "rollback",
        /// The model the alias pointed at was deleted.
        Delete = "delete",
        /// The alias existed when the history began (catalog migration).
        Backfill = "backfill",
    }
}

/// One change of one alias (a row of the catalog's `alias_history`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AliasChange {
    /// Increasing with every change: the order of changes, also within one millisecond.
    pub id: u64,
    /// The model name the alias belongs to.
    pub name: String,
    pub alias: String,
    /// What the alias points at afterwards; `None` when the change removed it.
    pub model_id: Option<ModelId>,
    /// That model's version (kept after the model is deleted).
    pub version: Option<u32>,
    /// What it pointed at before; `None` when it was unset.
    pub previous_id: Option<ModelId>,
    pub previous_version: Option<u32>,
    pub action: AliasAction,
    pub reason: Option<String>,
    /// RFC 3339, milliseconds, UTC.
    pub at: String,
}

/// Options of [`crate::ModelRegistry::promote`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PromoteOptions {
    /// Recorded with each alias change (e.g. "accuracy 0.91 > 0.88 on eval-v3").
    pub reason: Option<String>,
}

/// Options of [`crate::ModelRegistry::rollback`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RollbackOptions {
    /// Recorded with each alias change.
    pub reason: Option<String>,
}

/// What a promotion or a rollback did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AliasMove {
    /// The model `production` points at afterwards.
    pub production: ModelId,
    /// The model `previous` points at afterwards (`None`: unset).
    pub previous: Option<ModelId>,
    /// The history rows written, in order (empty when nothing changed).
    pub changes: Vec<AliasChange>,
}

/// Longest accepted `reason`, in bytes.
pub const MAX_REASON_BYTES: usize = 4096;

pub(crate) fn check_reason(reason: &Option<String>) -> Result<()> {
    if reason.as_ref().is_some_and(|r| r.len() > MAX_REASON_BYTES) {
        return Err(Error::config("reason", format!("is longer than {MAX_REASON_BYTES} bytes")));
    }
    Ok(())
}

/// An RFC 3339 time (`2026-12-01T04:00:00Z`, fractions and offsets allowed; a date and
/// time without offset is UTC) in the catalog's form (UTC, milliseconds), so that it
/// compares with stored times as text. Anything else is `invalid_config` naming `field`.
pub(crate) fn catalog_time(field: &str, s: &str) -> Result<String> {
    let t = s.trim();
    let parsed = humantime::parse_rfc3339_weak(t)
        .ok()
        .or_else(|| parse_with_offset(t))
        .ok_or_else(|| Error::config(field, format!("`{s}` is not an RFC 3339 time (e.g. 2026-12-01T04:00:00Z)")))?;
    Ok(humantime::format_rfc3339_millis(parsed).to_string())
}

/// `...+HH:MM` / `...-HH:MM`, which humantime does not read: shifted to UTC.
fn parse_with_offset(t: &str) -> Option<std::time::SystemTime> {
    if t.len() < 6 {
        return None;
    }
    let (head, off) = t.split_at(t.len() - 6);
    let b = off.as_bytes();
    if !(matches!(b[0], b'+' | b'-') && b[3] == b':') {
        return None;
    }
    let hours: u64 = off.get(1..3)?.parse().ok()?;
    let minutes: u64 = off.get(4..6)?.parse().ok()?;
    if hours > 23 || minutes > 59 {
        return None;
    }
    let local = humantime::parse_rfc3339_weak(head).ok()?;
    let shift = std::time::Duration::from_secs(hours * 3600 + minutes * 60);
    if b[0] == b'+' {
        local.checked_sub(shift)
    } else {
        local.checked_add(shift)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn times_are_normalised_to_the_catalog_form() {
        assert_eq!(catalog_time("at", "2026-12-01T04:00:00Z").unwrap(), "2026-12-01T04:00:00.000Z");
        assert_eq!(catalog_time("at", "2026-12-01T04:00:00.1239Z").unwrap(), "2026-12-01T04:00:00.123Z");
        assert_eq!(catalog_time("at", "2026-12-01 04:00:00").unwrap(), "2026-12-01T04:00:00.000Z");
        assert_eq!(catalog_time("at", "2026-12-01T06:30:00+02:30").unwrap(), "2026-12-01T04:00:00.000Z");
        assert_eq!(catalog_time("at", "2026-12-01T01:00:00-03:00").unwrap(), "2026-12-01T04:00:00.000Z");
        for bad in ["", "yesterday", "2026-13-01T00:00:00Z", "2026-12-01T04:00:00+25:00"] {
            let e = catalog_time("since", bad).unwrap_err();
            assert!(matches!(&e, Error::InvalidConfig { field, .. } if field == "since"), "{bad}: {e}");
        }
    }
}
