//! Error mapping: every error that reaches JavaScript is an `Error` whose `code` is the
//! core's `Error::code()` (`not_found`, `invalid_data`, ...), with a few structured extras.

use napi::bindgen_prelude::{JsObjectValue, JsValue};
use napi::{Env, Status};

use crate::conv::camel;

/// Builds the JS error for a core error: `message` as in Rust, `code` as `Error::code()`.
///
/// Extras: `invalid_data` has `file`, `record` and `field` when known; `duplicate_content`
/// has `existingId`, `existingName` and `sha256`; `incompatible_home` has `found` and
/// `supported`. `invalid_config` names the field the way JavaScript spells it (camelCase).
pub(crate) fn to_js(env: &Env, err: anneal::Error) -> napi::Error {
    match build(env, err) {
        Ok(e) => e,
        Err(e) => e,
    }
}

fn build(env: &Env, err: anneal::Error) -> napi::Result<napi::Error> {
    let err = js_spelling(err);
    let mut obj = env.create_error(napi::Error::new(Status::GenericFailure, err.to_string()))?;
    obj.set_named_property("code", err.code())?;
    match &err {
        anneal::Error::InvalidData { location, .. } => {
            if let Some(f) = &location.file {
                obj.set_named_property("file", f.display().to_string())?;
            }
            if let Some(r) = location.record {
                obj.set_named_property("record", r as f64)?;
            }
            if let Some(f) = &location.field {
                obj.set_named_property("field", f.as_str())?;
            }
        }
        anneal::Error::InvalidConfig { field, .. } => obj.set_named_property("field", field.as_str())?,
        anneal::Error::DuplicateContent { sha256, existing_id, existing_name, .. } => {
            obj.set_named_property("existingId", existing_id.as_str())?;
            obj.set_named_property("existingName", existing_name.as_str())?;
            obj.set_named_property("sha256", sha256.as_str())?;
        }
        anneal::Error::IncompatibleHome { found, supported, .. } => {
            obj.set_named_property("found", *found)?;
            obj.set_named_property("supported", *supported)?;
        }
        anneal::Error::FileNotFound { path } => obj.set_named_property("path", path.display().to_string())?,
        _ => {}
    }
    Ok(napi::Error::from(obj.to_unknown()))
}

/// Option and argument names as JavaScript callers wrote them (`sourceFormat`, not
/// `source_format`), also in serde's list of the known options.
fn js_spelling(err: anneal::Error) -> anneal::Error {
    match err {
        anneal::Error::InvalidConfig { field, reason } => {
            let reason = match reason.split_once(", expected one of ") {
                Some((head, known)) if reason.starts_with("unknown field") => {
                    let known: Vec<String> = known.split(", ").map(camel).collect();
                    format!("{head}, expected one of {}", known.join(", "))
                }
                _ => reason,
            };
            anneal::Error::InvalidConfig { field: camel(&field), reason }
        }
        other => other,
    }
}

/// Runs a synchronous core call and maps its error.
pub(crate) fn sync<T>(env: &Env, f: impl FnOnce() -> anneal::Result<T>) -> napi::Result<T> {
    f().map_err(|e| to_js(env, e))
}
