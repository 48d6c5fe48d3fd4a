//! Error mapping: every error that reaches JavaScript is an `Error` whose `code` is the
//! core's `Error::code()` (`not_found`, `invalid_data`, ...), with a few structured extras.

use napi::bindgen_prelude::{JsObjectValue, JsValue};
use napi::{Env, Status};

use crate::conv::JsJson;

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
    let err = js_field(err);
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
        anneal::Error::JobCancelled { job_id, .. } => obj.set_named_property("jobId", job_id.as_str())?,
        _ => {}
    }
    Ok(napi::Error::from(obj.to_unknown()))
}

/// `invalid_config` names the field as JavaScript spells it: the core's options already
/// do (`options_from_json_spelled`); its checks of a built value (`TrainSpec::validate`)
/// name the Rust field (`batch_size` -> `batchSize`).
fn js_field(err: anneal::Error) -> anneal::Error {
    match err {
        anneal::Error::InvalidConfig { field, reason } => {
            anneal::Error::InvalidConfig { field: anneal::Spelling::Camel.spell(&field), reason }
        }
        other => other,
    }
}

/// Runs a synchronous core call and maps its error.
pub(crate) fn sync<T>(env: &Env, f: impl FnOnce() -> anneal::Result<T>) -> napi::Result<T> {
    f().map_err(|e| to_js(env, e))
}

/// Runs a synchronous core call that returns JSON for JavaScript (`js!`).
pub(crate) fn json(env: &Env, f: impl FnOnce() -> anneal::Result<serde_json::Value>) -> napi::Result<JsJson> {
    sync(env, f).map(JsJson)
}
