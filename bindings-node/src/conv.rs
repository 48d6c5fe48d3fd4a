//! Conversions between JavaScript values and the core's JSON forms.
//!
//! - Options objects: camelCase keys at the top level become the core's snake_case field
//!   names, and the core builds its options struct (`anneal::options_from_json`), so
//!   defaults and validation stay there. `onEvent` and `cancel` are taken out first.
//! - Records and events: serialized by the core, then keys turned into camelCase, except
//!   inside fields that hold user data or foreign JSON (`config`, `lineage`, `columns`,
//!   `labelCounts`, `metrics`, ...), which keep their own keys.

use napi::bindgen_prelude::{
    ClassInstance, FromNapiValue, JsObjectValue, JsValue, Object, ToNapiValue, TypeName, Unknown, ValueType,
};
use napi::sys;
use serde_json::{Map, Value};

use crate::events::{CancelToken, OnEvent};

/// Fields whose values keep their keys: foreign JSON (config.json, lineage) or user data.
const VERBATIM: [&str; 7] = ["columns", "config", "lineage", "label_counts", "role_counts", "tokens", "metrics"];

/// `num_records` -> `numRecords`.
pub(crate) fn camel(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut upper = false;
    for c in s.chars() {
        if c == '_' && !out.is_empty() {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// `onDuplicate` -> `on_duplicate`.
pub(crate) fn snake(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// A core value (record, event, stats) with the keys JavaScript expects.
pub(crate) fn js_keys(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| {
                    let v = if VERBATIM.contains(&k.as_str()) { v } else { js_keys(v) };
                    (camel(&k), v)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(js_keys).collect()),
        other => other,
    }
}

/// Serialized core output, ready for JavaScript.
pub(crate) fn js(v: serde_json::Result<Value>) -> anneal::Result<Value> {
    v.map(js_keys).map_err(|e| anneal::Error::Internal(format!("cannot serialize result: {e}")))
}

/// A JSON value handed to JavaScript (records, events, lists).
pub struct JsJson(pub Value);

impl TypeName for JsJson {
    fn type_name() -> &'static str {
        "unknown"
    }
    fn value_type() -> ValueType {
        ValueType::Unknown
    }
}

impl ToNapiValue for JsJson {
    unsafe fn to_napi_value(env: sys::napi_env, val: Self) -> napi::Result<sys::napi_value> {
        // SAFETY: forwarded unchanged from napi's own call with a valid env.
        unsafe { Value::to_napi_value(env, val.0) }
    }
}

/// An options object split into its parts.
#[derive(Default)]
pub(crate) struct CallOptions {
    /// The remaining options with snake_case keys, for `anneal::options_from_json`.
    pub(crate) json: Value,
    pub(crate) on_event: Option<OnEvent>,
    pub(crate) cancel: anneal::CancelToken,
}

impl CallOptions {
    /// Reads an options object. `events`: whether the call takes `onEvent` and `cancel`.
    pub(crate) fn parse(options: Option<Unknown<'_>>, events: bool) -> anneal::Result<CallOptions> {
        let mut out = CallOptions { json: Value::Object(Map::new()), ..Default::default() };
        let Some(obj) = object(options, "options")? else { return Ok(out) };
        let keys = Object::keys(&obj).map_err(|e| anneal::Error::config("options", e.reason))?;
        let mut map = Map::new();
        for key in keys {
            // `undefined` values are left out, as if not given.
            let Some(value) = get::<Unknown>(&obj, &key)? else { continue };
            let ty = value.get_type().map_err(|e| anneal::Error::config(key.as_str(), e.reason))?;
            match key.as_str() {
                "onEvent" | "cancel" if !events => {
                    return Err(anneal::Error::config(
                        key,
                        "this call does not report progress and cannot be cancelled",
                    ))
                }
                "onEvent" => {
                    if ty != ValueType::Function {
                        return Err(anneal::Error::config(key, "expected a function (event) => void"));
                    }
                    out.on_event = get(&obj, &key)?;
                }
                "cancel" => {
                    let token: Option<ClassInstance<CancelToken>> = get(&obj, &key)
                        .map_err(|_| anneal::Error::config("cancel", "expected a CancelToken (new CancelToken())"))?;
                    if let Some(t) = token {
                        out.cancel = t.inner.clone();
                    }
                }
                _ => {
                    if let Some(v) = get::<Value>(&obj, &key)? {
                        map.insert(snake(&key), integers(v));
                    }
                }
            }
        }
        out.json = Value::Object(map);
        Ok(out)
    }
}

/// Whole numbers as JSON integers. napi turns a JS number outside the u32 / i32 range into
/// a JSON float, which the core's integer options (a seed of 2^40) would refuse.
fn integers(v: Value) -> Value {
    const SAFE: f64 = 9_007_199_254_740_991.0; // Number.MAX_SAFE_INTEGER
    match v {
        Value::Number(n) if n.is_f64() => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && (0.0..=SAFE).contains(&f) => Value::from(f as u64),
            Some(f) if f.fract() == 0.0 && (-SAFE..0.0).contains(&f) => Value::from(f as i64),
            _ => Value::Number(n),
        },
        Value::Array(a) => Value::Array(a.into_iter().map(integers).collect()),
        Value::Object(m) => Value::Object(m.into_iter().map(|(k, v)| (k, integers(v))).collect()),
        other => other,
    }
}

fn get<V: FromNapiValue>(obj: &Object<'_>, key: &str) -> anneal::Result<Option<V>> {
    obj.get::<V>(key).map_err(|e| anneal::Error::config(key, e.reason))
}

fn type_error(name: &str, expected: &str, v: &Unknown<'_>) -> anneal::Error {
    let found = v.get_type().map(|t| format!("{t:?}").to_lowercase()).unwrap_or_else(|_| "?".into());
    anneal::Error::config(name, format!("expected {expected}, found {found}"))
}

/// A string argument; anything else is `invalid_config` naming the argument.
pub(crate) fn string(v: Unknown<'_>, name: &str) -> anneal::Result<String> {
    if v.get_type().ok() != Some(ValueType::String) {
        return Err(type_error(name, "a string", &v));
    }
    v.coerce_to_string()
        .and_then(|s| s.into_utf8())
        .and_then(|s| s.into_owned())
        .map_err(|e| anneal::Error::config(name, e.reason))
}

/// A number argument.
pub(crate) fn number(v: Unknown<'_>, name: &str) -> anneal::Result<f64> {
    if v.get_type().ok() != Some(ValueType::Number) {
        return Err(type_error(name, "a number", &v));
    }
    v.coerce_to_number().and_then(|n| n.get_double()).map_err(|e| anneal::Error::config(name, e.reason))
}

/// A count argument (a non-negative integer).
pub(crate) fn count(v: Unknown<'_>, name: &str) -> anneal::Result<usize> {
    let n = number(v, name)?;
    if n < 0.0 || n.fract() != 0.0 || n > u32::MAX as f64 {
        return Err(anneal::Error::config(name, format!("expected a non-negative integer, got {n}")));
    }
    Ok(n as usize)
}

/// An optional object argument: `undefined` and `null` are `None`.
pub(crate) fn object<'a>(v: Option<Unknown<'a>>, name: &str) -> anneal::Result<Option<Object<'a>>> {
    let Some(v) = v else { return Ok(None) };
    match v.get_type() {
        Ok(ValueType::Undefined | ValueType::Null) => Ok(None),
        Ok(ValueType::Object) if !v.is_array().unwrap_or(false) => {
            v.coerce_to_object().map(Some).map_err(|e| anneal::Error::config(name, e.reason))
        }
        _ => Err(type_error(name, "an object", &v)),
    }
}

/// A JS array of records as the core's record stream: one `Result` per element, so a
/// value that cannot become JSON is reported at its record number.
pub(crate) fn records(records: Unknown<'_>) -> anneal::Result<Vec<anneal::Result<Value>>> {
    let not_array = || anneal::Error::config("records", "expected an array of objects");
    if !records.is_array().map_err(|_| not_array())? {
        return Err(not_array());
    }
    let arr = records.coerce_to_object().map_err(|_| not_array())?;
    let len = arr.get_array_length().map_err(|_| not_array())?;
    Ok((0..len)
        .map(|i| {
            arr.get_element::<Value>(i).map_err(|e| {
                anneal::Error::data(anneal::Location::default().at(u64::from(i) + 1), format!("not JSON: {}", e.reason))
            })
        })
        .collect())
}

/// Takes the keys a binding-level options object may have; any other key is an error.
pub(crate) fn fields(json: Value, allowed: &[&str]) -> anneal::Result<Map<String, Value>> {
    let map = match json {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    if let Some(k) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(anneal::Error::config(
            k.as_str(),
            format!(
                "unknown option `{}`, expected one of {}",
                camel(k),
                allowed.iter().map(|a| camel(a)).collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    Ok(map)
}

/// `{force}` of the `delete` calls.
pub(crate) fn force(json: Value) -> anneal::Result<bool> {
    match fields(json, &["force"])?.get("force") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(anneal::Error::config("force", "expected a boolean")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_conversions() {
        assert_eq!(camel("num_records"), "numRecords");
        assert_eq!(camel("sha256"), "sha256");
        assert_eq!(camel("columns.prompt"), "columns.prompt");
        assert_eq!(snake("onDuplicate"), "on_duplicate");
        assert_eq!(snake("name"), "name");
        let v =
            js_keys(serde_json::json!({"parent_id": null, "columns": {"my_col": "a_b"}, "files": [{"min_chars": 1}]}));
        assert_eq!(v, serde_json::json!({"parentId": null, "columns": {"my_col": "a_b"}, "files": [{"minChars": 1}]}));
        let big = serde_json::json!({"seed": 1099511627776.0, "lr": 0.5, "n": [-3e10], "f": 1e300});
        assert_eq!(
            integers(big),
            serde_json::json!({"seed": 1099511627776u64, "lr": 0.5, "n": [-30000000000i64], "f": 1e300})
        );
    }
}
