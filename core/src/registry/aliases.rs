//! Alias moves inside a caller's transaction: [`promote_in`] and [`rollback_in`] are
//! the whole of [`super::ModelRegistry::promote`] and [`super::ModelRegistry::rollback`],
//! shared with the monitors so that an alias move, a monitor's decision and the
//! webhooks' outbox rows commit together.

use std::collections::HashSet;

use crate::catalog::models as sql;
use crate::catalog::Conn;
use crate::error::{Error, Result};
use crate::types::{AliasAction, AliasMove, ModelId, ModelRecord, CANDIDATE, PREVIOUS, PRODUCTION};

/// Makes `m` the production model of its name inside `tx`: `production` moves to it,
/// the model it replaces moves to `previous`, and `candidate` is removed if it pointed
/// at `m`; each change recorded with action `promote`, `reason` and time `now`.
/// Promoting the production model changes nothing (but a `candidate` alias on it is
/// still removed). A model deleted meanwhile is `not_found`.
pub(crate) fn promote_in(tx: &Conn, m: &ModelRecord, reason: Option<&str>, now: &str) -> Result<AliasMove> {
    if !sql::exists(tx, &m.id.0)? {
        return Err(Error::not_found("model", m.reference()));
    }
    let change = sql::Change { action: AliasAction::Promote, reason, at: now };
    let mut changes = Vec::new();
    let current = sql::alias_target(tx, &m.name, PRODUCTION)?;
    if current.as_deref() != Some(m.id.0.as_str()) {
        if let Some(old) = &current {
            changes.extend(sql::set_alias(tx, &m.name, PREVIOUS, old, &change)?);
        }
        changes.extend(sql::set_alias(tx, &m.name, PRODUCTION, &m.id.0, &change)?);
    }
    if sql::alias_target(tx, &m.name, CANDIDATE)?.as_deref() == Some(m.id.0.as_str()) {
        changes.extend(sql::remove_alias(tx, &m.name, CANDIDATE, &change)?);
    }
    let previous = sql::alias_target(tx, &m.name, PREVIOUS)?.map(ModelId);
    Ok(AliasMove { production: m.id.clone(), previous, changes })
}

/// Moves `production` of model name `name` back to `previous` inside `tx` (see
/// [`super::ModelRegistry::rollback`] for the walk back through the promotions); each
/// change recorded with action `rollback`. No `previous` is `not_found`
/// (`name@previous`).
pub(crate) fn rollback_in(tx: &Conn, name: &str, reason: Option<&str>, now: &str) -> Result<AliasMove> {
    let change = sql::Change { action: AliasAction::Rollback, reason, at: now };
    let Some(target) = sql::alias_target(tx, name, PREVIOUS)? else {
        return Err(Error::not_found("alias", format!("{name}@{PREVIOUS}")));
    };
    // The model `target` replaced, skipping deleted ones and the model rolled back
    // from (and never going round a cycle).
    let current = sql::alias_target(tx, name, PRODUCTION)?;
    let mut seen = HashSet::from([target.clone()]);
    let mut cursor = target.clone();
    let mut before = None;
    while let Some(Some(prev)) = sql::replaced_by(tx, name, PRODUCTION, &cursor)? {
        if !seen.insert(prev.clone()) {
            break;
        }
        if current.as_deref() != Some(prev.as_str()) && sql::exists(tx, &prev)? {
            before = Some(prev);
            break;
        }
        cursor = prev;
    }
    let mut changes = Vec::new();
    changes.extend(sql::set_alias(tx, name, PRODUCTION, &target, &change)?);
    match &before {
        Some(b) => changes.extend(sql::set_alias(tx, name, PREVIOUS, b, &change)?),
        None => changes.extend(sql::remove_alias(tx, name, PREVIOUS, &change)?),
    }
    Ok(AliasMove { production: ModelId(target), previous: before.map(ModelId), changes })
}
