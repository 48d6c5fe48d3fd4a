//! Field names from the types themselves: options are checked and records renamed by
//! walking a value along its type's JSON schema (schemars), never by reading serde's
//! error text.
//!
//! One rule for every binding: the names of anneal's struct fields (and of its enums'
//! variant fields) are spelled the binding's way (`snake_case` in Rust and Python,
//! `camelCase` in JavaScript); keys of maps (`columns`, `label_counts`, `metrics`) and
//! of foreign JSON (a model's `config`, a generation's `params`) are data and are
//! never renamed.

use schemars::{JsonSchema, SchemaGenerator};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// How a binding spells field names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Spelling {
    /// `num_records` (Rust, Python, JSON files).
    #[default]
    Snake,
    /// `numRecords` (JavaScript).
    Camel,
}

impl Spelling {
    /// A Rust field name in this spelling.
    pub fn spell(self, field: &str) -> String {
        match self {
            Spelling::Snake => field.to_string(),
            Spelling::Camel => camel(field),
        }
    }

    /// A name in this spelling back to the Rust field name.
    pub fn unspell(self, name: &str) -> String {
        match self {
            Spelling::Snake => name.to_string(),
            Spelling::Camel => snake(name),
        }
    }
}

/// `num_records` -> `numRecords`.
pub fn camel(s: &str) -> String {
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
pub fn snake(s: &str) -> String {
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

/// The JSON schema of `T` (with its `$defs`), as a plain value.
pub fn schema_of<T: JsonSchema>() -> Value {
    let schema = SchemaGenerator::default().into_root_schema_for::<T>();
    schema.to_value()
}

/// Builds an options struct (`ImportOptions`, `RegisterOptions`, ...) from JSON, as the
/// bindings receive it: [`options_from_json_spelled`] with `snake_case` keys.
pub fn options_from_json<T: DeserializeOwned + JsonSchema>(value: Value) -> Result<T> {
    options_from_json_spelled(value, Spelling::Snake)
}

/// Builds an options struct (`ImportOptions`, `TrainSpec`, ...) from JSON whose keys
/// are spelled `spelling`'s way. Unknown keys (at any depth) are `invalid_config`
/// naming the key and listing the allowed ones; mistyped values are `invalid_config`
/// naming the field; unset fields take the struct's `Default`.
pub fn options_from_json_spelled<T: DeserializeOwned + JsonSchema>(value: Value, spelling: Spelling) -> Result<T> {
    let value = match value {
        Value::Null => Value::Object(Map::new()),
        v => v,
    };
    let schema = schema_of::<T>();
    let value = Walk { root: &schema, spelling, inbound: true }.value(value, &schema, "")?;
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { "options".to_string() } else { spell_path(&path, spelling) };
        Error::config(field, e.into_inner().to_string())
    })
}

/// A value of one of anneal's types as JSON with its field names spelled
/// `spelling`'s way (map keys and foreign JSON untouched).
pub fn to_json_spelled<T: Serialize + JsonSchema>(value: &T, spelling: Spelling) -> Result<Value> {
    let json = serde_json::to_value(value).map_err(|e| Error::Internal(format!("serialize: {e}")))?;
    if spelling == Spelling::Snake {
        return Ok(json);
    }
    let schema = schema_of::<T>();
    Walk { root: &schema, spelling, inbound: false }.value(json, &schema, "")
}

/// `method.lora.target_modules` in `spelling`.
fn spell_path(path: &str, spelling: Spelling) -> String {
    path.split('.').map(|p| spelling.spell(p)).collect::<Vec<_>>().join(".")
}

struct Walk<'a> {
    root: &'a Value,
    spelling: Spelling,
    /// Options coming in (keys in the binding's spelling, unknown keys refused), or a
    /// record going out (keys are Rust field names).
    inbound: bool,
}

impl Walk<'_> {
    /// Follows `$ref`s into `$defs`.
    fn resolve<'s>(&'s self, mut schema: &'s Value) -> &'s Value {
        for _ in 0..32 {
            let Some(r) = schema.get("$ref").and_then(Value::as_str) else { break };
            let Some(name) = r.strip_prefix("#/$defs/") else { break };
            match self.root.get("$defs").and_then(|d| d.get(name)) {
                Some(s) => schema = s,
                None => break,
            }
        }
        schema
    }

    /// The Rust field name a key stands for. Coming in, only the binding's own spelling
    /// of a field names it (`on_duplicate` is not a JavaScript key): `None` otherwise.
    fn field(&self, key: &str) -> Option<String> {
        if !self.inbound {
            return Some(key.to_string());
        }
        let field = self.spelling.unspell(key);
        (self.spelling.spell(&field) == key).then_some(field)
    }

    fn value(&self, value: Value, schema: &Value, path: &str) -> Result<Value> {
        let schema = self.resolve(schema);
        if let Some(branch) = self.branch(&value, schema) {
            return self.value(value, branch, path);
        }
        match value {
            Value::Object(m) => self.object(m, schema, path),
            Value::Array(items) => match schema.get("items") {
                Some(item) => items
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| self.value(v, item, &format!("{path}[{i}]")))
                    .collect::<Result<Vec<_>>>()
                    .map(Value::Array),
                None => Ok(Value::Array(items)),
            },
            other => Ok(other),
        }
    }

    fn object(&self, m: Map<String, Value>, schema: &Value, path: &str) -> Result<Value> {
        let props = schema.get("properties").and_then(Value::as_object);
        let extra = schema.get("additionalProperties");
        let join = |name: &str| if path.is_empty() { name.to_string() } else { format!("{path}.{name}") };
        let mut out = Map::with_capacity(m.len());
        for (key, v) in m {
            let field = self.field(&key);
            let prop = field.as_deref().and_then(|f| props.and_then(|p| p.get(f)).map(|p| (f, p)));
            if let Some((field, p)) = prop {
                let name = if self.inbound { field.to_string() } else { self.spelling.spell(field) };
                out.insert(name, self.value(v, p, &join(field))?);
            } else if let Some(map_values) = extra.filter(|e| e.is_object()) {
                // A map: its keys are data.
                let v = self.value(v, map_values, &format!("{path}[{key}]"))?;
                out.insert(key, v);
            } else if props.is_some() && self.inbound && extra == Some(&Value::Bool(false)) {
                let allowed: Vec<String> =
                    props.into_iter().flat_map(|p| p.keys()).map(|k| self.spelling.spell(k)).collect();
                let at =
                    if path.is_empty() { key.clone() } else { format!("{}.{key}", spell_path(path, self.spelling)) };
                return Err(Error::config(
                    at,
                    format!("unknown option `{key}` (expected one of: {})", allowed.join(", ")),
                ));
            } else {
                // Foreign JSON (`Value` fields) or an open object: kept as it is.
                out.insert(key, v);
            }
        }
        Ok(Value::Object(out))
    }

    /// For `anyOf` / `oneOf` (options, untagged and tagged enums): the branch `value`
    /// fits best: same JSON type, then every key known, then every `const` matching.
    fn branch<'s>(&self, value: &Value, schema: &'s Value) -> Option<&'s Value> {
        let branches = schema.get("anyOf").or_else(|| schema.get("oneOf"))?.as_array()?;
        let typed: Vec<&Value> = branches.iter().filter(|b| self.type_fits(value, self.resolve(b))).collect();
        let Value::Object(m) = value else { return typed.first().copied() };
        let fits = |b: &Value| {
            let b = self.resolve(b);
            let Some(props) = b.get("properties").and_then(Value::as_object) else { return true };
            m.iter().all(|(k, v)| match self.field(k).and_then(|f| props.get(&f)) {
                Some(p) => self.resolve(p).get("const").is_none_or(|c| c == v),
                None => b.get("additionalProperties").is_some_and(Value::is_object),
            })
        };
        typed.iter().copied().find(|b| fits(b)).or(typed.first().copied())
    }

    fn type_fits(&self, value: &Value, schema: &Value) -> bool {
        if schema.get("anyOf").or_else(|| schema.get("oneOf")).is_some() {
            return true;
        }
        let want = |t: &str| match schema.get("type") {
            None => true,
            Some(Value::String(s)) => s == t || (t == "integer" && s == "number") || (t == "number" && s == "integer"),
            Some(Value::Array(a)) => a.iter().any(|s| s.as_str() == Some(t)),
            Some(_) => true,
        };
        match value {
            Value::Null => want("null"),
            Value::Bool(_) => want("boolean"),
            Value::Number(_) => want("number") || want("integer"),
            Value::String(_) => want("string"),
            Value::Array(_) => want("array"),
            Value::Object(_) => want("object"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::json;

    use super::*;
    use crate::types::{DatasetStats, GenerationConfig, ImportOptions, TrainSpec};

    #[test]
    fn case_conversions() {
        assert_eq!(camel("num_records"), "numRecords");
        assert_eq!(snake("onDuplicate"), "on_duplicate");
        assert_eq!(snake(&camel("max_grad_norm")), "max_grad_norm");
    }

    #[test]
    fn options_from_json_names_bad_fields() {
        let o: ImportOptions = options_from_json(serde_json::json!({"name": "x", "on_duplicate": "reuse"})).unwrap();
        assert_eq!(o.name.as_deref(), Some("x"));
        let e = options_from_json::<ImportOptions>(serde_json::json!({"nme": "x"})).unwrap_err();
        assert_eq!(e.code(), "invalid_config");
        assert!(e.to_string().contains("`nme`"), "{e}");
        let e = options_from_json::<ImportOptions>(serde_json::json!({"format": "poem"})).unwrap_err();
        assert!(e.to_string().contains("poem") && e.to_string().contains("`format`"), "{e}");
    }

    #[test]
    fn unknown_options_name_the_key_and_list_the_fields() {
        let e = options_from_json_spelled::<ImportOptions>(json!({"nmae": "x"}), Spelling::Snake).unwrap_err();
        assert_eq!(e.code(), "invalid_config");
        assert!(e.to_string().contains("`nmae`") && e.to_string().contains("on_duplicate"), "{e}");
        let e = options_from_json_spelled::<ImportOptions>(json!({"onDuplikate": "x"}), Spelling::Camel).unwrap_err();
        assert!(e.to_string().contains("onDuplicate") && !e.to_string().contains("on_duplicate"), "{e}");
        // The Rust spelling is not a JavaScript key, at any depth.
        let e =
            options_from_json_spelled::<ImportOptions>(json!({"on_duplicate": "reuse"}), Spelling::Camel).unwrap_err();
        assert!(e.to_string().contains("`on_duplicate`") && e.to_string().contains("onDuplicate"), "{e}");
        let e = options_from_json_spelled::<TrainSpec>(
            json!({"base": "b", "dataset": "d", "method": {"lora": {"target_modules": []}}}),
            Spelling::Camel,
        )
        .unwrap_err();
        assert!(e.to_string().contains("`target_modules`"), "{e}");
        // Nested: inside the LoRA method.
        let e = options_from_json_spelled::<TrainSpec>(
            json!({"base": "b", "dataset": "d", "method": {"lora": {"rank": 4}}}),
            Spelling::Snake,
        )
        .unwrap_err();
        assert!(e.to_string().contains("method.lora.rank") && e.to_string().contains("target_modules"), "{e}");
        let e = options_from_json_spelled::<TrainSpec>(
            json!({"base": "b", "dataset": "d", "method": {"lora": {"targetModulez": []}}}),
            Spelling::Camel,
        )
        .unwrap_err();
        assert!(e.to_string().contains("method.lora.targetModulez") && e.to_string().contains("targetModules"), "{e}");
    }

    #[test]
    fn camel_options_become_the_struct() {
        let spec: TrainSpec = options_from_json_spelled(
            json!({"base": "b", "dataset": "d", "batchSize": 2, "method": {"lora": {"targetModules": ["q_proj"]}}}),
            Spelling::Camel,
        )
        .unwrap();
        assert_eq!(spec.batch_size, 2);
        let cfg: GenerationConfig =
            options_from_json_spelled(json!({"maxNewTokens": 3, "stop": "\n"}), Spelling::Camel).unwrap();
        assert_eq!((cfg.max_new_tokens, cfg.stop), (Some(3), vec!["\n".to_string()]));
        // A mistyped value names the field in the binding's spelling.
        let e = options_from_json_spelled::<TrainSpec>(json!({"batchSize": "x"}), Spelling::Camel).unwrap_err();
        assert!(e.to_string().contains("`batchSize`"), "{e}");
        // Map keys are data: kept as given.
        let o: ImportOptions =
            options_from_json_spelled(json!({"columns": {"prompt": "questionText"}}), Spelling::Camel).unwrap();
        assert_eq!(o.columns["prompt"], "questionText");
    }

    #[test]
    fn records_rename_fields_but_not_map_keys() {
        let mut stats = DatasetStats {
            num_records: 1,
            bytes: 2,
            fields: Default::default(),
            length_histogram: vec![],
            role_counts: None,
            label_counts: Some([("not_spam".to_string(), 1)].into()),
            images: None,
            tokens: None,
        };
        stats.fields.insert("text_field".into(), Default::default());
        let v = to_json_spelled(&stats, Spelling::Camel).unwrap();
        assert_eq!(v["numRecords"], 1);
        assert_eq!(v["labelCounts"]["not_spam"], 1);
        assert!(v["fields"]["text_field"].get("minChars").is_some(), "{v}");
        let spec = TrainSpec::default();
        let v = to_json_spelled(&spec, Spelling::Camel).unwrap();
        assert_eq!(v["method"]["lora"]["targetModules"], json!([]));
        assert_eq!(v["maxGradNorm"], json!(1.0));
    }
}
