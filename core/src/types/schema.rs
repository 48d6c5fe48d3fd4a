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
        if self.inbound {
            self.check_type(&value, schema, path)?;
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
                // The other language's spelling of a real field: say which key it is here.
                let other = match self.spelling {
                    Spelling::Camel => Spelling::Camel.spell(&key),
                    Spelling::Snake => snake(&key),
                };
                let hint = if other != key && allowed.contains(&other) {
                    format!(" (did you mean `{other}`?)")
                } else {
                    format!(" (expected one of: {})", allowed.join(", "))
                };
                return Err(Error::config(at, format!("unknown option `{key}`{hint}")));
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

    /// Refuses a value of the wrong JSON type or, for a whole number, out of its Rust
    /// type's range, saying what was expected in words ("a whole number from 0 to
    /// 4294967295"), never a Rust type name.
    fn check_type(&self, value: &Value, schema: &Value, path: &str) -> Result<()> {
        if schema.get("type").is_none() || schema.get("anyOf").or_else(|| schema.get("oneOf")).is_some() {
            return Ok(());
        }
        let field = || if path.is_empty() { "options".to_string() } else { spell_path(path, self.spelling) };
        let is_integer = types_of(schema).any(|t| t == "integer");
        // Numbers and names only: other shapes may have a lenient reader (`stop` takes a
        // string or a list) and serde's words for them name no Rust type.
        let numeric = types_of(schema).all(|t| matches!(t, "integer" | "number" | "null"));
        if !numeric && schema.get("enum").is_none() {
            return Ok(());
        }
        let wrong = if !self.type_fits(value, schema) {
            true
        } else if let (true, Value::Number(n)) = (is_integer, value) {
            let (lo, hi) = integer_range(schema);
            let fits = match (n.as_i64(), n.as_u64()) {
                (_, Some(u)) => i128::from(u) >= lo && i128::from(u) <= hi,
                (Some(i), None) => i128::from(i) >= lo && i128::from(i) <= hi,
                (None, None) => false,
            };
            !fits
        } else {
            false
        };
        if wrong {
            return Err(Error::config(field(), format!("expected {}, got {}", describe(schema), shown(value))));
        }
        Ok(())
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

/// The JSON types a schema allows (`"type": "x"` or `"type": ["x", "null"]`).
fn types_of(schema: &Value) -> impl Iterator<Item = &str> {
    let list: Vec<&str> = match schema.get("type") {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    list.into_iter()
}

/// The range of a whole-number schema, from its `format` (schemars writes `uint32`,
/// `int64`, ...) and its `minimum` / `maximum`.
fn integer_range(schema: &Value) -> (i128, i128) {
    let (mut lo, mut hi) = match schema.get("format").and_then(Value::as_str) {
        Some("uint8") => (0, i128::from(u8::MAX)),
        Some("uint16") => (0, i128::from(u16::MAX)),
        Some("uint32") => (0, i128::from(u32::MAX)),
        Some("uint64") | Some("uint") => (0, i128::from(u64::MAX)),
        Some("int8") => (i128::from(i8::MIN), i128::from(i8::MAX)),
        Some("int16") => (i128::from(i16::MIN), i128::from(i16::MAX)),
        Some("int32") => (i128::from(i32::MIN), i128::from(i32::MAX)),
        _ => (i128::from(i64::MIN), i128::from(u64::MAX)),
    };
    if let Some(m) = schema.get("minimum").and_then(Value::as_f64) {
        lo = lo.max(m.ceil() as i128);
    }
    if let Some(m) = schema.get("maximum").and_then(Value::as_f64) {
        hi = hi.min(m.floor() as i128);
    }
    (lo, hi)
}

/// What a schema wants, in words.
fn describe(schema: &Value) -> String {
    if let Some(names) = schema.get("enum").and_then(Value::as_array) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        return format!("one of {}", names.join(", "));
    }
    let words: Vec<String> = types_of(schema)
        .filter(|t| *t != "null")
        .map(|t| match t {
            "integer" => {
                let (lo, hi) = integer_range(schema);
                format!("a whole number from {lo} to {hi}")
            }
            "number" => "a number".to_string(),
            "string" => "a string".to_string(),
            "boolean" => "true or false".to_string(),
            "array" => "a list".to_string(),
            "object" => "an object".to_string(),
            other => other.to_string(),
        })
        .collect();
    if words.is_empty() {
        "nothing (leave it unset)".to_string()
    } else {
        words.join(" or ")
    }
}

/// A value as an error message shows it.
fn shown(value: &Value) -> String {
    match value {
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(_) => "a list".to_string(),
        Value::Object(_) => "an object".to_string(),
        other => other.to_string(),
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
        assert!(e.to_string().contains("unknown option `on_duplicate` (did you mean `onDuplicate`?)"), "{e}");
        let e = options_from_json_spelled::<TrainSpec>(json!({"seqLen": 8}), Spelling::Snake).unwrap_err();
        assert!(e.to_string().contains("unknown option `seqLen` (did you mean `seq_len`?)"), "{e}");
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
    fn mistyped_values_are_described_in_words() {
        let e = options_from_json::<TrainSpec>(json!({"epochs": -1})).unwrap_err();
        assert_eq!(e.to_string(), "invalid config `epochs`: expected a whole number from 0 to 4294967295, got -1");
        let e = options_from_json::<TrainSpec>(json!({"epochs": "x"})).unwrap_err();
        assert!(e.to_string().contains("a whole number from 0 to 4294967295, got the string \"x\""), "{e}");
        let e = options_from_json::<TrainSpec>(json!({"epochs": 2.5})).unwrap_err();
        assert!(e.to_string().ends_with("got 2.5"), "{e}");
        let e = options_from_json::<TrainSpec>(json!({"epochs": 4294967296u64})).unwrap_err();
        assert!(e.to_string().contains("from 0 to 4294967295"), "{e}");
        let e = options_from_json_spelled::<TrainSpec>(json!({"maxSteps": -3}), Spelling::Camel).unwrap_err();
        assert!(
            e.to_string().contains("`maxSteps`") && e.to_string().contains("from 0 to 18446744073709551615"),
            "{e}"
        );
        let e = options_from_json::<TrainSpec>(json!({"learning_rate": "fast"})).unwrap_err();
        assert!(e.to_string().contains("expected a number, got the string \"fast\""), "{e}");
        let e = options_from_json::<TrainSpec>(json!({"method": {"lora": {"r": true}}})).unwrap_err();
        assert!(e.to_string().contains("`method.lora.r`") && e.to_string().contains("a whole number"), "{e}");
        let e = options_from_json::<TrainSpec>(json!({"schedule": 3})).unwrap_err();
        assert!(e.to_string().contains("one of \"constant\", \"linear\", \"cosine\", got 3"), "{e}");
        // Never a Rust type name.
        for bad in [json!({"epochs": -1}), json!({"seed": "s"}), json!({"batch_size": -1}), json!({"max_steps": 1.5})] {
            let e = options_from_json::<TrainSpec>(bad).unwrap_err().to_string();
            for rust in ["u32", "u64", "usize", "i64", "f64"] {
                assert!(!e.contains(rust), "{e}");
            }
        }
        // Whole numbers in range still pass, null leaves an option unset.
        let spec: TrainSpec = options_from_json(json!({"epochs": 4294967295u64, "max_steps": null})).unwrap();
        assert_eq!((spec.epochs, spec.max_steps), (u32::MAX, None));
    }

    #[test]
    fn a_method_name_alone_means_its_defaults() {
        use crate::types::{ClassifierConfig, LoraConfig, Method};
        for spelling in [Spelling::Snake, Spelling::Camel] {
            let spec: TrainSpec = options_from_json_spelled(json!({"method": "lora"}), spelling).unwrap();
            assert_eq!(spec.method, Method::Lora(LoraConfig::default()));
            let spec: TrainSpec = options_from_json_spelled(json!({"method": "full"}), spelling).unwrap();
            assert_eq!(spec.method, Method::Full);
            let spec: TrainSpec = options_from_json_spelled(json!({"method": "classifier"}), spelling).unwrap();
            assert_eq!(spec.method, Method::Classifier(ClassifierConfig::default()));
        }
        let spec: TrainSpec = options_from_json(json!({"method": {"lora": {"r": 4}}})).unwrap();
        assert_eq!(spec.method, Method::Lora(LoraConfig { r: 4, ..Default::default() }));
        let e = options_from_json::<TrainSpec>(json!({"method": "qlora"})).unwrap_err();
        assert!(e.to_string().contains("`method`") && e.to_string().contains("`lora`"), "{e}");
        let e = options_from_json::<TrainSpec>(json!({"method": {"lora": {}, "classifier": {}}})).unwrap_err();
        assert!(e.to_string().contains("`method."), "{e}");
        let e = options_from_json::<TrainSpec>(json!({"method": 3})).unwrap_err();
        assert!(e.to_string().contains("`method`") && !e.to_string().contains("variant"), "{e}");
        // What is stored reads back: the name-only form is written out in full.
        let v = serde_json::to_value(TrainSpec { method: Method::Lora(LoraConfig::default()), ..Default::default() })
            .unwrap();
        assert_eq!(v["method"]["lora"]["r"], 8);
        let back: TrainSpec = serde_json::from_value(v).unwrap();
        assert_eq!(back.method, Method::Lora(LoraConfig::default()));
        let back: Method = serde_json::from_value(serde_json::to_value(Method::Full).unwrap()).unwrap();
        assert_eq!(back, Method::Full);
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
