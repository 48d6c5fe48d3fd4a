//! Conversions between JavaScript values and the core's JSON forms. The naming rule is
//! the core's (`anneal::types::schema`), driven by each value's type:
//!
//! - Options objects: their camelCase keys are checked and turned into the options
//!   struct by `anneal::options_from_json_spelled` (unknown keys at any depth, mistyped
//!   values and defaults are the core's). `onEvent` and `cancel` are taken out first.
//! - Records, stats, reports and events: `anneal::to_json_spelled` spells the fields of
//!   anneal's types in camelCase; map keys and foreign JSON (`config`, `params`,
//!   `columns`, `labelCounts` keys, ...) keep their own.

use napi::bindgen_prelude::{
    ClassInstance, FnArgs, FromNapiValue, Function, FunctionRef, JsObjectValue, JsValue, Object, ToNapiValue, TypeName,
    Unknown, ValueType,
};
use napi::{sys, Env};
use serde_json::{Map, Value};

use crate::events::{CancelToken, OnEvent};

/// One of anneal's values (record, stats, report, event, or a list of them) as JSON
/// for JavaScript: `anneal::to_json_spelled` with its real type, in camelCase.
macro_rules! js {
    ($value:expr) => {
        anneal::to_json_spelled(&$value, anneal::Spelling::Camel)
    };
}
pub(crate) use js;

/// An options struct of the core (the type is inferred) from a JavaScript options
/// object's JSON: `anneal::options_from_json_spelled` in camelCase.
macro_rules! options {
    ($json:expr) => {
        anneal::options_from_json_spelled($json, anneal::Spelling::Camel)
    };
}
pub(crate) use options;

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
    /// The remaining options, keys as given, for `options!` (or `fields`).
    pub(crate) json: Value,
    pub(crate) on_event: Option<OnEvent>,
    pub(crate) cancel: anneal::CancelToken,
    /// Removes the `abort` listener that `signal` got (call it on the JS thread when
    /// the call settles: `detach`).
    pub(crate) detach: Option<Detach>,
}

/// Removes a call's `abort` listener from its `AbortSignal`.
pub(crate) type Detach = FunctionRef<(), ()>;

/// `(signal, cancel) => detach | null`: the script that attaches the `abort` listener.
type Attach<'a> = Function<'a, FnArgs<(Unknown<'a>, Function<'a, (), ()>)>, Unknown<'a>>;

/// Calls `detach` (on the JS thread, once the call has settled).
pub(crate) fn detach(env: &Env, detach: Option<Detach>) -> napi::Result<()> {
    match detach {
        Some(f) => f.borrow_back(env)?.call(()),
        None => Ok(()),
    }
}

/// Listens for `abort` on `signal` (an `AbortSignal`): cancels `token` when it fires (or
/// at once when it already has). Returns the function that removes the listener.
fn listen(signal: Unknown<'_>, token: &anneal::CancelToken) -> anneal::Result<Detach> {
    let bad = |reason: String| anneal::Error::config("signal", reason);
    let env = Env::from_raw(signal.value().env);
    let attach: Attach = env
        .run_script(
            "(function (signal, cancel) {
                if (!(signal instanceof AbortSignal)) return null
                if (signal.aborted) { cancel(); return function () {} }
                signal.addEventListener('abort', cancel, { once: true })
                return function () { signal.removeEventListener('abort', cancel) }
            })",
        )
        .map_err(|e| bad(e.reason))?;
    let token = token.clone();
    let cancel = env
        .create_function_from_closure::<(), (), _>("cancel", move |_| {
            token.cancel();
            Ok(())
        })
        .map_err(|e| bad(e.reason))?;
    let detach = attach.call(FnArgs::from((signal, cancel))).map_err(|e| bad(e.reason))?;
    if detach.get_type().ok() != Some(ValueType::Function) {
        return Err(type_error("signal", "an AbortSignal", &signal));
    }
    // SAFETY: `detach` is a live function value of this env (checked above).
    let f = unsafe { Function::<(), ()>::from_napi_value(env.raw(), detach.raw()) }.map_err(|e| bad(e.reason))?;
    f.create_ref().map_err(|e| bad(e.reason))
}

impl CallOptions {
    /// Reads an options object. `events`: whether the call takes `onEvent` and `cancel`.
    pub(crate) fn parse(options: Option<Unknown<'_>>, events: bool) -> anneal::Result<CallOptions> {
        let mut out = CallOptions { json: Value::Object(Map::new()), ..Default::default() };
        let Some(obj) = object(options, "options")? else { return Ok(out) };
        let keys = Object::keys(&obj).map_err(|e| anneal::Error::config("options", e.reason))?;
        let mut map = Map::new();
        let mut signal = None;
        let mut has_cancel = false;
        for key in keys {
            // `undefined` values are left out, as if not given.
            let Some(value) = get::<Unknown>(&obj, &key)? else { continue };
            let ty = value.get_type().map_err(|e| anneal::Error::config(key.as_str(), e.reason))?;
            match key.as_str() {
                "onEvent" | "cancel" | "signal" if !events => {
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
                        has_cancel = true;
                    }
                }
                "signal" => signal = Some(value),
                "on_event" if events => {
                    return Err(anneal::Error::config(key, "unknown option `on_event` (did you mean `onEvent`?)"))
                }
                _ => {
                    if let Some(v) = get::<Unknown>(&obj, &key)? {
                        let v = json(v, &key)?;
                        if !v.is_null() || ty == ValueType::Null {
                            map.insert(key, v);
                        }
                    }
                }
            }
        }
        if let Some(signal) = signal {
            if has_cancel {
                return Err(anneal::Error::config(
                    "signal",
                    "give either `cancel` (a CancelToken) or `signal`, not both",
                ));
            }
            out.detach = Some(listen(signal, &out.cancel)?);
        }
        out.json = Value::Object(map);
        Ok(out)
    }
}

/// An options object of a call without `onEvent` / `cancel` (filters, settings, specs)
/// as JSON, for `options!`.
pub(crate) fn plain(options: Option<Unknown<'_>>) -> anneal::Result<Value> {
    CallOptions::parse(options, false).map(|o| o.json)
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

/// Any JS value as JSON (a prompt, a list); one that cannot be is `invalid_config`
/// naming the argument.
pub(crate) fn json(v: Unknown<'_>, name: &str) -> anneal::Result<Value> {
    strict_json(v).map_err(|(path, reason)| {
        let field = match path.chars().next() {
            None => name.to_string(),
            Some('[') => format!("{name}{path}"),
            Some(_) => format!("{name}.{path}"),
        };
        anneal::Error::config(field, reason)
    })
}

/// A JS array as JSON values; anything else is `invalid_config`: expected `expected`.
pub(crate) fn list(v: Unknown<'_>, name: &str, expected: &str) -> anneal::Result<Vec<Value>> {
    match json(v, name) {
        Ok(Value::Array(items)) => Ok(items),
        _ => Err(anneal::Error::config(name, format!("expected {expected}"))),
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
            let at = anneal::Location::default().at(u64::from(i) + 1);
            let item = arr.get_element::<Unknown>(i).map_err(|e| anneal::Error::data(at.clone(), e.reason))?;
            strict_json(item).map_err(|(path, reason)| {
                anneal::Error::data(if path.is_empty() { at } else { at.field(path) }, reason)
            })
        })
        .collect())
}

/// Deepest nesting converted from JavaScript. The core refuses records nested deeper
/// than it can read back, naming the field; this only stops absurd depths early.
const MAX_DEPTH: usize = 1000;

/// A JavaScript value as JSON, refusing what a plain conversion would change silently:
/// a lone surrogate (napi's UTF-8 conversion replaces it with U+FFFD), a BigInt, NaN or
/// an infinity, a function or a symbol. `undefined` members are left out and
/// `undefined` items become null, as `JSON.stringify` does. An error carries the path of
/// the value (`meta.tags[1]`) and the reason.
pub(crate) fn strict_json(v: Unknown<'_>) -> Result<Value, (String, String)> {
    let mut path = String::new();
    Ok(strict(v, &mut path, 0)?.unwrap_or(Value::Null))
}

fn strict(v: Unknown<'_>, path: &mut String, depth: usize) -> Result<Option<Value>, (String, String)> {
    let fail = |path: &String, reason: String| (path.clone(), reason);
    let napi = |path: &String, e: napi::Error| (path.clone(), e.reason.clone());
    if depth > MAX_DEPTH {
        return Err(fail(path, format!("is nested deeper than {MAX_DEPTH} levels")));
    }
    let value = match v.get_type().map_err(|e| napi(path, e))? {
        ValueType::Undefined => return Ok(None),
        ValueType::Null => Value::Null,
        ValueType::Boolean => Value::Bool(v.coerce_to_bool().map_err(|e| napi(path, e))?),
        ValueType::Number => {
            let n = v.coerce_to_number().and_then(|n| n.get_double()).map_err(|e| napi(path, e))?;
            match serde_json::Number::from_f64(n) {
                Some(n) => integers(Value::Number(n)),
                None => return Err(fail(path, format!("{n} is not a finite number"))),
            }
        }
        ValueType::String => Value::String(utf16(v, path)?),
        ValueType::BigInt => return Err(fail(path, "is a BigInt, which JSON cannot hold: pass a Number".into())),
        ValueType::Object if v.is_array().map_err(|e| napi(path, e))? => {
            let arr = v.coerce_to_object().map_err(|e| napi(path, e))?;
            let len = arr.get_array_length().map_err(|e| napi(path, e))?;
            let mut out = Vec::with_capacity(len.min(1 << 16) as usize);
            for i in 0..len {
                let mark = path.len();
                path.push_str(&format!("[{i}]"));
                let item = arr.get_element::<Unknown>(i).map_err(|e| napi(path, e))?;
                out.push(strict(item, path, depth + 1)?.unwrap_or(Value::Null));
                path.truncate(mark);
            }
            Value::Array(out)
        }
        ValueType::Object => {
            let obj = v.coerce_to_object().map_err(|e| napi(path, e))?;
            let names = obj.get_property_names().map_err(|e| napi(path, e))?;
            let len = names.get_array_length().map_err(|e| napi(path, e))?;
            let mut map = Map::new();
            for i in 0..len {
                let key = names.get_element::<Unknown>(i).map_err(|e| napi(path, e))?;
                let key = utf16(key, path)?;
                let mark = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(&key);
                let item = obj.get_named_property::<Unknown>(&key).map_err(|e| napi(path, e))?;
                if let Some(value) = strict(item, path, depth + 1)? {
                    map.insert(key, value);
                }
                path.truncate(mark);
            }
            Value::Object(map)
        }
        other => return Err(fail(path, format!("cannot hold a {}", format!("{other:?}").to_lowercase()))),
    };
    Ok(Some(value))
}

/// A JS string (or a property name) as Rust text; a lone surrogate is an error.
fn utf16(v: Unknown<'_>, path: &str) -> Result<String, (String, String)> {
    let s = v.coerce_to_string().and_then(|s| s.into_utf16()).map_err(|e| (path.to_string(), e.reason.clone()))?;
    // The buffer ends with napi's NUL terminator.
    let units = s.as_slice();
    String::from_utf16(&units[..units.len().saturating_sub(1)])
        .map_err(|_| (path.to_string(), "is not valid Unicode text (a lone surrogate)".to_string()))
}

/// The keys of an options object that has no options struct in the core (the core
/// takes these as plain arguments: `force`, `seed`, `names`, `adapter`); any other key is
/// refused as the core refuses it.
pub(crate) fn fields(json: Value, allowed: &[&str]) -> anneal::Result<Map<String, Value>> {
    let map = match json {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    if let Some(k) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        let expected = if allowed.is_empty() { "onEvent, cancel".to_string() } else { allowed.join(", ") };
        return Err(anneal::Error::config(k.as_str(), format!("unknown option `{k}` (expected one of: {expected})")));
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_numbers_become_integers() {
        let big = serde_json::json!({"seed": 1099511627776.0, "lr": 0.5, "n": [-3e10], "f": 1e300});
        assert_eq!(
            integers(big),
            serde_json::json!({"seed": 1099511627776u64, "lr": 0.5, "n": [-30000000000i64], "f": 1e300})
        );
    }
}
