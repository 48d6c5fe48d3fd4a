//! Python object <-> `serde_json::Value`.
//!
//! Python -> JSON accepts `None`, `bool`, `int`, `float`, `str`, `list`, `tuple` and
//! `dict` (with `str` keys), including their subclasses; anything else is a `TypeError`
//! that names where in the value it was found.

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use serde_json::{Map, Number, Value};

use crate::errors::to_pyerr;

/// `'text'` as Python prints it (for `__repr__`).
pub(crate) fn q(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A serialized core value as a Python object.
pub(crate) fn json_to_py<'py>(py: Python<'py>, v: serde_json::Result<Value>) -> PyResult<Bound<'py, PyAny>> {
    let v = v.map_err(|e| to_pyerr(py, anneal::Error::Internal(e.to_string())))?;
    to_py(py, &v)
}

/// JSON -> Python (dicts keep key order).
pub fn to_py<'py>(py: Python<'py>, value: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match value {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into_pyobject(py)?.into_any()
            } else if let Some(u) = n.as_u64() {
                u.into_pyobject(py)?.into_any()
            } else {
                n.as_f64().unwrap_or(f64::NAN).into_pyobject(py)?.into_any()
            }
        }
        Value::String(s) => PyString::new(py, s).into_any(),
        Value::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(to_py(py, item)?)?;
            }
            list.into_any()
        }
        Value::Object(map) => {
            let dict = PyDict::new(py);
            for (k, v) in map {
                dict.set_item(k, to_py(py, v)?)?;
            }
            dict.into_any()
        }
    })
}

/// Python -> JSON. `what` names the value in error messages (e.g. "record 3" or
/// "columns"); nested positions are appended (`record 3, field meta.tags[1]`).
pub fn to_json(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Value> {
    let mut path = String::new();
    convert(obj, what, &mut path, 0)
}

/// The deepest nesting converted, which keeps the recursion far from the end of the
/// stack. The core refuses records nested deeper than it can read back (125 levels) with
/// the record's field named; this limit only stops absurd depths early.
const MAX_DEPTH: usize = 1000;

/// A value JSON cannot hold (NaN, an integer beyond 64 bits, a lone surrogate): the
/// core's typed error, `invalid_data` naming the record and field for records, else
/// `invalid_config` naming the option.
fn unrepresentable(obj: &Bound<'_, PyAny>, what: &str, path: &str, reason: String) -> PyErr {
    let err = match what.strip_prefix("record ").and_then(|n| n.parse::<u64>().ok()) {
        Some(n) => {
            let at = anneal::Location::default().at(n);
            anneal::Error::data(if path.is_empty() { at } else { at.field(path) }, reason)
        }
        None if path.is_empty() => anneal::Error::config(what, reason),
        // A training spec's fields are named as the core names them (`learning_rate`).
        None if what == "spec" => anneal::Error::config(path, reason),
        None => anneal::Error::config(format!("{what}.{path}"), reason),
    };
    crate::errors::to_pyerr(obj.py(), err)
}

fn convert(obj: &Bound<'_, PyAny>, what: &str, path: &mut String, depth: usize) -> PyResult<Value> {
    if depth > MAX_DEPTH {
        return Err(unrepresentable(obj, what, path, format!("is nested deeper than {MAX_DEPTH} levels")));
    }
    if obj.is_none() {
        return Ok(Value::Null);
    }
    if let Ok(b) = obj.cast::<PyBool>() {
        return Ok(Value::Bool(b.is_true()));
    }
    if obj.is_instance_of::<PyInt>() {
        if let Ok(i) = obj.extract::<i64>() {
            return Ok(Value::from(i));
        }
        if let Ok(u) = obj.extract::<u64>() {
            return Ok(Value::from(u));
        }
        return Err(unrepresentable(obj, what, path, format!("integer {} does not fit in 64 bits", obj.str()?)));
    }
    if let Ok(f) = obj.cast::<PyFloat>() {
        let v = f.value();
        return Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| unrepresentable(obj, what, path, format!("{v} is not a finite number")));
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return match s.to_str() {
            Ok(s) => Ok(Value::String(s.to_owned())),
            Err(_) => Err(unrepresentable(obj, what, path, "is not valid Unicode text (a lone surrogate)".into())),
        };
    }
    if let Ok(list) = obj.cast::<PyList>() {
        return seq(list.iter(), what, path, depth);
    }
    if let Ok(tuple) = obj.cast::<PyTuple>() {
        return seq(tuple.iter(), what, path, depth);
    }
    if let Ok(dict) = obj.cast::<PyDict>() {
        let mut map = Map::with_capacity(dict.len());
        for (k, v) in dict.iter() {
            let Ok(key) = k.cast::<PyString>() else {
                let reason = format!("has a dict key of type {}; keys must be str", k.get_type().name()?);
                return Err(unrepresentable(obj, what, path, reason));
            };
            let Ok(key) = key.to_str() else {
                return Err(unrepresentable(obj, what, path, "has a dict key that is not valid Unicode text".into()));
            };
            let key = key.to_owned();
            let len = path.len();
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(&key);
            let value = convert(&v, what, path, depth + 1)?;
            path.truncate(len);
            map.insert(key, value);
        }
        return Ok(Value::Object(map));
    }
    let reason =
        format!("cannot hold a {} (expected None, bool, int, float, str, list, tuple or dict)", obj.get_type().name()?);
    Err(unrepresentable(obj, what, path, reason))
}

fn seq<'py>(
    items: impl Iterator<Item = Bound<'py, PyAny>>,
    what: &str,
    path: &mut String,
    depth: usize,
) -> PyResult<Value> {
    let mut out = Vec::new();
    for (i, item) in items.enumerate() {
        let len = path.len();
        path.push_str(&format!("[{i}]"));
        out.push(convert(&item, what, path, depth + 1)?);
        path.truncate(len);
    }
    Ok(Value::Array(out))
}

/// Builds an options object from keyword arguments, leaving out the ones that are `None`
/// so that defaults and validation stay in the core (`anneal::options_from_json`).
#[derive(Default)]
pub struct Options(Map<String, Value>);

impl Options {
    /// Adds `key` unless `value` is `None` or Python `None`.
    pub fn set(mut self, key: &str, value: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        if let Some(v) = value.filter(|v| !v.is_none()) {
            self.0.insert(key.to_string(), to_json(v, key)?);
        }
        Ok(self)
    }

    /// The JSON object for `anneal::options_from_json`.
    pub fn into_value(self) -> Value {
        Value::Object(self.0)
    }
}

/// `force=` of the `delete` calls, read by the core (`DeleteOptions`).
pub fn delete_options(py: Python<'_>, force: Option<&Bound<'_, PyAny>>) -> PyResult<anneal::DeleteOptions> {
    let value = Options::default().set("force", force)?.into_value();
    anneal::options_from_json(value).map_err(|e| crate::errors::to_pyerr(py, e))
}
